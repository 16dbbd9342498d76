//! The invariants of the LB's HTTP/1.1 framing code (`lb::http1`,
//! `lb::chunked`, `lb::body`), checked on one input: shared by the property
//! tests (`tests/framing_props.rs`) and the cargo-fuzz targets (`fuzz/`).
//!
//! Every `check_*` returns how the input was classified (so a caller can
//! tell that both the accepted and the refused paths were exercised), or a
//! description of the broken invariant.
//!
//! - Split invariance: feeding an input in pieces gives what feeding it
//!   whole gives (for a head parser: a prefix is incomplete, or the same
//!   error class, or — when it holds the whole head — the same head).
//! - Re-encoding: a chunked body the LB sends on is canonical
//!   (`<lowercase hex>\r\n<data>\r\n`…, `0\r\n<name: value\r\n>…\r\n`, no
//!   extensions) and decodes to the data and trailers that came in.
//! - Forwarded heads are unambiguous: one complete message, CR LF only, one
//!   `Host`, one framing header that says what the LB will send, no
//!   hop-by-hop, internal or underscore field — and the LB reads its own
//!   output the same way.

#![allow(dead_code)] // each user (test file, fuzz target) takes a part

use rip_server::lb::body::{BodyError, Output, Relayer, RequestBody};
use rip_server::lb::chunked::{is_tchar, Chunked, Piece};
use std::net::IpAddr;

use rip_server::lb::forwarded::Hop;
use rip_server::lb::http1::{
    self, Context, Framing, HeadError, Parsed, Relay, RequestHead, ResponseHead, MAX_FIELDS_IN,
    MAX_HEAD, MAX_HEADERS, MAX_HEAD_IN,
};

/// Bugs found in `src/lb` and not fixed yet: each is tolerated by the
/// checks (so that a property run or a fuzz campaign goes on past it)
/// unless `FRAMING_STRICT` says otherwise ([`tolerated`]). The exact inputs are the `#[ignore]`d
/// `known_bug_*` tests in `tests/framing_props.rs`: when a bug is fixed, un-ignore
/// its test and remove it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// None is open: the four the fuzz targets found (an internal prefix
    /// with nothing after it, a response head limit that depended on reads,
    /// forwarded heads over the limits, re-written trailers over theirs) are
    /// fixed. A new one goes here, with `tolerated(Known::…)` at its check.
    #[allow(dead_code)]
    None,
}

/// Whether a broken invariant is a [`Known`] bug to let pass: yes, unless
/// `FRAMING_STRICT` is `1` (no bug passes) or names it (`FRAMING_STRICT=
/// ForwardedHeadOverLimits,TrailersOutgrowLimit`).
pub fn tolerated(bug: Known) -> bool {
    static STRICT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let strict = STRICT.get_or_init(|| std::env::var("FRAMING_STRICT").unwrap_or_default());
    !(strict == "1" || strict.split(',').any(|name| name == format!("{bug:?}")))
}

/// A field name the LB must never forward: the worker protocol's
/// `rip-worker-*` (the known bug aside).
fn internal(name: &[u8], prefix: &str) -> bool {
    starts_with_ci(name, prefix)
}

/// How an input ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Accepted,
    Refused,
    Incomplete,
}

/// The result of a check: the input's class, or the invariant it broke.
pub type Check = Result<Class, String>;

/// `bytes` as a Rust byte-string literal.
pub fn lit(bytes: &[u8]) -> String {
    format!("b\"{}\"", bytes.escape_ascii())
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// `input` cut at `points` (clamped, in order; a repeated point gives an
/// empty piece).
pub fn pieces<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = points.iter().map(|&p| p.min(input.len())).collect();
    points.sort_unstable();
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        out.push(&input[start..p]);
        start = p;
    }
    out.push(&input[start..]);
    out
}

// ---------------------------------------------------------------------------
// Chunked decoding.

/// What [`Chunked`] made of some pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    pub data: Vec<u8>,
    /// The kept trailers, once the body ended.
    pub trailers: Option<Vec<u8>>,
    /// Bytes consumed (0 after an error).
    pub used: usize,
    pub error: Option<&'static str>,
}

impl Decoded {
    pub fn class(&self) -> Class {
        match (&self.error, &self.trailers) {
            (Some(_), _) => Class::Refused,
            (None, Some(_)) => Class::Accepted,
            (None, None) => Class::Incomplete,
        }
    }
}

/// Decodes `pieces` in order with one [`Chunked`], checking what `feed`
/// promises on the way: data ranges in bounds and in order, one `End`,
/// last, exactly when `is_done`; every byte taken unless the body ended.
pub fn decode(pieces: &[&[u8]]) -> Result<Decoded, String> {
    let mut chunked = Chunked::default();
    let mut d = Decoded::default();
    for (k, piece) in pieces.iter().enumerate() {
        if chunked.is_done() {
            break;
        }
        let mut at = 0;
        let mut bad = None;
        let data = &mut d.data;
        let trailers = &mut d.trailers;
        let fed = chunked.feed(piece, |p| match p {
            Piece::Data(r) => {
                if r.start < at || r.end > piece.len() || r.is_empty() || trailers.is_some() {
                    bad = Some(format!(
                        "piece {k}: data range {r:?} out of order or bounds"
                    ));
                } else {
                    at = r.end;
                    data.extend_from_slice(&piece[r]);
                }
            }
            Piece::End(t) => {
                if trailers.is_some() {
                    bad = Some(format!("piece {k}: a second End"));
                }
                *trailers = Some(t.to_vec());
            }
        });
        if let Some(bad) = bad {
            return Err(bad);
        }
        match fed {
            Ok(n) => {
                ensure!(
                    n <= piece.len(),
                    "piece {k}: consumed {n} of {}",
                    piece.len()
                );
                ensure!(
                    n >= at,
                    "piece {k}: consumed {n} but handed data up to {at}"
                );
                ensure!(
                    chunked.is_done() == d.trailers.is_some(),
                    "piece {k}: is_done {} but End seen {}",
                    chunked.is_done(),
                    d.trailers.is_some()
                );
                ensure!(
                    chunked.is_done() || n == piece.len(),
                    "piece {k}: consumed {n} of {} without ending the body",
                    piece.len()
                );
                d.used += n;
            }
            Err(e) => {
                // What was consumed before a refusal means nothing.
                d.error = Some(e);
                d.used = 0;
                break;
            }
        }
    }
    Ok(d)
}

