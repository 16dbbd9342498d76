//! Header normalization on the way through the LB (DESIGN §5).
//!
//! Both ways: hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, the headers
//! it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
//! `Upgrade`) belong to one connection and are not forwarded; hyper frames
//! each side's body itself. `Rip-Worker-*` headers are internal signals
//! between the LB and a worker: they are removed from requests (so no client
//! can have an app reflect one back as a signal) and from responses (so none
//! reaches a client). The worker's `Date` goes too; the LB writes exactly one.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

/// `Rip-Worker-Busy: 1`: the app is serving someone else and did not take
/// this request.
pub const WORKER_BUSY: &str = "rip-worker-busy";
/// `Rip-Worker-Recycle: 1`: the app wants to be replaced (module reloads
/// used up).
pub const WORKER_RECYCLE: &str = "rip-worker-recycle";
const INTERNAL_PREFIX: &str = "rip-worker-";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Prepares a client's request headers for the worker.
pub fn request(headers: &mut HeaderMap, client: Option<IpAddr>) {
    strip(headers, false);
    if let Some(ip) = client {
        append_forwarded_for(headers, ip);
    }
}

/// What a worker's response said to the LB, read before the headers are
/// cleaned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    pub busy: bool,
    pub recycle: bool,
}

/// Cleans a worker's response headers for the client; returns the internal
/// signals they carried.
pub fn response(headers: &mut HeaderMap) -> Signals {
    let signals = Signals {
        busy: is_one(headers.get(WORKER_BUSY)),
        recycle: is_one(headers.get(WORKER_RECYCLE)),
    };
    strip(headers, true);
    signals
}

fn is_one(value: Option<&HeaderValue>) -> bool {
    value.is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

/// What one header name means to the LB.
enum Kind {
    Kept,
    /// Hop-by-hop, internal, or (in responses) the worker's `Date`.
    Dropped,
    /// `Connection`: dropped, and so are the headers it names.
    Connection,
}

fn kind(name: &HeaderName, response: bool) -> Kind {
    match name.as_str() {
        "connection" => Kind::Connection,
        "keep-alive" | "proxy-connection" | "te" | "transfer-encoding" | "upgrade" | "trailer" => {
            Kind::Dropped
        }
        "date" if response => Kind::Dropped,
        // Header names are stored lowercase, so this catches any spelling.
        n if n.starts_with(INTERNAL_PREFIX) => Kind::Dropped,
        _ => Kind::Kept,
    }
}

/// Removes hop-by-hop and internal headers (and, from responses, `Date`).
/// One pass over the names finds them; a typical request has only
/// `Connection: keep-alive` to drop.
fn strip(headers: &mut HeaderMap, response: bool) {
    let mut dropped: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        match kind(name, response) {
            Kind::Kept => {}
            Kind::Dropped => dropped.push(name.clone()),
            Kind::Connection => connection = true,
        }
    }
    if connection {
        for value in headers.get_all(CONNECTION) {
            let Ok(value) = value.to_str() else {
                continue;
            };
            for token in value.split(',') {
                let token = token.trim();
                // `close` and `keep-alive` are options, not header names.
                if !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive")
                {
                    if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                        dropped.push(name);
                    }
                }
            }
        }
        headers.remove(CONNECTION);
    }
    for name in dropped {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let mut h = map(&[
            ("Connection", "close, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Connection", "keep-alive"),
            ("Content-Type", "text/plain"),
        ]);
        request(&mut h, None);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type"]);
    }

    #[test]
    fn internal_headers_never_cross_in_any_case() {
        let mut h = map(&[
            ("RIP-WORKER-BUSY", "1"),
            ("Rip-Worker-Id", "3"),
            ("rip-worker-recycle", "1"),
            ("Rip-Worker-Anything", "x"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("X-App", "kept"),
        ]);
        let signals = response(&mut h);
        assert_eq!(
            signals,
            Signals {
                busy: true,
                recycle: true
            }
        );
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-app"]);

        let mut forged = map(&[("Rip-Worker-Busy", "1"), ("Host", "x")]);
        request(&mut forged, None);
        assert!(forged.get(WORKER_BUSY).is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("X-Forwarded-For", "10.0.0.1")]);
        request(&mut h, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(h.get(X_FORWARDED_FOR).expect("xff"), "10.0.0.1, 127.0.0.1");
        let mut h = HeaderMap::new();
        request(&mut h, Some("::ffff:192.168.1.2".parse().expect("ip")));
        assert_eq!(h.get(X_FORWARDED_FOR).expect("xff"), "192.168.1.2");
    }
}
