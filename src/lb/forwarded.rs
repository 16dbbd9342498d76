//! What the app is told about the client and how it came: the forwarding
//! fields, a request id and the moment the LB read the head (docs/DESIGN.md
//! §5.7). Plain data, no I/O; [`super::http1`] calls it while it rebuilds a
//! request head.
//!
//! Every field by which a client says who it is or how it came (a
//! [`Claim`]) is the LB's to write. From any client the LB drops them all
//! and writes its own: `X-Forwarded-For` and `X-Real-IP` (the peer's
//! address), `X-Forwarded-Proto`, `X-Forwarded-Host` (the `Host` the app
//! gets), `X-Forwarded-Port` (the port the client connected to),
//! `X-Request-Id` (generated) and `X-Request-Start: t=<µs since the
//! epoch>`. From a peer in `--trusted-proxies` — a proxy in front of the
//! LB that already wrote them — they are kept: `X-Forwarded-For` gets the
//! peer appended, `X-Real-IP` is the nearest address of the chain that is
//! not a trusted proxy, and what the proxy wrote of the other fields
//! (including `Forwarded` and the other claims) goes on as it came.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::flags::{plain_ip, TrustedProxies};

/// A field a client could use to say who it is or how it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    For,
    Proto,
    Host,
    Port,
    RealIp,
    RequestId,
    RequestStart,
    /// `Forwarded`, the other `X-Forwarded-*`, `X-Client-IP` and the
    /// like (frameworks and libraries read them): passed on from a trusted
    /// proxy as they came, else dropped.
    Passed,
}

/// The claim `name` makes, if any (any case).
pub fn claim(name: &str) -> Option<Claim> {
    // Called for every field the LB does not otherwise know (twice per
    // request field, once per response field): by length first, as
    // `http1::field` does, so that `accept` or `cookie` cost a compare.
    let eq = |s: &str| name.eq_ignore_ascii_case(s);
    let bytes = name.as_bytes();
    if bytes.len() > 12 && bytes[..12].eq_ignore_ascii_case(b"x-forwarded-") {
        let rest = &bytes[12..];
        return Some(match rest.len() {
            3 if rest.eq_ignore_ascii_case(b"for") => Claim::For,
            5 if rest.eq_ignore_ascii_case(b"proto") => Claim::Proto,
            4 if rest.eq_ignore_ascii_case(b"host") => Claim::Host,
            4 if rest.eq_ignore_ascii_case(b"port") => Claim::Port,
            _ => Claim::Passed,
        });
    }
    match bytes.len() {
        9 if eq("x-real-ip") => Some(Claim::RealIp),
        12 if eq("x-request-id") => Some(Claim::RequestId),
        15 if eq("x-request-start") => Some(Claim::RequestStart),
        9 | 11 | 13 | 14 | 16 | 19 if PASSED.iter().any(|p| eq(p)) => Some(Claim::Passed),
        _ => None,
    }
}

/// The [`Claim::Passed`] names besides `x-forwarded-*`: RFC 7239's field,
/// and the client-address fields of CDNs and load balancers that
/// libraries read (`request-ip`, Rack, Django middleware), and New Relic's
/// `X-Queue-Start`.
pub const PASSED: [&str; 9] = [
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-queue-start",
];

/// How one request reached the LB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hop<'a> {
    /// The peer's address (none: the fields that carry it are not written).
    pub client: Option<IpAddr>,
    /// Set when the peer is one of these trusted proxies.
    pub trusted: Option<&'a TrustedProxies>,
    /// The client connection is TLS.
    pub https: bool,
    /// The port the client connected to.
    pub port: Option<u16>,
    /// The id the request gets unless a trusted proxy gave one (empty:
    /// none is written).
    pub request_id: &'a [u8],
    /// When the LB read the head, in microseconds since the epoch (0:
    /// `X-Request-Start` is not written).
    pub received_us: u64,
}

