//! `lb::http1::parse_response`: never panics; a prefix of the input (at a
//! point the input's first bytes choose, and at the head's end) is
//! incomplete, refused as the whole is, or the same result; a final head is
//! sent to the client unambiguously, framed as its relay mode says (see
//! `tests/framing_props/invariants.rs`).
//!
//! `lb::http1::parse_switch` (the answer to a WebSocket handshake) is held
//! to the same, with a `101` head of the LB's own.
//!
//! Input: `[flags, split_lo, split_hi, head and body...]`; flags bit 0: the
//! request was HEAD, bit 1: the client speaks HTTP/1.0, bit 2: the client
//! connection closes after this response, bit 3: the request has an id to
//! echo.

#![no_main]

#[path = "../../tests/framing_props/invariants.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;
use rip_server::lb::http1::{self, Parsed};

fuzz_target!(|data: &[u8]| {
    let [flags, lo, hi, buf @ ..] = data else {
        return;
    };
    let cx = invariants::ResponseContext {
        head_request: flags & 1 == 1,
        client_http10: flags & 2 == 2,
        close: flags & 4 == 4,
        request_id: flags & 8 == 8,
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])) % (buf.len() + 1);
    let mut prefixes = vec![split, buf.len().saturating_sub(1)];
    let mut out = Vec::new();
    let asked = http1::Asked {
        head_request: cx.head_request,
        client_http10: cx.client_http10,
        close: cx.close,
        request_id: if cx.request_id { invariants::REQUEST_ID } else { b"" },
        hsts: b"",
    };
    let parsed = http1::parse_response(buf, &asked, invariants::DATE, &mut out);
    match parsed {
        Ok((Parsed::Final(head), ..)) => prefixes.extend([head.len.saturating_sub(1), head.len]),
        Ok((Parsed::Interim(len), ..)) => prefixes.extend([len.saturating_sub(1), len]),
        _ => {}
    }
    if let Err(why) = invariants::check_response(buf, cx, &prefixes) {
        panic!("{why}\n{cx:?}\ninput {}", invariants::lit(data));
    }
    let mut prefixes = vec![split, buf.len().saturating_sub(1)];
    if let Ok(Some(len)) = http1::parse_switch(buf, invariants::DATE, invariants::REQUEST_ID, &mut out) {
        prefixes.extend([len.saturating_sub(1), len]);
    }
    if let Err(why) = invariants::check_switch(buf, &prefixes) {
        panic!("{why}\ninput {}", invariants::lit(data));
    }
});
