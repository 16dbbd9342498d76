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

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, DATE, TE, TRANSFER_ENCODING, UPGRADE,
};

/// `Rip-Worker-Busy: 1`: the app is serving someone else and did not take
/// this request.
pub const WORKER_BUSY: &str = "rip-worker-busy";
/// `Rip-Worker-Recycle: 1`: the app wants to be replaced (module reloads
/// used up).
pub const WORKER_RECYCLE: &str = "rip-worker-recycle";
const INTERNAL_PREFIX: &str = "rip-worker-";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Hop-by-hop headers that are not named by `Connection` but still never
/// travel past one connection.
const HOP_BY_HOP: [&str; 3] = ["keep-alive", "proxy-connection", "trailer"];

/// Prepares a client's request headers for the worker.
pub fn request(headers: &mut HeaderMap, client: Option<IpAddr>) {
    strip_hop_by_hop(headers);
    strip_internal(headers);
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
    strip_hop_by_hop(headers);
    headers.remove(DATE);
    let signals = Signals {
        busy: is_one(headers.get(WORKER_BUSY)),
        recycle: is_one(headers.get(WORKER_RECYCLE)),
    };
    strip_internal(headers);
    signals
}

fn is_one(value: Option<&HeaderValue>) -> bool {
    value.is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(TE);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn strip_internal(headers: &mut HeaderMap) {
    // Header names are stored lowercase, so this catches any spelling.
    if headers
        .keys()
        .any(|name| name.as_str().starts_with(INTERNAL_PREFIX))
    {
        let internal: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(INTERNAL_PREFIX))
            .cloned()
            .collect();
        for name in internal {
            headers.remove(name);
        }
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
