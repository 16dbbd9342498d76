//! `lb::http1::parse_request`: never panics; a prefix of the input (at a
//! point the input's first bytes choose, and at the head's end) is
//! incomplete, refused as the whole is, or the same head; an accepted head
//! is forwarded unambiguously (see `tests/framing_props/invariants.rs`).
//!
//! Input: `[flags, split_lo, split_hi, head and body...]`; flags bit 0:
//! `--allow-underscore-headers`, bits 1-2: the client address (none, IPv4,
//! IPv6, IPv4-mapped IPv6), bit 3: no connected-to address for HTTP/1.0,
//! bit 4: the peer is trusted (if one of `invariants::proxies`).

#![no_main]

#[path = "../../tests/framing_props/invariants.rs"]
mod invariants;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use rip_server::lb::http1;

fuzz_target!(|data: &[u8]| {
    let [flags, lo, hi, buf @ ..] = data else {
        return;
    };
    let client = match (flags >> 1) & 3 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        2 => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => Some(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped())),
    };
    let context = invariants::context(
        client,
        (flags & 8 == 0).then_some("127.0.0.1:3000"),
        flags & 1 == 1,
        flags & 16 == 16,
    );
    let split = usize::from(u16::from_le_bytes([*lo, *hi])) % (buf.len() + 1);
    let mut prefixes = vec![split, buf.len().saturating_sub(1)];
    let mut out = Vec::new();
    if let Ok(Some(head)) = http1::parse_request(buf, &context, &mut out) {
        prefixes.extend([head.len.saturating_sub(1), head.len]);
    }
    if let Err(why) = invariants::check_request(buf, &context, &prefixes) {
        panic!(
            "{why}\ncontext {context:?}\ninput {}",
            invariants::lit(data)
        );
    }
});