/// Split invariance of [`Chunked`]: the same data, trailers, consumed
/// count and error, whole or in pieces. Accepted bodies also have kept
/// trailers that are canonical and carry no framing or routing field.
pub fn check_chunked(input: &[u8], points: &[usize]) -> Check {
    let whole = decode(&[input])?;
    let split = decode(&pieces(input, points))?;
    ensure!(
        whole == split,
        "split at {points:?} changed the decoding:\n whole {whole:?}\n split {split:?}"
    );
    if let Some(trailers) = &whole.trailers {
        check_kept_trailers(trailers)?;
        ensure!(
            whole.used <= input.len(),
            "used {} of {}",
            whole.used,
            input.len()
        );
    }
    Ok(whole.class())
}

/// Fields that must never be forwarded in trailers (framing, routing,
/// identity, the worker protocol).
const BARRED_IN_TRAILERS: [&str; 22] = [
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "max-forwards",
    "proxy-authorization",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-real-ip",
];

fn starts_with_ci(name: &[u8], prefix: &str) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Kept trailers: `name: value\r\n` lines, names tokens, values without
/// CR, LF, NUL or surrounding whitespace, no barred name.
pub fn check_kept_trailers(trailers: &[u8]) -> Result<(), String> {
    let mut rest = trailers;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("trailers {} not CR LF ended", lit(trailers)))?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("trailer line {} has no colon", lit(line)))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        ensure!(
            !name.is_empty() && name.iter().all(|&b| is_tchar(b)),
            "trailer name {} not a token",
            lit(name)
        );
        ensure!(
            value.first() == Some(&b' '),
            "trailer {} not `name: value`",
            lit(line)
        );
        let value = &value[1..];
        ensure!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80),
            "trailer value {} has a control byte",
            lit(value)
        );
        ensure!(
            value.trim_ascii() == value,
            "trailer value {} has surrounding whitespace",
            lit(value)
        );
        ensure!(
            !name.contains(&b'_')
                && !BARRED_IN_TRAILERS
                    .iter()
                    .any(|b| name.eq_ignore_ascii_case(b.as_bytes()))
                && !internal(name, "x-forwarded-")
                && !internal(name, "rip-worker-"),
            "trailer {} forwarded",
            lit(name)
        );
    }
    Ok(())
}

/// Parses what the LB sent as a canonical chunked body: size lines of
/// lowercase hex without leading zeros and without extensions, CR LF after
/// each line and each chunk's data, `0\r\n`, trailer lines, `\r\n`, and
/// nothing after. `complete`: the last chunk must be there (else it must
/// not). Returns the data and the trailers.
pub fn parse_canonical(out: &[u8], complete: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let mut data = Vec::new();
    let mut i = 0;
    loop {
        if i == out.len() && !complete {
            return Ok((data, None));
        }
        let digits = out[i..]
            .iter()
            .take_while(|&&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .count();
        let size_text = &out[i..i + digits];
        ensure!(
            digits > 0 && digits <= 16,
            "size line at {i} of {} is not lowercase hex",
            lit(out)
        );
        ensure!(
            size_text == b"0" || size_text[0] != b'0',
            "size {} at {i} has leading zeros in {}",
            lit(size_text),
            lit(out)
        );
        i += digits;
        ensure!(
            out[i..].starts_with(b"\r\n"),
            "size line at {i} not ended by CR LF (an extension?) in {}",
            lit(out)
        );
        i += 2;
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap_or("x"), 16)
            .map_err(|e| format!("size {}: {e}", lit(size_text)))?;
        if size == 0 {
            break;
        }
        ensure!(
            out.len() >= i + size + 2 && &out[i + size..i + size + 2] == b"\r\n",
            "chunk of {size} at {i} not followed by CR LF in {}",
            lit(out)
        );
        data.extend_from_slice(&out[i..i + size]);
        i += size + 2;
    }
    ensure!(
        complete,
        "a last chunk before the body ended in {}",
        lit(out)
    );
    let mut trailers = Vec::new();
    loop {
        let end = out[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("unterminated trailers in {}", lit(out)))?;
        let line = &out[i..i + end];
        i += end + 2;
        if line.is_empty() {
            break;
        }
        ensure!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "bare CR or LF in trailer {}",
            lit(line)
        );
        trailers.extend_from_slice(line);
        trailers.extend_from_slice(b"\r\n");
    }
    check_kept_trailers(&trailers)?;
    ensure!(
        i == out.len(),
        "{} bytes after the chunked body in {}",
        out.len() - i,
        lit(out)
    );
    Ok((data, Some(trailers)))
}

/// A chunked body the LB sends: canonical, and read back by [`Chunked`]
/// as the same data and trailers, to its last byte.
fn check_reencoded(out: &[u8], complete: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let (data, trailers) = parse_canonical(out, complete)?;
    let again = decode(&[out])?;
    ensure!(
        again.error.is_none(),
        "the LB's own chunked output is refused by Chunked ({:?}): {}",
        again.error,
        lit(out)
    );
    ensure!(
        again.data == data && again.trailers == trailers && again.used == out.len(),
        "Chunked reads the LB's output {} differently: {again:?}",
        lit(out)
    );
    Ok((data, trailers))
}

// ---------------------------------------------------------------------------
// Request bodies.

/// What a [`RequestBody`] made of some pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyRun {
    /// The bytes sent on, concatenated.
    pub out: Vec<u8>,
    pub used: usize,
    pub done: bool,
    pub error: Option<BodyError>,
    /// Sum of `Output::data_len`.
    pub data_len: u64,
}

