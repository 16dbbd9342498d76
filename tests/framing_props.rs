//! Property tests of the LB's HTTP/1.1 framing (`lb::http1`, `lb::chunked`,
//! `lb::body`): split invariance, canonical and faithful re-encoding of
//! chunked bodies, and unambiguous forwarded heads. The invariants live in
//! `framing_props/invariants.rs`, shared with the cargo-fuzz targets in
//! `fuzz/`.
//!
//! Inputs come from a grammar of valid messages (random headers, framing,
//! chunk extensions, trailers) and then random mutations (bit flips,
//! inserted CR, LF, space, tab, NUL, `;`…, deleted bytes, duplicated lines),
//! so that both the accepted and the refused paths are taken; each property
//! checks that both were. `PROPTEST_CASES=N` runs N cases per property
//! instead of the default.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "framing_props/invariants.rs"]
mod invariants;

use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use invariants::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rip_server::lb::http1::{Context, Framing};

// ---------------------------------------------------------------------------
// Running a property and counting what its inputs came to.

#[derive(Default)]
struct Tally {
    accepted: Cell<u32>,
    refused: Cell<u32>,
    incomplete: Cell<u32>,
}

impl Tally {
    fn count(&self, class: Class) {
        let cell = match class {
            Class::Accepted => &self.accepted,
            Class::Refused => &self.refused,
            Class::Incomplete => &self.incomplete,
        };
        cell.set(cell.get() + 1);
    }

    /// Both the accepted and the refused paths were taken, each by at
    /// least 5% of the cases.
    fn assert_both_paths(&self, name: &str) {
        let (a, r, i) = (
            self.accepted.get(),
            self.refused.get(),
            self.incomplete.get(),
        );
        let total = a + r + i;
        eprintln!("{name}: {a} accepted, {r} refused, {i} incomplete");
        assert!(
            a * 20 >= total && r * 20 >= total,
            "{name}: one path is starved: {a} accepted, {r} refused, {i} incomplete"
        );
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on `cases` values of `strategy`; a broken invariant fails
/// the test with the (shrunk) input.
fn run<S>(name: &str, default_cases: u32, strategy: S, check: impl Fn(&S::Value) -> Check)
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let config = Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let tally = Tally::default();
    let result = runner.run(&strategy, |value| match check(&value) {
        Ok(class) => {
            tally.count(class);
            Ok(())
        }
        Err(why) => Err(TestCaseError::fail(why)),
    });
    if let Err(failure) = result {
        panic!("{name}: {failure}");
    }
    tally.assert_both_paths(name);
}

// ---------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    DuplicateLine(Index),
    Truncate(Index),
}

/// Bytes that mean something to some HTTP parser.
const INSERTED: &[u8] = b"\n\r \t\0;\"\\,:=_0aF\x7f\x80";

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        4 => (any::<Index>(), select(INSERTED)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// No mutation half the time, else one to three.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![Just(Vec::new()), vec(mutation(), 1..4)]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Delete(i) => {
                bytes.remove(i.index(len));
            }
            Mutation::DuplicateLine(i) => {
                let at = i.index(len);
                let start = bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(len, |p| at + p + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        }
    }
}

/// A printable case: the input as a byte-string literal.
struct Bytes<'a>(&'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&lit(self.0))
    }
}

fn positions(len: usize, points: &[Index]) -> Vec<usize> {
    points.iter().map(|i| i.index(len + 1)).collect()
}

// ---------------------------------------------------------------------------
// Chunked bodies.

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,6}"
}

/// Optional whitespace (`BWS`), mostly none.
fn bws() -> impl Strategy<Value = &'static str> {
    select(vec!["", "", "", " ", "\t", " \t"])
}

