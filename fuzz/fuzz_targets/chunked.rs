//! `lb::chunked::Chunked` and a chunked `lb::body::RequestBody`: never
//! panic; split at two points the input's first bytes choose (and, for a
//! short input, byte by byte) the decoding is the same as whole — data,
//! kept trailers, bytes consumed, error; the body the LB sends on is
//! canonical chunked and decodes to the same data and trailers (see
//! `tests/framing_props/invariants.rs`).
//!
//! Input: `[a_lo, a_hi, b_lo, b_hi, max, body...]`; `max` below 200 is the
//! `--max-body` limit, else 1 MiB.

#![no_main]

#[path = "../../tests/framing_props/invariants.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;
use rip_server::lb::http1::Framing;

fuzz_target!(|data: &[u8]| {
    let [a_lo, a_hi, b_lo, b_hi, max, body @ ..] = data else {
        return;
    };
    let at = |lo: u8, hi: u8| usize::from(u16::from_le_bytes([lo, hi])) % (body.len() + 1);
    let points = [at(*a_lo, *a_hi), at(*b_lo, *b_hi)];
    let max = if *max < 200 { u64::from(*max) } else { 1 << 20 };
    let fail = |why: String| -> ! { panic!("{why}\ninput {}", invariants::lit(data)) };
    if let Err(why) = invariants::check_chunked(body, &points) {
        fail(why);
    }
    if body.len() <= 256 {
        let every: Vec<usize> = (0..=body.len()).collect();
        if let Err(why) = invariants::check_chunked(body, &every) {
            fail(why);
        }
    }
    if let Err(why) = invariants::check_request_body(body, Framing::Chunked, max, &points) {
        fail(why);
    }
});