pub fn run_request_body(pieces: &[&[u8]], framing: Framing, max: u64) -> Result<BodyRun, String> {
    let mut body = RequestBody::new(framing, max);
    let mut run = BodyRun {
        done: body.is_done(),
        ..BodyRun::default()
    };
    let mut out = Output::default();
    for (k, piece) in pieces.iter().enumerate() {
        if body.is_done() {
            break;
        }
        out.clear();
        match body.take(piece, &mut out) {
            Ok(n) => {
                ensure!(n <= piece.len(), "piece {k}: took {n} of {}", piece.len());
                ensure!(
                    body.is_done() || n == piece.len(),
                    "piece {k}: took {n} of {} before the body's end",
                    piece.len()
                );
                run.used += n;
                out.copy_into(piece, &mut run.out);
                run.data_len += out.data_len();
            }
            Err(e) => {
                run.error = Some(e);
                run.used = 0;
                break;
            }
        }
    }
    run.done = body.is_done();
    Ok(run)
}

/// Split invariance of [`RequestBody`] (the same bytes sent on — as data
/// and trailers for a chunked body, which is re-chunked per piece — the
/// same count taken, the same refusal), and a faithful, canonical output.
pub fn check_request_body(input: &[u8], framing: Framing, max: u64, points: &[usize]) -> Check {
    let whole = run_request_body(&[input], framing, max)?;
    let split = run_request_body(&pieces(input, points), framing, max)?;
    let why = || format!("split at {points:?}:\n whole {whole:?}\n split {split:?}");
    ensure!(
        whole.error.is_some() == split.error.is_some(),
        "refused one way only: {}",
        why()
    );
    if whole.error.is_some() {
        return Ok(Class::Refused);
    }
    ensure!(
        whole.used == split.used && whole.done == split.done,
        "{}",
        why()
    );
    match framing {
        Framing::None | Framing::UntilClose => {
            ensure!(
                whole.done && whole.used == 0 && whole.out.is_empty(),
                "a bodiless request took bytes: {}",
                why()
            );
        }
        Framing::Length(n) => {
            ensure!(whole.out == split.out, "{}", why());
            ensure!(
                whole.out == input[..whole.used] && whole.data_len == whole.used as u64,
                "a body with a length was not passed as it is: {}",
                why()
            );
            ensure!(
                whole.done == (whole.used as u64 == n) && whole.used as u64 <= n,
                "took {} of a {n}-byte body, done {}",
                whole.used,
                whole.done
            );
        }
        Framing::Chunked => {
            let decoded = decode(&[input])?;
            ensure!(
                decoded.error.is_none(),
                "a body Chunked refuses ({:?}) was accepted",
                decoded.error
            );
            let a = check_reencoded(&whole.out, whole.done)?;
            let b = check_reencoded(&split.out, split.done)?;
            ensure!(a == b, "re-encoded differently when split: {}", why());
            ensure!(
                a.0 == decoded.data && a.1 == decoded.trailers && whole.used == decoded.used,
                "re-encoding {} is not the decoded body {decoded:?}",
                lit(&whole.out)
            );
            ensure!(
                whole.data_len == a.0.len() as u64 && split.data_len == a.0.len() as u64,
                "data_len {} / {} for {} data bytes",
                whole.data_len,
                split.data_len,
                a.0.len()
            );
            ensure!(
                whole.used as u64 <= max,
                "took {} bytes past the limit {max}",
                whole.used
            );
        }
    }
    Ok(if whole.done {
        Class::Accepted
    } else {
        Class::Incomplete
    })
}

// ---------------------------------------------------------------------------
// Response bodies.