/// Writes the forwarding fields for a request whose fields are `headers`
/// and whose `Host` (as the app gets it) is `host`. Returns the value of
/// the trusted proxy's `X-Request-Id` if it was kept.
pub fn put_fields<'h>(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'h>],
    host: &[u8],
    hop: &Hop<'_>,
) -> Option<&'h [u8]> {
    let trusted = hop.trusted;
    let given = |wanted: Claim| {
        headers
            .iter()
            .filter(move |f| trusted.is_some() && claim(f.name) == Some(wanted))
            .map(|f| f.value)
    };
    let client = hop.client.map(plain_ip);
    // Formatted once: it goes into X-Forwarded-For and (mostly) X-Real-IP.
    let mut client_buf = [0; TEXT];
    let client_text = client.map(|ip| text(&mut client_buf, ip));

    // X-Forwarded-For: the trusted chain, then the peer.
    let mut chain = given(Claim::For).peekable();
    if chain.peek().is_some() || client.is_some() {
        out.extend_from_slice(b"x-forwarded-for: ");
        let mut first = true;
        for value in chain {
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(value);
            first = false;
        }
        if let Some(ip) = client_text {
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(ip);
        }
        out.extend_from_slice(b"\r\n");
    }
    let proto: &[u8] = if hop.https { b"https" } else { b"http" };
    put_joined(out, b"x-forwarded-proto", given(Claim::Proto), Some(proto));
    put_joined(out, b"x-forwarded-host", given(Claim::Host), Some(host));
    let mut port_buf = [0; TEXT];
    let port = hop.port.map(|p| text(&mut port_buf, p));
    put_joined(out, b"x-forwarded-port", given(Claim::Port), port);
    match trusted {
        None => {
            if let Some(ip) = client_text {
                put_line(out, b"x-real-ip", ip);
            }
        }
        Some(proxies) => {
            let real = real_ip(given(Claim::For), given(Claim::RealIp), client, proxies);
            if let Some(ip) = real {
                let _ = write!(out, "x-real-ip: {ip}\r\n");
            }
        }
    }
    let mut ids = given(Claim::RequestId);
    let kept = match (ids.next(), ids.next()) {
        (Some(id), None) if valid_id(id) => Some(id),
        _ => None,
    };
    match kept {
        Some(id) => put_line(out, b"x-request-id", id),
        None if !hop.request_id.is_empty() => put_line(out, b"x-request-id", hop.request_id),
        None => {}
    }
    match given(Claim::RequestStart).next() {
        Some(start) => put_line(out, b"x-request-start", start),
        None if hop.received_us > 0 => {
            let _ = write!(out, "x-request-start: t={}\r\n", hop.received_us);
        }
        None => {}
    }
    kept
}

/// Room for an address (IPv6: 45 characters at most) or a number as text.
const TEXT: usize = 48;

/// `value` as text in `buf`.
fn text(buf: &mut [u8; TEXT], value: impl std::fmt::Display) -> &[u8] {
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{value}");
    let n = TEXT - rest.len();
    &buf[..n]
}

fn put_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One line: the given values joined with `, `, else `own` (else none).
fn put_joined<'v>(
    out: &mut Vec<u8>,
    name: &[u8],
    given: impl Iterator<Item = &'v [u8]>,
    own: Option<&[u8]>,
) {
    let mut given = given.peekable();
    if given.peek().is_none() {
        if let Some(own) = own {
            put_line(out, name, own);
        }
        return;
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for (i, value) in given.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The client's address behind trusted proxies: walking the chain
/// `X-Forwarded-For` then the peer from the right, the first address that
/// is not a trusted proxy (as nginx's `real_ip_recursive` does). An entry
/// that is not an address ends the walk at the trusted hop after it; a
/// chain of trusted proxies only gives its first. Without a chain, the
/// proxy's `X-Real-IP` if it is an address.
fn real_ip<'v>(
    chain: impl Iterator<Item = &'v [u8]>,
    real: impl Iterator<Item = &'v [u8]>,
    peer: Option<IpAddr>,
    proxies: &TrustedProxies,
) -> Option<IpAddr> {
    let entries: Vec<&[u8]> = chain
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    if entries.is_empty() {
        let given = real.last().and_then(parse_ip);
        return given.or(peer);
    }
    let mut nearest = peer;
    if let Some(ip) = peer {
        if !proxies.contains(ip) {
            return Some(ip);
        }
    }
    for entry in entries.iter().rev() {
        let Some(ip) = parse_ip(entry) else {
            return nearest;
        };
        nearest = Some(ip);
        if !proxies.contains(ip) {
            return Some(ip);
        }
    }
    nearest
}

/// An address as `X-Forwarded-For` lists it: `1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(plain_ip(ip));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok().map(plain_ip);
    }
    let (ip, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The longest request id taken from a trusted proxy.
pub const MAX_ID: usize = 128;

/// Whether a trusted proxy's `X-Request-Id` is kept: 1 to [`MAX_ID`]
/// characters of `A-Z a-z 0-9 - _ . : + / = @` (what Heroku, AWS and W3C
/// trace ids use; nothing a log line or a shell would read otherwise).
pub fn valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A request id: generated, or kept from a trusted proxy (empty: none
/// yet).
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_ID],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            len: 0,
            bytes: [0; MAX_ID],
        }
    }
}