fn quoted() -> impl Strategy<Value = String> {
    vec(prop_oneof!["[ \t!#-\\[\\]-~]", "\\\\[ -~]"], 0..5)
        .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn extension() -> impl Strategy<Value = String> {
    (
        bws(),
        bws(),
        token(),
        prop::option::of((bws(), bws(), prop_oneof![token(), quoted()])),
    )
        .prop_map(|(b1, b2, name, value)| match value {
            None => format!("{b1};{b2}{name}"),
            Some((b3, b4, v)) => format!("{b1};{b2}{name}{b3}={b4}{v}"),
        })
}

/// A chunk size in hex as a sender may write it (either case, leading
/// zeros).
fn size_text(size: usize) -> impl Strategy<Value = String> {
    (0usize..3, any::<bool>()).prop_map(move |(zeros, upper)| {
        let hex = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        format!("{}{hex}", "0".repeat(zeros))
    })
}

fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 1..24),
        1 => vec(any::<u8>(), 500..700),
    ]
    .prop_flat_map(|data| (size_text(data.len()), vec(extension(), 0..3), Just(data)))
    .prop_map(|(size, extensions, data)| {
        let mut out = size.into_bytes();
        out.extend_from_slice(extensions.concat().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
        out
    })
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[!-~]([ -~\t]{0,10}[!-~])?".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        1 => vec(select(b"ab \t\x80\xff".to_vec()), 1..6),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    select(vec![": ", ": ", ":", ":\t", ":  "])
}

const TRAILER_NAMES: [&str; 14] = [
    "X-T",
    "Server-Timing",
    "ETag",
    "Content-Length",
    "Host",
    "Transfer-Encoding",
    "X_Under",
    "Rip-Worker-Busy",
    "x-forwarded-for",
    "Trailer",
    "Set-Cookie",
    "Expires",
    "Rip-Worker-",
    "X-Forwarded-",
];

fn trailer() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            select(TRAILER_NAMES.to_vec()).prop_map(String::from),
            token()
        ],
        separator(),
        field_value(),
        select(vec!["", "", " "]),
    )
        .prop_map(|(name, sep, value, ws)| {
            let mut out = format!("{name}{sep}").into_bytes();
            out.extend_from_slice(&value);
            out.extend_from_slice(ws.as_bytes());
            out.extend_from_slice(b"\r\n");
            out
        })
}

/// A valid chunked body (then what follows it on the connection).
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(chunk(), 0..4),
        select(vec!["0", "0", "00", "000"]),
        vec(extension(), 0..2),
        vec(trailer(), 0..3),
        select(vec!["", "", "NEXT", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
    )
        .prop_map(|(chunks, last, extensions, trailers, next)| {
            let mut out = chunks.concat();
            out.extend_from_slice(last.as_bytes());
            out.extend_from_slice(extensions.concat().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&trailers.concat());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(next.as_bytes());
            out
        })
}

fn mutated(body: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (body, mutations()).prop_map(|(mut bytes, ms)| {
        mutate(&mut bytes, &ms);
        bytes
    })
}

#[derive(Clone)]
struct Split {
    input: Vec<u8>,
    points: Vec<usize>,
}

impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("input", &Bytes(&self.input))
            .field("points", &self.points)
            .finish()
    }
}

fn split(input: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Split> {
    (input, vec(any::<Index>(), 1..4)).prop_map(|(input, points)| Split {
        points: positions(input.len(), &points),
        input,
    })
}

#[test]
fn chunked_decoding_is_split_invariant() {
    run("chunked", 512, split(mutated(chunked_body())), |case| {
        check_chunked(&case.input, &case.points)
    });
}

#[test]
fn chunked_decoding_is_byte_by_byte_invariant() {
    let bytewise = mutated(chunked_body()).prop_map(|input| Split {
        points: (0..=input.len()).collect(),
        input,
    });
    run("chunked bytewise", 128, bytewise, |case| {
        check_chunked(&case.input, &case.points)
    });
}

#[derive(Clone)]
struct BodyCase {
    split: Split,
    framing: Framing,
    max: u64,
}

impl fmt::Debug for BodyCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCase")
            .field("split", &self.split)
            .field("framing", &self.framing)
            .field("max", &self.max)
            .finish()
    }
}

#[test]
fn request_bodies_are_split_invariant_and_re_encoded_canonically() {
    let chunked = (
        split(mutated(chunked_body())),
        prop_oneof![3 => Just(1u64 << 20), 1 => 0u64..300],
    )
        .prop_map(|(split, max)| BodyCase {
            split,
            framing: Framing::Chunked,
            max,
        });
    let plain = (
        split(vec(any::<u8>(), 0..80)),
        prop_oneof![(1u64..60).prop_map(Framing::Length), Just(Framing::None),],
    )
        .prop_map(|(split, framing)| BodyCase {
            split,
            framing,
            max: 1 << 20,
        });
    run(
        "request body",
        512,
        prop_oneof![3 => chunked, 1 => plain],
        |case| {
            check_request_body(
                &case.split.input,
                case.framing,
                case.max,
                &case.split.points,
            )
        },
    );
}