/// The relay modes and the framing each goes with (as `parse_response`
/// pairs them).
pub fn relay_mode(k: u8, length: u64) -> (Relay, Framing) {
    match k % 6 {
        0 => (Relay::None, Framing::None),
        1 => (
            Relay::Pass(Framing::Length(length.max(1))),
            Framing::Length(length.max(1)),
        ),
        2 => (Relay::Pass(Framing::Chunked), Framing::Chunked),
        3 => (Relay::Dechunk, Framing::Chunked),
        4 => (Relay::Chunk, Framing::UntilClose),
        _ => (Relay::UntilClose, Framing::UntilClose),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayRun {
    pub out: Vec<u8>,
    pub used: usize,
    pub done: bool,
    pub error: Option<&'static str>,
    /// What `end` said, when the worker's close was needed.
    pub end: Option<Result<(), &'static str>>,
    pub data_len: u64,
}

/// Relays `pieces` as the proxy does: `take` until done; then, if not done
/// and `close` (the worker closed the connection), `end`.
pub fn run_relayer(
    pieces: &[&[u8]],
    relay: Relay,
    framing: Framing,
    close: bool,
) -> Result<RelayRun, String> {
    let mut relayer = Relayer::new(relay, framing);
    let mut run = RelayRun::default();
    let mut out = Output::default();
    for (k, piece) in pieces.iter().enumerate() {
        if relayer.is_done() {
            break;
        }
        out.clear();
        match relayer.take(piece, &mut out) {
            Ok(n) => {
                ensure!(n <= piece.len(), "piece {k}: took {n} of {}", piece.len());
                ensure!(
                    relayer.is_done() || n == piece.len(),
                    "piece {k}: took {n} of {} before the body's end",
                    piece.len()
                );
                run.used += n;
                out.copy_into(piece, &mut run.out);
                run.data_len += out.data_len();
            }
            Err(e) => {
                run.error = Some(e);
                run.used = 0;
                break;
            }
        }
    }
    if run.error.is_none() && !relayer.is_done() && close {
        out.clear();
        let end = relayer.end(&mut out);
        out.copy_into(&[], &mut run.out);
        run.data_len += out.data_len();
        run.end = Some(end);
    }
    run.done = relayer.is_done();
    Ok(run)
}

/// Split invariance of [`Relayer`] in every mode, and what each mode must
/// send: the bytes as they are (length, until close), the decoded data
/// (dechunk), or a canonical chunked body carrying the same data and
/// trailers (chunked pass-through, chunking a close-delimited body).
pub fn check_relayer(input: &[u8], relay: Relay, framing: Framing, points: &[usize]) -> Check {
    let close = true;
    let whole = run_relayer(&[input], relay, framing, close)?;
    let split = run_relayer(&pieces(input, points), relay, framing, close)?;
    let why = || format!("{relay:?}, split at {points:?}:\n whole {whole:?}\n split {split:?}");
    let failed = |r: &RelayRun| r.error.is_some() || matches!(r.end, Some(Err(_)));
    ensure!(
        failed(&whole) == failed(&split),
        "failed one way only: {}",
        why()
    );
    ensure!(
        whole.used == split.used && whole.done == split.done && whole.end == split.end,
        "{}",
        why()
    );
    ensure!(
        Relayer::new(relay, framing).reusable()
            == !matches!(relay, Relay::Chunk | Relay::UntilClose),
        "{relay:?}: reusable"
    );
    match relay {
        Relay::None => ensure!(
            whole.done && whole.used == 0 && whole.out.is_empty() && whole.end.is_none(),
            "Relay::None sent or took bytes: {}",
            why()
        ),
        Relay::Pass(Framing::Length(n)) => {
            ensure!(whole.out == split.out, "{}", why());
            let expect = (n.min(input.len() as u64)) as usize;
            ensure!(
                whole.used == expect && whole.out == input[..expect],
                "a body with a length was not passed as it is: {}",
                why()
            );
            ensure!(
                whole.done == (expect as u64 == n),
                "done {} after {expect} of {n}",
                whole.done
            );
            ensure!(
                whole.done || whole.end == Some(Err("mid-body")),
                "a close mid-body was not an error: {}",
                why()
            );
        }
        Relay::UntilClose => {
            ensure!(
                whole.out == split.out && whole.out == input && whole.used == input.len(),
                "a close-delimited body was not passed as it is: {}",
                why()
            );
            ensure!(whole.end == Some(Ok(())) && whole.done, "{}", why());
        }
        Relay::Chunk => {
            let a = check_reencoded(&whole.out, true)?;
            let b = check_reencoded(&split.out, true)?;
            ensure!(
                a == b && a.0 == input && a.1.as_deref() == Some(&b""[..]),
                "a close-delimited body was not chunked faithfully: {}",
                why()
            );
            ensure!(
                whole.used == input.len() && whole.end == Some(Ok(())),
                "{}",
                why()
            );
            ensure!(whole.data_len == input.len() as u64, "data_len: {}", why());
        }
        Relay::Dechunk | Relay::Pass(_) => {
            let decoded = decode(&[input])?;
            if decoded.error.is_some() {
                ensure!(
                    whole.error.is_some(),
                    "a body Chunked refuses ({:?}) was relayed: {}",
                    decoded.error,
                    why()
                );
                return Ok(Class::Refused);
            }
            ensure!(
                whole.error.is_none(),
                "a body Chunked accepts was refused: {}",
                why()
            );
            ensure!(
                whole.done == decoded.trailers.is_some() && whole.used == decoded.used,
                "relayed to a different end than Chunked finds ({decoded:?}): {}",
                why()
            );
            ensure!(
                whole.done || whole.end == Some(Err("mid-body")),
                "a close mid-body was not an error: {}",
                why()
            );
            if relay == Relay::Dechunk {
                ensure!(
                    whole.out == split.out && whole.out == decoded.data,
                    "dechunked output is not the data: {}",
                    why()
                );
                ensure!(
                    whole.data_len == decoded.data.len() as u64,
                    "data_len: {}",
                    why()
                );
            } else {
                let a = check_reencoded(&whole.out, whole.done)?;
                let b = check_reencoded(&split.out, split.done)?;
                ensure!(a == b, "re-encoded differently when split: {}", why());
                ensure!(
                    a.0 == decoded.data && a.1 == decoded.trailers,
                    "re-encoding {} is not the decoded body {decoded:?}",
                    lit(&whole.out)
                );
                ensure!(whole.data_len == a.0.len() as u64, "data_len: {}", why());
            }
        }
    }
    Ok(if failed(&whole) {
        Class::Refused
    } else if whole.done {
        Class::Accepted
    } else {
        Class::Incomplete
    })
}

// ---------------------------------------------------------------------------
// Heads.

/// Whether `head` has a CR not followed by LF or a LF not preceded by CR.
fn bare_line_end(head: &[u8]) -> bool {
    head.first() == Some(&b'\n')
        || head.windows(2).any(|w| (w[1] == b'\n') != (w[0] == b'\r'))
        || head.last() == Some(&b'\r')
}

/// The headers of `out` with `name` (case-insensitive).
fn values<'a>(headers: &[httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// Fields the LB must never forward in a request head (it drops them, or
/// makes them itself).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// What CGI/WSGI would make of a name: `_` read as `-`, lowercase.
fn dashed(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b == b'_' {
                '-'
            } else {
                b.to_ascii_lowercase() as char
            }
        })
        .collect()
}

/// Fields only the LB may set (`lb::http1`'s `CONTROLLED`).
const CONTROLLED: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "forwarded",
    "x-real-ip",
];

/// Whether a name with `_`, read with `-` as CGI and WSGI do, names a
/// field only the LB may set.
pub fn controlled_when_dashed(name: &str) -> bool {
    let d = dashed(name);
    CONTROLLED.contains(&d.as_str())
        || internal(d.as_bytes(), "x-forwarded-")
        || internal(d.as_bytes(), "rip-worker-")
        || is_claim(&d)
}