impl RequestId {
    /// A new id, as a UUID (version 4 layout): 122 bits from a process-wide
    /// counter through a bijective mixer (SplitMix64's finalizer), keyed at
    /// random per process — distinct within a process by construction,
    /// across processes by the keys, and without a system call per request.
    /// (Not a secret: nothing should rely on an id being unguessable.)
    pub fn generate() -> RequestId {
        static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let &(k0, k1) = KEYS.get_or_init(|| {
            let random = RandomState::new();
            (random.hash_one(0u8), random.hash_one(1u8))
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let high = mix(n ^ k0);
        let low = mix(n.rotate_left(32) ^ k1);
        let high = (high & !0xf000) | 0x4000; // version 4
        let low = (low & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
        let mut id = RequestId {
            len: 36,
            bytes: [0; MAX_ID],
        };
        // 8-4-4-4-12 hex digits, by hand: `write!` costs more than the mixing.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let out = &mut id.bytes[..36];
        out.fill(b'-');
        let (mut at, mut word) = (0, high);
        for i in 0..32 {
            if i == 16 {
                word = low;
            }
            if matches!(at, 8 | 13 | 18 | 23) {
                at += 1;
            }
            out[at] = HEX[(word >> 60) as usize];
            word <<= 4;
            at += 1;
        }
        id
    }

    /// `value` as an id, if it is a [`valid_id`].
    pub fn from_bytes(value: &[u8]) -> Option<RequestId> {
        if !valid_id(value) {
            return None;
        }
        let mut id = RequestId {
            len: value.len() as u8,
            bytes: [0; MAX_ID],
        };
        id.bytes[..value.len()].copy_from_slice(value);
        Some(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn claims_are_recognized_in_any_case() {
        assert_eq!(claim("X-Forwarded-For"), Some(Claim::For));
        assert_eq!(claim("x-forwarded-PROTO"), Some(Claim::Proto));
        assert_eq!(claim("X-Forwarded-Host"), Some(Claim::Host));
        assert_eq!(claim("X-Forwarded-Port"), Some(Claim::Port));
        assert_eq!(claim("X-Forwarded-Ssl"), Some(Claim::Passed));
        assert_eq!(claim("X-Forwarded-Prefix"), Some(Claim::Passed));
        assert_eq!(claim("X-Real-IP"), Some(Claim::RealIp));
        assert_eq!(claim("x-request-id"), Some(Claim::RequestId));
        assert_eq!(claim("X-Request-Start"), Some(Claim::RequestStart));
        // (Every name of PASSED has a length `claim` looks at.)
        for name in PASSED {
            assert_eq!(
                claim(&name.to_ascii_uppercase()),
                Some(Claim::Passed),
                "{name}"
            );
        }
        for name in [
            "accept",
            "x-forwarded-",
            "x-custom",
            "forwarded2",
            "cookie",
            "",
        ] {
            assert_eq!(claim(name), None, "{name}");
        }
    }

    #[test]
    fn the_real_ip_is_the_nearest_untrusted_address() {
        let p = proxies("10.0.0.0/8,192.168.1.1");
        let real = |chain: &[&str], peer: &str| {
            real_ip(
                chain.iter().map(|s| s.as_bytes()),
                std::iter::empty(),
                Some(ip(peer)),
                &p,
            )
        };
        assert_eq!(real(&["1.2.3.4"], "10.0.0.1"), Some(ip("1.2.3.4")));
        // The client lies at the left; the proxies add the truth at the right.
        assert_eq!(
            real(&["6.6.6.6, 1.2.3.4, 10.9.9.9"], "10.0.0.1"),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            real(&["6.6.6.6", "1.2.3.4"], "192.168.1.1"),
            Some(ip("1.2.3.4"))
        );
        // Only proxies: the first of them.
        assert_eq!(
            real(&["10.1.1.1, 10.2.2.2"], "10.0.0.1"),
            Some(ip("10.1.1.1"))
        );
        // Not an address: the walk stops at the trusted hop after it.
        assert_eq!(
            real(&["unknown, 10.2.2.2"], "10.0.0.1"),
            Some(ip("10.2.2.2"))
        );
        assert_eq!(real(&["1.2.3.4:5678"], "10.0.0.1"), Some(ip("1.2.3.4")));
        assert_eq!(
            real(&["[2001:db8::1]:80"], "10.0.0.1"),
            Some(ip("2001:db8::1"))
        );
        // Without a chain, the proxy's X-Real-IP (if it is an address).
        let given = |real: &str| {
            real_ip(
                std::iter::empty(),
                [real.as_bytes()].into_iter(),
                Some(ip("10.0.0.1")),
                &p,
            )
        };
        assert_eq!(given("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(given("junk"), Some(ip("10.0.0.1")));
    }

    #[test]
    fn generated_ids_are_distinct_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = RequestId::generate();
            let s = id.as_str();
            assert_eq!(s.len(), 36, "{s}");
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(groups[2].starts_with('4'), "{s}");
            assert!("89ab".contains(&groups[3][..1]), "{s}");
            assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
            assert!(seen.insert(s.to_string()), "{s} twice");
        }
    }

    #[test]
    fn only_plain_ids_are_kept() {
        assert!(valid_id(b"Root=1-67891233-abcdef012345678912345678"));
        assert!(valid_id(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_id(b""));
        assert!(!valid_id(b"a b"));
        assert!(!valid_id(b"a\"b"));
        assert!(!valid_id(&[b'a'; MAX_ID + 1]));
        assert!(valid_id(&[b'a'; MAX_ID]));
        assert_eq!(
            RequestId::from_bytes(b"abc-1").map(|i| i.as_str().to_string()),
            Some("abc-1".to_string())
        );
    }
}