#[test]
fn response_bodies_are_split_invariant_in_every_relay_mode() {
    let input = prop_oneof![
        3 => mutated(chunked_body()),
        1 => vec(any::<u8>(), 0..80),
    ];
    run(
        "relayer",
        768,
        (split(input), 0u8..6, 1u64..60),
        |(case, mode, length)| {
            let (relay, framing) = relay_mode(*mode, *length);
            check_relayer(&case.input, relay, framing, &case.points)
        },
    );
}

// ---------------------------------------------------------------------------
// Request heads.

fn pair(
    names: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = (String, Vec<u8>)> {
    (select(names), select(values)).prop_map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
}

/// Names that mean something to the LB or to an app behind it.
const SPECIAL_NAMES: &[&str] = &[
    "X-Drop",
    "X_Custom",
    "Transfer_Encoding",
    "Content_Length",
    "X_Forwarded_For",
    "X_Real_IP",
    "Rip-Worker-Id",
    "rip-worker-busy",
    "RIP-WORKER-RECYCLE",
    "rip_worker_busy",
    "Rip-Worker-",
    "TE",
    "Upgrade",
    "Keep-Alive",
    "Trailer",
    "Proxy-Connection",
    "Date",
    "Content-Type",
    "Forwarded",
    "X-Real-IP",
    "Accept",
    "Cookie",
];

fn request_header() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        3 => pair(
            &["Content-Length", "content-length"],
            &["0", "5", "12", "5, 5", "007", "5, 6", "-1", "abc", "", "+5", "99999999999999999999"],
        ),
        2 => pair(
            &["Transfer-Encoding", "transfer-encoding"],
            &["chunked", "Chunked", "gzip, chunked", "chunked, chunked", "identity", ""],
        ),
        2 => pair(
            &["Connection"],
            &["close", "keep-alive", "Keep-Alive", "X-Drop", "close, X-Drop", "host, content-length, transfer-encoding", "te, x_custom", "Upgrade", "keep-alive, Upgrade", "upgrade, upgrade"],
        ),
        1 => pair(&["Expect"], &["100-continue", "100-Continue", "foo"]),
        2 => pair(&["Upgrade", "upgrade"], &["websocket", "WebSocket", "h2c", "websocket, h2c", ""]),
        1 => pair(&["X-Forwarded-For", "x-forwarded-for"], &["1.2.3.4", "6.6.6.6, 7.7.7.7", "10.0.0.1", "junk"]),
        2 => pair(
            &["X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP", "X-Request-Id", "X-Request-Start", "Forwarded", "X-Forwarded-Ssl", "X-Forwarded-A_b", "True-Client-IP", "x_forwarded_proto", "X_Request_Id"],
            &["https", "evil.example", "443", "6.6.6.6", "abc-1", "t=1", "for=6.6.6.6", "on", "a b", ""],
        ),
        1 => pair(&["X-Request-Id", "x-request-id"], &["abc-1", "Root=1-x", "a b", "", "a\"b"]),
        1 => pair(&["Host"], &["b", "b:8080", "", "[::1]", "a b", "u@h", "a:x"]),
        4 => (select(SPECIAL_NAMES), field_value()).prop_map(|(n, v)| (n.to_string(), v)),
        3 => ("[A-Za-z0-9_-]{1,12}", field_value()),
    ]
}

const TARGETS: &[&str] = &[
    "/",
    "/p?q=1",
    "/a/b",
    "*",
    "http://h.example/x",
    "https://h:8443",
    "HTTP://b?q",
    "http://[::1]:81/y",
    "foo",
    "/a#b",
    "http://u@h/",
    "ftp://h/",
    "/%20x",
];

#[derive(Clone)]
struct RequestCase {
    buf: Vec<u8>,
    client: Option<IpAddr>,
    host: Option<&'static str>,
    underscores: bool,
    /// The peer, if one of the trusted proxies, is trusted.
    trusted: bool,
}

impl fmt::Debug for RequestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestCase")
            .field("buf", &Bytes(&self.buf))
            .field("client", &self.client)
            .field("host", &self.host)
            .field("underscores", &self.underscores)
            .field("trusted", &self.trusted)
            .finish()
    }
}