/// The request head the LB forwards is unambiguous: one complete message of
/// exactly `out.len()` bytes, CR LF only, one valid `Host`, the framing
/// header that matches `head.body` and no other, no hop-by-hop, internal or
/// (with the default context) underscore field, in origin form, HTTP/1.1 —
/// and `parse_request` reads it back with the same framing.
pub fn check_forwarded_request(
    buf: &[u8],
    head: &RequestHead,
    context: &Context<'_>,
    out: &[u8],
) -> Result<(), String> {
    let shown = || format!("forwarded {} for {}", lit(out), lit(&buf[..head.len]));
    ensure!(
        !bare_line_end(out),
        "a line end other than CR LF: {}",
        shown()
    );
    ensure!(
        !out.contains(&0),
        "a NUL in the forwarded head: {}",
        shown()
    );
    let mut fields = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(out) {
        Ok(httparse::Status::Complete(n)) => ensure!(
            n == out.len(),
            "httparse reads {n} of {} bytes as the head: {}",
            out.len(),
            shown()
        ),
        other => return Err(format!("httparse says {other:?}: {}", shown())),
    }
    ensure!(
        request.version == Some(1),
        "not forwarded as HTTP/1.1: {}",
        shown()
    );
    ensure!(
        request.method == Some(head.method.as_str()),
        "method changed: {}",
        shown()
    );
    let path = request.path.unwrap_or("");
    ensure!(
        path.starts_with('/') || path == "*",
        "target not in origin form: {}",
        shown()
    );
    // The target the LB routes and logs by is the one the app gets (but
    // for an absolute form's empty path: `/`, or `*` for OPTIONS).
    let target = head.target(buf);
    let expected = if target.is_empty() && head.method.as_str() == "OPTIONS" {
        "*".to_string()
    } else if target.is_empty() || target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_string()
    };
    ensure!(
        path == expected || path == target,
        "routes by {target:?} but forwards {path:?}: {}",
        shown()
    );
    let headers = &*request.headers;
    let hosts = values(headers, "host");
    ensure!(hosts.len() == 1, "{} Host fields: {}", hosts.len(), shown());
    let lengths = values(headers, "content-length");
    let codings = values(headers, "transfer-encoding");
    ensure!(
        lengths.len() + codings.len() <= 1,
        "more than one framing field: {}",
        shown()
    );
    match head.body {
        Framing::Length(n) => ensure!(
            lengths == [n.to_string().as_bytes()] && n > 0,
            "Length({n}) forwarded as {lengths:?}: {}",
            shown()
        ),
        Framing::Chunked => ensure!(
            codings == [&b"chunked"[..]],
            "Chunked forwarded as {codings:?}: {}",
            shown()
        ),
        Framing::None => ensure!(
            codings.is_empty() && (lengths.is_empty() || lengths == [&b"0"[..]]),
            "no body, forwarded as {lengths:?} {codings:?}: {}",
            shown()
        ),
        Framing::UntilClose => return Err(format!("a request UntilClose: {}", shown())),
    }
    // A WebSocket handshake goes on with the LB's own `Connection: upgrade`
    // and `Upgrade: websocket`, and nothing else hop-by-hop.
    let (connection, upgrade) = (values(headers, "connection"), values(headers, "upgrade"));
    if head.websocket {
        ensure!(
            connection == [&b"upgrade"[..]] && upgrade == [&b"websocket"[..]],
            "a WebSocket handshake forwarded with {connection:?} {upgrade:?}: {}",
            shown()
        );
    }
    for h in headers.iter() {
        let name = h.name.as_bytes();
        ensure!(
            !internal(name, "rip-worker-"),
            "internal field {} forwarded: {}",
            h.name,
            shown()
        );
        let handshake = head.websocket
            && (h.name.eq_ignore_ascii_case("connection")
                || h.name.eq_ignore_ascii_case("upgrade"));
        ensure!(
            handshake || !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)),
            "hop-by-hop field {} forwarded: {}",
            h.name,
            shown()
        );
        if h.name.contains('_') {
            ensure!(
                context.underscores,
                "underscore field {} forwarded: {}",
                h.name,
                shown()
            );
            let d = dashed(h.name);
            ensure!(
                !controlled_when_dashed(h.name),
                "{} forwarded, read as {d} by CGI: {}",
                h.name,
                shown()
            );
        }
    }
    check_claims(buf, head, context, headers).map_err(|why| format!("{why}: {}", shown()))?;
    // The LB reads its own output as the same request.
    let mut again = Vec::new();
    let plain = Context::default();
    // What the LB sends stays within what it sends at most (hyper's
    // defaults); read back, it may be over what the LB takes in, which
    // leaves room for the fields it adds.
    ensure!(
        fields_in(out) <= MAX_HEADERS && out.len() <= MAX_HEAD,
        "the LB forwards a head over its limits: {}",
        shown()
    );
    let over_input_limits = fields_in(out) > MAX_FIELDS_IN || out.len() > MAX_HEAD_IN;
    match http1::parse_request(out, &plain, &mut again) {
        Err(HeadError::TooLarge) if over_input_limits => {}
        Ok(Some(h)) => ensure!(
            h.len == out.len()
                && h.body == head.body
                && h.method == head.method
                && !h.http10
                && h.websocket == head.websocket,
            "the LB reads its own output as {h:?} (was {head:?}): {}",
            shown()
        ),
        other => {
            return Err(format!(
                "the LB refuses its own output ({other:?}): {}",
                shown()
            ))
        }
    }
    Ok(())
}

/// The address fields a client may claim, besides `x-forwarded-*`
/// (`lb::forwarded`'s claims, spelled out again here).
pub const CLAIMS: [&str; 12] = [
    "x-real-ip",
    "x-request-id",
    "x-request-start",
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

/// Whether `name` says who a client is or how it came.
pub fn is_claim(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    (name.starts_with("x-forwarded-") && name.len() > 12) || CLAIMS.contains(&name.as_str())
}

/// The trusted proxies of the contexts [`context`] makes.
pub fn proxies() -> &'static rip_server::flags::TrustedProxies {
    static PROXIES: std::sync::OnceLock<rip_server::flags::TrustedProxies> =
        std::sync::OnceLock::new();
    PROXIES
        .get_or_init(|| rip_server::flags::TrustedProxies::parse("10.0.0.0/8,::1").expect("valid"))
}

