//! `lb::body::Relayer` in every `Relay` mode (and a `RequestBody` with a
//! length): never panic; split at two points the input's first bytes
//! choose, the bytes sent on are the same as whole (for the chunked modes,
//! the same data and trailers, canonically encoded), the same count is
//! taken, the same refusal; each mode sends what it must (see
//! `tests/framing_props/invariants.rs`).
//!
//! Input: `[mode, length, a_lo, a_hi, b_lo, b_hi, body...]`; `mode % 6`:
//! none, pass with a length (`length`, at least 1), pass chunked, dechunk,
//! chunk, until close.

#![no_main]

#[path = "../../tests/framing_props/invariants.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;
use rip_server::lb::http1::Framing;

fuzz_target!(|data: &[u8]| {
    let [mode, length, a_lo, a_hi, b_lo, b_hi, body @ ..] = data else {
        return;
    };
    let at = |lo: u8, hi: u8| usize::from(u16::from_le_bytes([lo, hi])) % (body.len() + 1);
    let points = [at(*a_lo, *a_hi), at(*b_lo, *b_hi)];
    let (relay, framing) = invariants::relay_mode(*mode, u64::from(*length));
    let fail = |why: String| -> ! { panic!("{why}\ninput {}", invariants::lit(data)) };
    if let Err(why) = invariants::check_relayer(body, relay, framing, &points) {
        fail(why);
    }
    let framing = match framing {
        Framing::Length(n) => Framing::Length(n),
        _ => Framing::None,
    };
    if let Err(why) = invariants::check_request_body(body, framing, 1 << 20, &points) {
        fail(why);
    }
});