fn request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec!["", "", "", "\r\n"]),
        select(vec![
            "GET", "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get", "PATCH", "CONNECT",
        ]),
        prop_oneof![
            3 => select(TARGETS).prop_map(String::from),
            1 => "/[a-zA-Z0-9._~!$&'()*+,;=:@%/?-]{0,12}",
        ],
        select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop::option::weighted(0.85, select(vec!["a", "a.example:8080", "[::1]:3000", ""])),
        any::<Index>(),
        vec(
            (request_header(), separator(), select(vec!["", "", " "])),
            0..7,
        ),
    )
        .prop_map(|(lead, method, target, version, host, at, mut headers)| {
            if let Some(host) = host {
                let at = at.index(headers.len() + 1);
                headers.insert(at, (("Host".into(), host.into()), ": ", ""));
            }
            let mut out = format!("{lead}{method} {target} {version}\r\n").into_bytes();
            for ((name, value), sep, ws) in headers {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(sep.as_bytes());
                out.extend_from_slice(&value);
                out.extend_from_slice(ws.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

fn request_case() -> impl Strategy<Value = RequestCase> {
    (
        mutated(request_head()),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => vec(any::<u8>(), 0..16),
            1 => chunked_body(),
        ],
        prop_oneof![
            Just(Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))),
            Just(Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            Just(Some(IpAddr::V6(
                Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped()
            ))),
            Just(None),
        ],
        select(vec![Some("127.0.0.1:3000"), Some("[::1]:80"), None]),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.5),
    )
        .prop_map(|(mut buf, body, client, host, underscores, trusted)| {
            buf.extend_from_slice(&body);
            RequestCase {
                buf,
                client,
                host,
                underscores,
                trusted,
            }
        })
}

#[test]
fn request_heads_are_split_invariant_and_forwarded_unambiguously() {
    run("request head", 512, request_case(), |case| {
        let context = invariants::context(case.client, case.host, case.underscores, case.trusted);
        let every: Vec<usize> = (0..case.buf.len()).collect();
        check_request(&case.buf, &context, &every)
    });
}

// ---------------------------------------------------------------------------
// Response heads.

fn response_header() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        3 => pair(
            &["Content-Length", "content-length"],
            &["0", "4", "38", "5, 5", "5, 6", "-1", "abc", ""],
        ),
        2 => pair(
            &["Transfer-Encoding"],
            &["chunked", "Chunked", "gzip, chunked", "chunked, identity", "gzip", ""],
        ),
        2 => pair(
            &["Connection"],
            &["close", "keep-alive", "X-App", "close, X-Secret", "Content-Type", "Upgrade", "upgrade, X-App"],
        ),
        2 => pair(&["Upgrade"], &["websocket", "WebSocket", "h2c", ""]),
        2 => pair(
            &["Rip-Worker-Busy", "rip-worker-recycle", "Rip-Worker-Id", "Rip-Worker-"],
            &["1", "0", " 1 "],
        ),
        2 => pair(
            &["Keep-Alive", "Date", "Content-Type", "Trailer", "Upgrade", "Proxy-Connection", "TE", "X-App", "X-Request-Id", "x-request-id", "X-Secret", "Host", "Expect", "Retry-After"],
            &["timeout=5", "text/plain", "x", "", "1"],
        ),
        2 => ("[A-Za-z0-9_-]{1,12}", field_value()),
    ]
}

#[derive(Clone)]
struct ResponseCase {
    buf: Vec<u8>,
    cx: ResponseContext,
}

impl fmt::Debug for ResponseCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCase")
            .field("buf", &Bytes(&self.buf))
            .field("cx", &self.cx)
            .finish()
    }
}