/// A context with a request id and a start time, whose peer is trusted
/// when `trusted` (and it is one of [`proxies`]).
pub fn context(
    client: Option<IpAddr>,
    host: Option<&'static str>,
    underscores: bool,
    trusted: bool,
) -> Context<'static> {
    Context {
        hop: Hop {
            client,
            trusted: (trusted && client.is_some_and(|ip| proxies().contains(ip))).then(proxies),
            https: false,
            port: Some(3000),
            request_id: b"0123-id",
            received_us: 1_764_331_200_000_123,
        },
        host,
        underscores,
    }
}

/// The forwarding fields (`lb::forwarded`): one of each the LB writes;
/// from a client that is not a trusted proxy, only the LB's own values
/// and no other claim; from a trusted one, the chain ends with the peer.
fn check_claims(
    buf: &[u8],
    head: &RequestHead,
    context: &Context<'_>,
    headers: &[httparse::Header<'_>],
) -> Result<(), String> {
    let hop = &context.hop;
    let client = hop.client.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    });
    let one = |name: &str| -> Result<Option<&[u8]>, String> {
        match values(headers, name)[..] {
            [] => Ok(None),
            [v] => Ok(Some(v)),
            ref many => Err(format!("{} {name} fields", many.len())),
        }
    };
    let host = one("host")?.unwrap_or_default();
    let written = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "x-request-id",
        "x-request-start",
    ];
    let got: Vec<Option<&[u8]>> = written.iter().map(|n| one(n)).collect::<Result<_, _>>()?;
    let [xff, proto, xfh, port, real, id, start] = got[..] else {
        unreachable!()
    };
    let client_text = client.map(|ip| ip.to_string());
    if hop.trusted.is_none() {
        for h in headers {
            ensure!(
                !is_claim(h.name) || written.iter().any(|n| h.name.eq_ignore_ascii_case(n)),
                "the client's {} forwarded",
                h.name
            );
        }
        ensure!(
            xff == client_text.as_deref().map(str::as_bytes),
            "X-Forwarded-For {:?} for client {client:?}",
            xff.map(lit)
        );
        ensure!(
            real == xff,
            "X-Real-IP {:?}, X-Forwarded-For {:?}",
            real.map(lit),
            xff.map(lit)
        );
        ensure!(
            proto == Some(b"http"),
            "X-Forwarded-Proto {:?}",
            proto.map(lit)
        );
        ensure!(
            xfh == Some(host),
            "X-Forwarded-Host {:?}, Host {}",
            xfh.map(lit),
            lit(host)
        );
        ensure!(
            port == Some(b"3000") || hop.port.is_none(),
            "X-Forwarded-Port {:?}",
            port.map(lit)
        );
        ensure!(
            id == Some(hop.request_id) && head.request_id.is_none(),
            "X-Request-Id {:?}",
            id.map(lit)
        );
        let t = format!("t={}", hop.received_us);
        ensure!(
            start == Some(t.as_bytes()),
            "X-Request-Start {:?}",
            start.map(lit)
        );
    } else {
        let xff = xff.ok_or("no X-Forwarded-For from a trusted proxy")?;
        let peer = client_text.expect("a trusted peer has an address");
        ensure!(
            xff == peer.as_bytes() || xff.ends_with(format!(", {peer}").as_bytes()),
            "X-Forwarded-For {} does not end with the peer {peer}",
            lit(xff)
        );
        ensure!(
            real.is_some() && proto.is_some() && xfh.is_some() && id.is_some() && start.is_some(),
            "a forwarding field missing"
        );
        // One plain id of the proxy's is kept; else the LB's.
        let mut input_fields = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
        let mut input = httparse::Request::new(&mut input_fields);
        let _ = input.parse(&buf[..head.len]);
        let given = values(input.headers, "x-request-id");
        let plain = |id: &[u8]| {
            (1..=128).contains(&id.len())
                && id
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
        };
        let expected = match given[..] {
            [one] if plain(one) => one,
            _ => hop.request_id,
        };
        ensure!(
            id == Some(expected)
                && head.request_id.as_ref().map(|r| &buf[r.clone()])
                    == (expected != hop.request_id).then_some(expected),
            "X-Request-Id {:?} for the proxy's {given:?}",
            id.map(lit)
        );
    }
    Ok(())
}

/// Header fields in a complete head.
fn fields_in(head: &[u8]) -> usize {
    head.windows(2)
        .filter(|w| w == b"\r\n")
        .count()
        .saturating_sub(2)
}

fn same_class(a: &HeadError, b: &HeadError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// `parse_request` on `buf` and its prefixes at `prefixes`: a prefix is
/// incomplete, refused the same way as the whole, or — when it holds the
/// whole head — the same head and output. An accepted head is checked by
/// [`check_forwarded_request`].
pub fn check_request(buf: &[u8], context: &Context<'_>, prefixes: &[usize]) -> Check {
    let mut out = Vec::new();
    let whole = http1::parse_request(buf, context, &mut out);
    if let Ok(None) = whole {
        ensure!(
            buf.len() < MAX_HEAD,
            "incomplete at {} bytes (limit {MAX_HEAD})",
            buf.len()
        );
    }
    for &p in prefixes {
        if p > buf.len() {
            continue;
        }
        let mut part_out = Vec::new();
        let part = http1::parse_request(&buf[..p], context, &mut part_out);
        let ok = match (&whole, &part) {
            (Ok(Some(h)), Ok(None)) => p < h.len,
            (Ok(Some(h)), Ok(Some(g))) => h == g && out == part_out,
            (Err(e), Err(f)) => same_class(e, f),
            (_, Ok(None)) => true,
            _ => false,
        };
        ensure!(
            ok,
            "prefix of {p} bytes: {part:?}, whole: {whole:?}\n input {}",
            lit(buf)
        );
    }
    match whole {
        Ok(Some(head)) => {
            ensure!(
                head.len <= buf.len() && head.len <= MAX_HEAD,
                "head of {} bytes",
                head.len
            );
            check_forwarded_request(buf, &head, context, &out)?;
            Ok(Class::Accepted)
        }
        Ok(None) => Ok(Class::Incomplete),
        Err(_) => Ok(Class::Refused),
    }
}

/// What [`check_response`] parses with besides the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseContext {
    pub head_request: bool,
    pub client_http10: bool,
    pub close: bool,
    /// The request had an id (`REQUEST_ID`) to echo.
    pub request_id: bool,
}

/// The request id a [`ResponseContext`] echoes.
pub const REQUEST_ID: &[u8] = b"0123-id";

pub const DATE: &[u8] = b"Sat, 28 Nov 2026 12:00:00 GMT";

type ResponseResult = Result<(Parsed, Relay, bool), &'static str>;

fn parse_response(buf: &[u8], cx: ResponseContext, out: &mut Vec<u8>) -> ResponseResult {
    let asked = http1::Asked {
        head_request: cx.head_request,
        client_http10: cx.client_http10,
        close: cx.close,
        request_id: if cx.request_id { REQUEST_ID } else { b"" },
        hsts: b"",
    };
    http1::parse_response(buf, &asked, DATE, out)
}

/// The response head the client gets is unambiguous: one complete message,
/// CR LF only, HTTP/1.1 with the worker's status, the LB's one `Date`, the
/// framing field the relay mode sends by and no other, a `Connection` of
/// the LB's own only, no hop-by-hop or internal field — and the LB reads it
/// back with the same framing.
pub fn check_forwarded_response(
    buf: &[u8],
    cx: ResponseContext,
    head: &ResponseHead,
    relay: Relay,
    close: bool,
    out: &[u8],
) -> Result<(), String> {
    let shown = || format!("sent {} for {}", lit(out), lit(&buf[..head.len]));
    ensure!(
        !bare_line_end(out),
        "a line end other than CR LF: {}",
        shown()
    );
    let mut fields = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(out) {
        Ok(httparse::Status::Complete(n)) => ensure!(
            n == out.len(),
            "httparse reads {n} of {} bytes as the head: {}",
            out.len(),
            shown()
        ),
        other => return Err(format!("httparse says {other:?}: {}", shown())),
    }
    ensure!(
        response.version == Some(1) && response.code == Some(head.status),
        "status line changed: {}",
        shown()
    );
    ensure!(
        (200..=599).contains(&head.status),
        "a final response with status {}",
        head.status
    );
    let headers = &*response.headers;
    ensure!(
        values(headers, "date") == [DATE],
        "not the LB's one Date: {}",
        shown()
    );
    // The request's id, unless the app sent its own (which goes as it is).
    let mut app_fields = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut app = httparse::Response::new(&mut app_fields);
    let _ = app.parse(&buf[..head.len]);
    let app_ids = values(app.headers, "x-request-id");
    let ids = values(headers, "x-request-id");
    ensure!(
        if app_ids.is_empty() {
            ids == if cx.request_id {
                vec![REQUEST_ID]
            } else {
                vec![]
            }
        } else {
            ids == app_ids
        },
        "X-Request-Id {ids:?} (the app's {app_ids:?}): {}",
        shown()
    );
    let no_body = cx.head_request || head.status == 204 || head.status == 304;
    ensure!(
        (head.body == Framing::None) == (relay == Relay::None),
        "{:?} relayed as {relay:?}",
        head.body
    );
    ensure!(
        !no_body || head.body == Framing::None,
        "a bodiless response framed {:?}",
        head.body
    );
    let expected = match (head.body, cx.client_http10) {
        (Framing::None, _) => Relay::None,
        (Framing::Length(n), _) => Relay::Pass(Framing::Length(n)),
        (Framing::Chunked, false) => Relay::Pass(Framing::Chunked),
        (Framing::Chunked, true) => Relay::Dechunk,
        (Framing::UntilClose, false) => Relay::Chunk,
        (Framing::UntilClose, true) => Relay::UntilClose,
    };
    ensure!(
        relay == expected,
        "{:?} to {cx:?} relayed as {relay:?}",
        head.body
    );
    ensure!(
        !head.reusable || (head.body != Framing::UntilClose && !no_body),
        "reusable after {:?} / no body {no_body}",
        head.body
    );
    ensure!(
        close == (cx.close || matches!(relay, Relay::Dechunk | Relay::UntilClose)),
        "close {close} for {cx:?}, {relay:?}"
    );
    let lengths = values(headers, "content-length");
    let codings = values(headers, "transfer-encoding");
    ensure!(
        lengths.len() + codings.len() <= 1,
        "more than one framing field: {}",
        shown()
    );
    match relay {
        Relay::Pass(Framing::Length(n)) => ensure!(
            lengths == [n.to_string().as_bytes()],
            "Length({n}) sent as {lengths:?}: {}",
            shown()
        ),
        Relay::Pass(Framing::Chunked) | Relay::Chunk => ensure!(
            codings == [&b"chunked"[..]],
            "{relay:?} sent as {codings:?}: {}",
            shown()
        ),
        Relay::Dechunk | Relay::UntilClose => ensure!(
            lengths.is_empty() && codings.is_empty(),
            "{relay:?} sent with framing {lengths:?} {codings:?}: {}",
            shown()
        ),
        Relay::None => {}
        Relay::Pass(other) => return Err(format!("Relay::Pass({other:?})")),
    }
    let connection = values(headers, "connection");
    let ours: &[&[u8]] = if close {
        &[b"close"]
    } else if cx.client_http10 {
        &[b"keep-alive"]
    } else {
        &[]
    };
    ensure!(
        connection == ours,
        "Connection {connection:?} (close {close}): {}",
        shown()
    );
    for h in headers.iter() {
        ensure!(
            !internal(h.name.as_bytes(), "rip-worker-"),
            "internal field {} sent: {}",
            h.name,
            shown()
        );
        ensure!(
            !["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n)),
            "hop-by-hop field {} sent: {}",
            h.name,
            shown()
        );
    }
    // The LB reads its own output with the same framing.
    let again_cx = ResponseContext {
        head_request: cx.head_request,
        ..ResponseContext::default()
    };
    let mut again = Vec::new();
    let expect_body = match relay {
        Relay::None => Framing::None,
        Relay::Pass(f) => f,
        Relay::Chunk => Framing::Chunked,
        Relay::Dechunk | Relay::UntilClose => Framing::UntilClose,
    };
    ensure!(
        fields_in(out) <= MAX_HEADERS && out.len() <= MAX_HEAD,
        "the LB sends a head over its limits: {}",
        shown()
    );
    let over_input_limits = fields_in(out) > MAX_FIELDS_IN || out.len() > MAX_HEAD_IN;
    match parse_response(out, again_cx, &mut again) {
        Err("response head too large") if over_input_limits => {}
        Ok((Parsed::Final(h), ..)) => ensure!(
            h.len == out.len() && h.status == head.status && h.body == expect_body,
            "the LB reads its own output as {h:?}: {}",
            shown()
        ),
        other => {
            return Err(format!(
                "the LB refuses its own output ({other:?}): {}",
                shown()
            ))
        }
    }
    Ok(())
}

/// `parse_response` on `buf` and its prefixes at `prefixes`: a prefix is
/// incomplete, refused as the whole is, or the same result; a final head
/// is checked by [`check_forwarded_response`].
pub fn check_response(buf: &[u8], cx: ResponseContext, prefixes: &[usize]) -> Check {
    let mut out = Vec::new();
    let whole = parse_response(buf, cx, &mut out);
    let head_len = match &whole {
        Ok((Parsed::Final(h), ..)) => Some(h.len),
        Ok((Parsed::Interim(n), ..)) => Some(*n),
        _ => None,
    };
    if let Ok((Parsed::Incomplete, ..)) = whole {
        ensure!(
            buf.len() < MAX_HEAD,
            "incomplete at {} bytes (limit {MAX_HEAD})",
            buf.len()
        );
    }
    for &p in prefixes {
        if p > buf.len() {
            continue;
        }
        let mut part_out = Vec::new();
        let part = parse_response(&buf[..p], cx, &mut part_out);
        let ok = match (&whole, &part) {
            (_, Ok((Parsed::Incomplete, ..))) => head_len.is_none_or(|n| p < n),
            (Ok(_), Ok(_)) => {
                whole == part && (!matches!(part, Ok((Parsed::Final(_), ..))) || out == part_out)
            }
            (Err(e), Err(f)) => e == f,
            _ => false,
        };
        ensure!(
            ok,
            "prefix of {p} bytes: {part:?}, whole: {whole:?}\n input {}",
            lit(buf)
        );
    }
    match whole {
        Ok((Parsed::Final(head), relay, close)) => {
            ensure!(head.len <= buf.len(), "head of {} bytes", head.len);
            check_forwarded_response(buf, cx, &head, relay, close, &out)?;
            Ok(Class::Accepted)
        }
        Ok((Parsed::Interim(n), ..)) => {
            ensure!(n <= buf.len(), "interim of {n} bytes");
            Ok(Class::Accepted)
        }
        Ok((Parsed::Incomplete, ..)) => Ok(Class::Incomplete),
        Err(_) => Ok(Class::Refused),
    }
}

/// `parse_switch` (the app's answer to a WebSocket handshake) on `buf` and
/// its prefixes: a prefix is not yet a `101`, refused as the whole is, or
/// the same; the `101` head the client gets is one complete message, CR LF
/// only, with the LB's `Date`, `Connection: upgrade` and
/// `Upgrade: websocket`, and no framing, hop-by-hop or internal field.
pub fn check_switch(buf: &[u8], prefixes: &[usize]) -> Check {
    let mut out = Vec::new();
    let whole = http1::parse_switch(buf, DATE, REQUEST_ID, &mut out);
    let whole_len = match whole {
        Ok(Some(n)) => Some(n),
        _ => None,
    };
    for &p in prefixes {
        if p > buf.len() {
            continue;
        }
        let mut part_out = Vec::new();
        let part = http1::parse_switch(&buf[..p], DATE, REQUEST_ID, &mut part_out);
        let ok = match (&whole, &part) {
            (_, Ok(None)) => whole_len.is_none_or(|n| p < n),
            (Ok(Some(n)), Ok(Some(m))) => n == m && out == part_out,
            (Err(e), Err(f)) => e == f,
            _ => false,
        };
        ensure!(
            ok,
            "parse_switch on a prefix of {p} bytes: {part:?}, whole: {whole:?}\n input {}",
            lit(buf)
        );
    }
    let Some(len) = whole_len else {
        return Ok(if whole.is_err() {
            Class::Refused
        } else {
            Class::Incomplete
        });
    };
    let shown = || format!("sent {} for {}", lit(&out), lit(&buf[..len]));
    ensure!(len <= buf.len(), "a 101 of {len} bytes");
    ensure!(
        !bare_line_end(&out),
        "a line end other than CR LF: {}",
        shown()
    );
    let mut fields = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(&out) {
        Ok(httparse::Status::Complete(n)) => ensure!(
            n == out.len(),
            "httparse reads {n} of {} bytes as the head: {}",
            out.len(),
            shown()
        ),
        other => return Err(format!("httparse says {other:?}: {}", shown())),
    }
    ensure!(
        response.version == Some(1) && response.code == Some(101),
        "status line changed: {}",
        shown()
    );
    let headers = &*response.headers;
    ensure!(
        values(headers, "date") == [DATE]
            && values(headers, "connection") == [&b"upgrade"[..]]
            && values(headers, "upgrade") == [&b"websocket"[..]],
        "not the LB's Date, Connection and Upgrade: {}",
        shown()
    );
    for h in headers.iter() {
        ensure!(
            !internal(h.name.as_bytes(), "rip-worker-"),
            "internal field {} sent: {}",
            h.name,
            shown()
        );
        ensure!(
            ![
                "content-length",
                "transfer-encoding",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
            ]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n)),
            "framing or hop-by-hop field {} sent: {}",
            h.name,
            shown()
        );
    }
    Ok(Class::Accepted)
}