fn response_case() -> impl Strategy<Value = ResponseCase> {
    let head = (
        select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop_oneof![
            4 => select(vec![200u16, 200, 201, 204, 206, 301, 304, 404, 500, 503, 100, 103, 101, 101]),
            1 => 0u16..1000,
        ],
        select(vec![
            &b" OK"[..],
            b"",
            b" ",
            b" Not Found",
            b" Weird  Reason",
            b" \x80bin",
        ]),
        vec(
            (response_header(), separator(), select(vec!["", "", " "])),
            0..7,
        ),
    )
        .prop_map(|(version, status, reason, headers)| {
            let mut out = format!("{version} {status:03}").into_bytes();
            out.extend_from_slice(reason);
            out.extend_from_slice(b"\r\n");
            for ((name, value), sep, ws) in headers {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(sep.as_bytes());
                out.extend_from_slice(&value);
                out.extend_from_slice(ws.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        });
    (
        mutated(head),
        prop_oneof![Just(Vec::new()), vec(any::<u8>(), 0..16)],
        any::<(bool, bool, bool, bool)>(),
    )
        .prop_map(
            |(mut buf, body, (head_request, client_http10, close, request_id))| {
                buf.extend_from_slice(&body);
                ResponseCase {
                    buf,
                    cx: ResponseContext {
                        head_request,
                        client_http10,
                        close,
                        request_id,
                    },
                }
            },
        )
}

#[test]
fn response_heads_are_split_invariant_and_sent_unambiguously() {
    run("response head", 512, response_case(), |case| {
        let every: Vec<usize> = (0..case.buf.len()).collect();
        check_response(&case.buf, case.cx, &every)
    });
}

/// An app's answer to a WebSocket handshake: mostly a `101` with
/// `Upgrade: websocket` and `Connection: Upgrade`, among other fields.
fn switch_case() -> impl Strategy<Value = Split> {
    let head = (
        select(vec![
            "HTTP/1.1 101 Switching Protocols",
            "HTTP/1.1 101",
            "HTTP/1.0 101 S",
            "HTTP/1.1 200 OK",
        ]),
        prop::option::weighted(0.85, select(vec!["websocket", "WebSocket", "h2c"])),
        prop::option::weighted(
            0.85,
            select(vec!["Upgrade", "keep-alive, upgrade", "close"]),
        ),
        vec((response_header(), separator()), 0..5),
        any::<(Index, Index)>(),
    )
        .prop_map(|(line, upgrade, connection, mut headers, (i, j))| {
            if let Some(v) = upgrade {
                let at = i.index(headers.len() + 1);
                headers.insert(at, (("Upgrade".into(), v.into()), ": "));
            }
            if let Some(v) = connection {
                let at = j.index(headers.len() + 1);
                headers.insert(at, (("Connection".into(), v.into()), ": "));
            }
            let mut out = format!("{line}\r\n").into_bytes();
            for ((name, value), sep) in headers {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(sep.as_bytes());
                out.extend_from_slice(&value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        });
    (mutated(head), select(vec![&b""[..], b"frames"])).prop_map(|(mut input, frames)| {
        input.extend_from_slice(frames);
        Split {
            points: (0..input.len()).collect(),
            input,
        }
    })
}

#[test]
fn websocket_switches_are_split_invariant_and_sent_unambiguously() {
    run("switch", 512, switch_case(), |case| {
        // What is not a 101 counts as refused here (parse_response's part).
        check_switch(&case.input, &case.points).map(|class| match class {
            Class::Incomplete => Class::Refused,
            class => class,
        })
    });
}

// ---------------------------------------------------------------------------
// Bugs found by these properties and the fuzz targets, not fixed yet: each
// test fails today (`cargo test --test framing_props -- --ignored`). When
// one is fixed, un-ignore its test and remove its `Known` entry from
// `framing_props/invariants.rs` (the checks tolerate it until then).

use rip_server::lb::body::{BodyError, Output, RequestBody};
use rip_server::lb::chunked::MAX_TRAILERS;
use rip_server::lb::http1::{parse_request, parse_response, HeadError, MAX_FIELDS_IN, MAX_HEAD};

/// Known::EmptyInternalSuffix.
#[test]
fn an_internal_prefix_with_nothing_after_it_is_still_internal() {
    let mut leaks = Vec::new();
    let mut out = Vec::new();
    let underscores = Context {
        underscores: true,
        ..Context::default()
    };
    for (request, context, name) in [
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nRip-Worker-: 1\r\n\r\n"[..],
            Context::default(),
            &b"Rip-Worker-"[..],
        ),
        // CGI reads this name as `X-Forwarded-`.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_: 1\r\n\r\n",
            underscores,
            b"X_Forwarded_",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nRip_Worker_: 1\r\n\r\n",
            underscores,
            b"Rip_Worker_",
        ),
    ] {
        parse_request(request, &context, &mut out).unwrap().unwrap();
        if out.windows(name.len()).any(|w| w == name) {
            leaks.push(lit(&out));
        }
    }
    let response = b"HTTP/1.1 200 OK\r\nRip-Worker-: 1\r\nContent-Length: 0\r\n\r\n";
    parse_response(response, &Default::default(), DATE, &mut out).unwrap();
    if out.windows(11).any(|w| w == b"Rip-Worker-") {
        leaks.push(lit(&out));
    }
    let body = b"0\r\nRip-Worker-: 1\r\nX-Forwarded-: 2\r\n\r\n";
    let trailers = decode(&[body]).unwrap().trailers.unwrap();
    if !trailers.is_empty() {
        leaks.push(lit(&trailers));
    }
    assert!(leaks.is_empty(), "forwarded: {leaks:#?}");
}

/// Known::ResponseHeadLimit.
#[test]
fn the_response_head_limit_does_not_depend_on_reads() {
    let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    head.resize(MAX_HEAD + 100, b'a');
    head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let mut out = Vec::new();
    let whole = parse_response(&head, &Default::default(), DATE, &mut out);
    let part = parse_response(&head[..MAX_HEAD], &Default::default(), DATE, &mut out);
    assert_eq!(part, Err("response head too large"));
    assert!(whole.is_err(), "whole: {whole:?}");
}

/// Once Known::ForwardedHeadOverLimits: the most fields accepted, with
/// the ones the LB adds, stay within what it (and hyper) take.
#[test]
fn the_forwarded_head_stays_within_the_limits() {
    let mut request = b"GET / HTTP/1.0\r\n".to_vec();
    for _ in 0..MAX_FIELDS_IN {
        request.extend_from_slice(b"a: b\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let context = invariants::context(
        Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        None,
        false,
        false,
    );
    let mut out = Vec::new();
    parse_request(&request, &context, &mut out)
        .unwrap()
        .unwrap();
    // What hyper (100 fields at most by default) reads in one piece.
    let within = |head: &[u8], response: bool| {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        if response {
            httparse::Response::new(&mut fields)
                .parse(head)
                .is_ok_and(|s| s.is_complete())
        } else {
            httparse::Request::new(&mut fields)
                .parse(head)
                .is_ok_and(|s| s.is_complete())
        }
    };
    assert!(
        within(&out, false),
        "the {}-field head the LB forwards is over the limits",
        out.windows(2).filter(|w| w == b"\r\n").count() - 2
    );
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for _ in 0..MAX_FIELDS_IN {
        response.extend_from_slice(b"a: b\r\n");
    }
    response.extend_from_slice(b"\r\n");
    parse_response(&response, &Default::default(), DATE, &mut out).unwrap();
    assert!(
        within(&out, true),
        "the {}-field head the LB sends is over the limits",
        out.windows(2).filter(|w| w == b"\r\n").count() - 2
    );
    // One field more is refused up front.
    request.splice(16..16, b"a: b\r\n".iter().copied());
    assert!(matches!(
        parse_request(&request, &context, &mut out),
        Err(HeadError::TooLarge)
    ));
}

/// Not tolerated anywhere (the checks compare refusal, not its class).
#[test]
#[ignore = "bug: 400 or 413 for the same chunked body, by how it was split"]
fn known_bug_body_error_class_depends_on_split() {
    let input = b"a\r\n0123456789\r\nX";
    let take = |pieces: &[&[u8]]| {
        let mut body = RequestBody::new(Framing::Chunked, 5);
        let mut out = Output::default();
        for piece in pieces {
            body.take(piece, &mut out)?;
        }
        Ok::<_, BodyError>(())
    };
    let whole = take(&[input]);
    let split = take(&[&input[..15], &input[15..]]);
    assert_eq!(whole, Err(BodyError::Malformed));
    assert_eq!(split, whole);
}

/// Once Known::TrailersOutgrowLimit: the longest trailer line accepted
/// re-encodes within the limit, and one byte more is refused.
#[test]
fn re_written_trailers_stay_within_the_limit() {
    let line = |n: usize| {
        let mut input = b"0\r\nX:".to_vec();
        input.extend(std::iter::repeat_n(b'v', n));
        input.extend_from_slice(b"\r\n\r\n");
        input
    };
    let input = line(MAX_TRAILERS - 5);
    let mut body = RequestBody::new(Framing::Chunked, 1 << 20);
    let mut out = Output::default();
    body.take(&input, &mut out).unwrap();
    let mut sent = Vec::new();
    out.copy_into(&input, &mut sent);
    let again = decode(&[&sent]).unwrap();
    assert_eq!(again.error, None, "the LB's own output is refused");
    let mut body = RequestBody::new(Framing::Chunked, 1 << 20);
    assert!(body
        .take(&line(MAX_TRAILERS - 4), &mut Output::default())
        .is_err());
}
