//! A differential oracle for the LB's request parsing (`lb::http1`,
//! `lb::chunked`, `lb::body`) against hyper's HTTP/1 server.
//!
//! Every case — a built-in seed, a request case of `tests/corpus/`, or a
//! seeded random mutation of one — is read by both:
//!
//! - the LB: `parse_request` then `RequestBody::take`, request after
//!   request (pipelining) while the connection stays open, exactly as
//!   `lb::client` and `lb::proxy` drive them (but with no `--max-body`);
//! - hyper 1.x (`hyper::server::conn::http1::Builder`, default settings but
//!   `half_close(true)`, which only makes "the input ended" an EOF hyper
//!   reads at its next read instead of a race with the service) over an
//!   in-memory connection that hands it the bytes and then EOF, with a
//!   service that records each request's method, URI, version, headers,
//!   body and trailers.
//!
//! The two must agree on what the bytes are: which requests, in order, each
//! with the same method, target (the LB sends an absolute-form target in
//! origin form, its authority as `Host`), version, body and trailers, and
//! the same header fields up to the LB's documented rewrites; then the same
//! end (no more requests / the input ends mid-request / refused). And the
//! bytes the LB forwards for each request (its head, and the body
//! re-encoded) must be, to hyper, exactly one request with that meaning.
//!
//! Where they disagree, the disagreement must be one the table
//! [`DIFFERENCES`] names (the LB is deliberately stricter than hyper in
//! places); any other fails the test with the input printed as a Rust byte
//! string. The table is also `docs/framing-differences.md` (checked here;
//! `DIFFERENTIAL_WRITE_DOCS=1 cargo test --test differential` rewrites it).
//! Run with `-- --nocapture` to see the summary.

#[path = "framing_props/invariants.rs"]
mod invariants;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1 as hyper_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};

use rip_server::lb::body::{Output, RequestBody};
use rip_server::lb::chunked::{Chunked, Piece};
use rip_server::lb::http1::{parse_request, Context as LbContext, Framing, HeadError};

/// The address the LB gives an HTTP/1.0 request without `Host`.
const LB_HOST: &str = "127.0.0.1:3000";
/// How long hyper may take over one case before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most hex digits the LB takes in a chunk size (`lb::chunked`).
const MAX_SIZE_DIGITS: usize = 16;
/// Random mutations run (deterministic: a fixed seed).
const MUTATIONS: usize = 12_000;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

// ===== what a parser made of the bytes =====

/// One request as a parser understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Req {
    method: String,
    /// In origin form (or `*`): an absolute-form target's path and query.
    target: String,
    /// An absolute-form target's authority.
    authority: Option<String>,
    http10: bool,
    /// Lower-case names, in order received (hyper: grouped by name).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

/// How a parser's reading of the input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// No more requests: the input was used up (but for blank lines), or
    /// the connection closes after the last request.
    Stopped,
    /// The input ended inside a request.
    Incomplete,
    /// Refused: the status answered (0: none) and why.
    Refused { status: u16, why: String },
}

impl End {
    fn refused(&self) -> bool {
        matches!(self, End::Refused { .. })
    }
}

#[derive(Debug, Clone)]
struct LbReq {
    req: Req,
    /// Where the request starts in the input, and how many bytes it used.
    start: usize,
    head_len: usize,
    used: usize,
    keep_alive: bool,
    /// The target was in absolute form.
    absolute: bool,
    chunked: bool,
    /// What the app gets: the head and the body as re-encoded.
    forwarded: Vec<u8>,
}

#[derive(Debug, Clone)]
struct LbVerdict {
    requests: Vec<LbReq>,
    end: End,
    /// Where in the input the end was met.
    end_at: usize,
}

#[derive(Debug, Clone)]
struct HyVerdict {
    requests: Vec<Req>,
    end: End,
    /// What hyper wrote back (for the report).
    output: Vec<u8>,
}

// ===== the LB =====

fn lb_verdict(input: &[u8], underscores: bool) -> LbVerdict {
    let context = LbContext {
        hop: Default::default(),
        host: Some(LB_HOST),
        underscores,
    };
    let mut requests = Vec::new();
    let mut pos = 0;
    let mut head_out = Vec::new();
    let done = |requests, end, end_at| LbVerdict {
        requests,
        end,
        end_at,
    };
    loop {
        let rest = &input[pos..];
        let head = match parse_request(rest, &context, &mut head_out) {
            Ok(Some(head)) => head,
            Ok(None) => {
                let end = if rest.iter().all(|&b| b == b'\r' || b == b'\n') {
                    End::Stopped
                } else {
                    End::Incomplete
                };
                return done(requests, end, pos);
            }
            Err(refused) => {
                let (status, _) = refused.status();
                let why = match refused {
                    HeadError::Malformed(why) | HeadError::Unsupported(why) => why,
                    HeadError::TooLarge => "too large",
                };
                let end = End::Refused {
                    status,
                    why: why.to_string(),
                };
                return done(requests, end, pos);
            }
        };
        let body_bytes = &rest[head.len..];
        let mut body = RequestBody::new(head.body, u64::MAX);
        let mut output = Output::default();
        let used = match body.take(body_bytes, &mut output) {
            Ok(n) => n,
            Err(_) => {
                // The LB's own decoder, for why.
                let why = match decode_chunked(body_bytes) {
                    Err(why) => why,
                    Ok(_) => "body refused (but the decoder takes it)",
                };
                let end = End::Refused {
                    status: 400,
                    why: why.to_string(),
                };
                return done(requests, end, pos);
            }
        };
        if !body.is_done() {
            return done(requests, End::Incomplete, pos);
        }
        let (data, trailers) = match head.body {
            Framing::Chunked => {
                let (data, trailers, n) = decode_chunked(body_bytes).expect("taken, so decodable");
                assert_eq!(n, used, "the decoder and RequestBody part");
                (data, trailers)
            }
            Framing::Length(n) => (body_bytes[..n as usize].to_vec(), Vec::new()),
            Framing::None | Framing::UntilClose => (Vec::new(), Vec::new()),
        };
        assert_eq!(output.data_len(), data.len() as u64, "Output::data_len");
        let mut forwarded = head_out.clone();
        output.copy_into(body_bytes, &mut forwarded);

        let (method, target, headers) = parse_forwarded_head(&head_out);
        let original = original_target(rest);
        let absolute = !(original.starts_with('/') || original == "*");
        let authority = absolute.then(|| {
            headers
                .iter()
                .find(|(n, _)| n == "host")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        });
        requests.push(LbReq {
            req: Req {
                method,
                target,
                authority,
                http10: head.http10,
                headers,
                body: data,
                trailers: fields_of(&trailers),
            },
            start: pos,
            head_len: head.len,
            used: head.len + used,
            keep_alive: head.keep_alive,
            absolute,
            chunked: head.body == Framing::Chunked,
            forwarded,
        });
        pos += head.len + used;
        if !head.keep_alive {
            return done(requests, End::Stopped, pos);
        }
    }
}

/// Decodes a chunked body with the LB's decoder: data, kept trailers (as
/// `name: value\r\n` lines), bytes used.
fn decode_chunked(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize), &'static str> {
    let mut chunked = Chunked::default();
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    let n = chunked.feed(body, |piece| match piece {
        Piece::Data(range) => data.extend_from_slice(&body[range]),
        Piece::End(kept) => trailers = kept.to_vec(),
    })?;
    if !chunked.is_done() {
        return Err("incomplete");
    }
    Ok((data, trailers, n))
}

/// The head the LB forwards, read back: method, target, fields.
fn parse_forwarded_head(head: &[u8]) -> (String, String, Vec<(String, Vec<u8>)>) {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => panic!(
            "the LB forwarded a head httparse does not read as one head ({other:?}): {}",
            lit(head)
        ),
    }
    let headers = request
        .headers
        .iter()
        .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
        .collect();
    (
        request.method.unwrap_or("").to_string(),
        request.path.unwrap_or("").to_string(),
        headers,
    )
}

/// The request target as received (the LB accepted the head).
fn original_target(buf: &[u8]) -> String {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut fields);
    let _ = request.parse(buf);
    request.path.unwrap_or("").to_string()
}

/// `name: value\r\n` lines as fields.
fn fields_of(lines: &[u8]) -> Vec<(String, Vec<u8>)> {
    if lines.is_empty() {
        return Vec::new();
    }
    let mut block = lines.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 128];
    match httparse::parse_headers(&block, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields
            .iter()
            .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
            .collect(),
        other => panic!("kept trailers unreadable ({other:?}): {}", lit(lines)),
    }
}

// ===== hyper =====

/// A connection that hands hyper the input, then EOF, and keeps what
/// hyper writes.
struct MemIo {
    input: Vec<u8>,
    pos: usize,
    output: Arc<Mutex<Vec<u8>>>,
}

impl hyper::rt::Read for MemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let start = self.pos;
        let n = buf.remaining().min(self.input.len() - start);
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for MemIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.lock().expect("lock").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the service saw of one request.
#[derive(Debug, Clone)]
struct Record {
    req: Req,
    /// None: the body was still being read when the connection ended.
    body_end: Option<Result<(), BodyFailure>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyFailure {
    /// The input ended inside the body.
    Eof,
    Malformed(String),
}

type Records = Arc<Mutex<Vec<Record>>>;

async fn record(
    records: Records,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let uri = &parts.uri;
    let (target, authority) = if uri.scheme().is_some() {
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        (
            format!("{}{query}", uri.path()),
            uri.authority().map(|a| a.as_str().to_string()),
        )
    } else {
        (uri.to_string(), None)
    };
    let req = Req {
        method: parts.method.as_str().to_string(),
        target,
        authority,
        http10: parts.version == Version::HTTP_10,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let index = {
        let mut records = records.lock().expect("lock");
        records.push(Record {
            req,
            body_end: None,
        });
        records.len() - 1
    };
    let end = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Ok(frame)) => {
                let mut records = records.lock().expect("lock");
                let req = &mut records[index].req;
                match frame.into_data() {
                    Ok(data) => req.body.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            for (n, v) in trailers.iter() {
                                req.trailers
                                    .push((n.as_str().to_string(), v.as_bytes().to_vec()));
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => {
                let eof = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof);
                break Err(if eof {
                    BodyFailure::Eof
                } else {
                    BodyFailure::Malformed(e.to_string())
                });
            }
        }
    };
    records.lock().expect("lock")[index].body_end = Some(end);
    Ok(Response::new(Empty::new()))
}

fn hyper_verdict(runtime: &tokio::runtime::Runtime, input: &[u8]) -> HyVerdict {
    let records: Records = Arc::default();
    let output = Arc::new(Mutex::new(Vec::new()));
    let io = MemIo {
        input: input.to_vec(),
        pos: 0,
        output: output.clone(),
    };
    let service_records = records.clone();
    let result = runtime.block_on(async move {
        let service = service_fn(move |request| record(service_records.clone(), request));
        let connection = hyper_http1::Builder::new()
            .half_close(true)
            .serve_connection(io, service);
        tokio::time::timeout(CASE_TIMEOUT, connection).await
    });
    let output = output.lock().expect("lock").clone();
    let records = records.lock().expect("lock").clone();
    let result = match result {
        Ok(result) => result,
        Err(_) => panic!("hyper hung on {}", lit(input)),
    };
    let mut requests = Vec::new();
    for r in records {
        match r.body_end {
            Some(Ok(())) => requests.push(r.req),
            Some(Err(BodyFailure::Eof)) => {
                return HyVerdict {
                    requests,
                    end: End::Incomplete,
                    output,
                }
            }
            Some(Err(BodyFailure::Malformed(why))) => {
                return HyVerdict {
                    requests,
                    end: End::Refused { status: 0, why },
                    output,
                }
            }
            None => {
                let end = match &result {
                    Err(e) if e.is_incomplete_message() => End::Incomplete,
                    other => End::Refused {
                        status: 0,
                        why: format!("body unfinished: {other:?}"),
                    },
                };
                return HyVerdict {
                    requests,
                    end,
                    output,
                };
            }
        }
    }
    let end = match result {
        Ok(()) => End::Stopped,
        Err(e) if e.is_incomplete_message() => End::Incomplete,
        Err(e) => End::Refused {
            status: error_status(&output),
            why: e.to_string(),
        },
    };
    HyVerdict {
        requests,
        end,
        output,
    }
}

/// The status of the error answer hyper wrote (our service only answers
/// 200, hyper itself 100 Continue), or 0.
fn error_status(output: &[u8]) -> u16 {
    let mut at = 0;
    while let Some(i) = find(&output[at..], b"HTTP/1.") {
        let line = &output[at + i..];
        if line.len() >= 12 {
            if let Ok(code) = std::str::from_utf8(&line[9..12])
                .unwrap_or("")
                .parse::<u16>()
            {
                if code >= 400 {
                    return code;
                }
            }
        }
        at += i + 7;
    }
    0
}

// ===== comparing =====

/// Hop-by-hop and internal fields the LB never forwards.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "trailer",
    "proxy-connection",
    "expect",
];

/// Trailer fields the LB drops (`lb::chunked`): they could change how the
/// message was framed or routed, or who sent it.
const BARRED_TRAILERS: [&str; 22] = [
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

/// The LB's documented rewrites of a request's fields, by name.
const NORMALIZATIONS: [(&str, &str); 10] = [
    (
        "websocket",
        "a WebSocket handshake (GET, HTTP/1.1, Connection listing upgrade, Upgrade: websocket) is forwarded with `connection: upgrade` and `upgrade: websocket` of the LB's own",
    ),
    (
        "hop-by-hop",
        "hop-by-hop fields (Connection, Keep-Alive, TE, Upgrade, Trailer, Proxy-Connection) and Expect are not forwarded",
    ),
    (
        "connection-listed",
        "fields named in Connection are not forwarded",
    ),
    (
        "underscore",
        "field names with `_` are not forwarded (with --allow-underscore-headers: only those that read with `-` as a controlled field)",
    ),
    (
        "internal",
        "Rip-Worker-* from the client is not forwarded; what a client claims of who it is or how it came (X-Forwarded-*, X-Real-IP, Forwarded, X-Request-Id, X-Request-Start, …) is replaced by the LB's forwarding fields (here, with no client address: X-Forwarded-Proto and X-Forwarded-Host)",
    ),
    (
        "framing",
        "Content-Length / Transfer-Encoding are written by the LB: one `content-length: N` or `transfer-encoding: chunked`",
    ),
    (
        "absolute-form",
        "an absolute-form target goes out in origin form, its authority as the one Host",
    ),
    (
        "http10-host",
        "an HTTP/1.0 request without Host gets the address the client connected to",
    ),
    (
        "trailers",
        "trailer fields that frame, route or authenticate are dropped",
    ),
    (
        "chunked-reencoded",
        "a chunked body goes out re-encoded: one chunk per piece of data, no extensions",
    ),
];

fn bump(counts: &mut BTreeMap<&'static str, usize>, name: &'static str) {
    *counts.entry(name).or_default() += 1;
}

/// Whether the LB's request means what hyper's does, up to the LB's
/// documented rewrites (counted in `normalized`).
fn same_meaning(
    lb: &LbReq,
    hy: &Req,
    underscores: bool,
    normalized: &mut BTreeMap<&'static str, usize>,
) -> Result<(), String> {
    let l = &lb.req;
    if l.method != hy.method {
        return Err(format!("method: LB {:?}, hyper {:?}", l.method, hy.method));
    }
    if l.target != hy.target {
        return Err(format!("target: LB {:?}, hyper {:?}", l.target, hy.target));
    }
    if l.authority != hy.authority {
        return Err(format!(
            "authority: LB {:?}, hyper {:?}",
            l.authority, hy.authority
        ));
    }
    if l.http10 != hy.http10 {
        return Err(format!("HTTP/1.0: LB {}, hyper {}", l.http10, hy.http10));
    }
    if l.body != hy.body {
        return Err(format!(
            "body: LB {}, hyper {}",
            lit(&l.body),
            lit(&hy.body)
        ));
    }
    let kept: Vec<(String, Vec<u8>)> = hy
        .trailers
        .iter()
        .filter(|(n, _)| {
            !(n.contains('_')
                || BARRED_TRAILERS.contains(&n.as_str())
                || n.starts_with("x-forwarded-")
                || n.starts_with("rip-worker-"))
        })
        .cloned()
        .collect();
    if kept.len() != hy.trailers.len() {
        bump(normalized, "trailers");
    }
    if sorted(&kept) != sorted(&l.trailers) {
        return Err(format!(
            "trailers: LB {:?}, hyper {:?}",
            show_fields(&l.trailers),
            show_fields(&hy.trailers)
        ));
    }

    // The fields the LB should forward, from what hyper read.
    let connection: Vec<String> = hy
        .headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut expected = Vec::new();
    let mut host = false;
    let mut framed = false;
    for (name, value) in &hy.headers {
        let n = name.as_str();
        let dropped = if n == "host" {
            host = true;
            if lb.absolute {
                Some("absolute-form")
            } else {
                None
            }
        } else if n == "content-length" || n == "transfer-encoding" {
            framed = true;
            Some("framing")
        } else if HOP_BY_HOP.contains(&n) {
            Some("hop-by-hop")
        } else if invariants::is_claim(n) || n.starts_with("rip-worker-") {
            Some("internal")
        } else if n.contains('_') && (!underscores || invariants::controlled_when_dashed(n)) {
            Some("underscore")
        } else if connection.iter().any(|t| t == n) {
            Some("connection-listed")
        } else {
            None
        };
        match dropped {
            Some(why) => bump(normalized, why),
            None => expected.push((name.clone(), value.clone())),
        }
    }
    let websocket = hy.method == "GET"
        && !hy.http10
        && connection.iter().any(|t| t == "upgrade")
        && hy
            .headers
            .iter()
            .rev()
            .find(|(n, _)| n == "upgrade")
            .is_some_and(|(_, v)| v.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if websocket {
        expected.push(("connection".to_string(), b"upgrade".to_vec()));
        expected.push(("upgrade".to_string(), b"websocket".to_vec()));
        bump(normalized, "websocket");
    }
    let forwarded_host = if let Some(authority) = &hy.authority {
        expected.push(("host".to_string(), authority.as_bytes().to_vec()));
        authority.as_bytes().to_vec()
    } else if !host {
        bump(normalized, "http10-host");
        expected.push(("host".to_string(), LB_HOST.as_bytes().to_vec()));
        LB_HOST.as_bytes().to_vec()
    } else {
        let hosts = hy.headers.iter().filter(|(n, _)| n == "host");
        hosts
            .map(|(_, v)| v.clone())
            .next_back()
            .unwrap_or_default()
    };
    expected.push(("x-forwarded-proto".to_string(), b"http".to_vec()));
    expected.push(("x-forwarded-host".to_string(), forwarded_host));
    if lb.chunked {
        expected.push(("transfer-encoding".to_string(), b"chunked".to_vec()));
        bump(normalized, "chunked-reencoded");
    } else if framed {
        expected.push((
            "content-length".to_string(),
            hy.body.len().to_string().into_bytes(),
        ));
    }
    if sorted(&expected) != sorted(&l.headers) {
        return Err(format!(
            "fields: LB forwards {:?}, expected from hyper's {:?}",
            show_fields(&l.headers),
            show_fields(&hy.headers)
        ));
    }
    Ok(())
}

/// The forwarded bytes, to hyper: exactly one request, with the meaning
/// the LB gave it.
fn forwarded_check(
    runtime: &tokio::runtime::Runtime,
    lb: &LbReq,
    tally: &mut Tally,
) -> Result<(), String> {
    let hy = hyper_verdict(runtime, &lb.forwarded);
    // hyper refuses these characters in a target (`target-characters`):
    // it cannot re-read the request, which is otherwise well-formed.
    if hy.requests.is_empty()
        && matches!(&hy.end, End::Refused { why, .. } if why == "invalid URI")
        && lb.req.target.bytes().any(|b| b"<>`\"".contains(&b))
    {
        tally.forwarded_unreadable += 1;
        return Ok(());
    }
    tally.forwarded_checked += 1;
    if hy.requests.len() != 1 || hy.end != End::Stopped {
        return Err(format!(
            "hyper reads the forwarded bytes as {} request(s) then {:?}",
            hy.requests.len(),
            hy.end
        ));
    }
    let got = &hy.requests[0];
    let want = Req {
        authority: None,
        http10: false,
        ..lb.req.clone()
    };
    let got = Req {
        headers: sorted(&got.headers),
        trailers: sorted(&got.trailers),
        ..got.clone()
    };
    let want = Req {
        headers: sorted(&want.headers),
        trailers: sorted(&want.trailers),
        ..want
    };
    if got != want {
        return Err(format!(
            "the forwarded bytes mean {got:?} to hyper, the LB meant {want:?}"
        ));
    }
    Ok(())
}

fn sorted(fields: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut fields = fields.to_vec();
    fields.sort();
    fields
}

fn show_fields(fields: &[(String, Vec<u8>)]) -> Vec<String> {
    fields
        .iter()
        .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
        .collect()
}

// ===== disagreements =====

/// Where the LB and hyper part, for the classifier.
#[derive(Debug)]
struct Diff<'a> {
    /// The input from the start of the request they part on.
    at: &'a [u8],
    lb: LbStep<'a>,
    hy: HyStep<'a>,
    /// The request before (on which they agree), as hyper read it.
    prev: Option<&'a Req>,
    /// Both took a request, with different meanings.
    mismatch: Option<String>,
    /// The LB refused where hyper waits for more: whether hyper refuses
    /// too once the input goes on with CR LF CR LF (ending a head or the
    /// trailers).
    hy_refuses_later: Option<bool>,
}

#[derive(Debug)]
enum LbStep<'a> {
    Req(&'a LbReq),
    End(&'a End),
}

#[derive(Debug)]
enum HyStep<'a> {
    Req(&'a Req),
    End(&'a End),
}

impl Diff<'_> {
    /// The LB refused here for one of `whys`.
    fn lb_refused(&self, whys: &[&str]) -> bool {
        matches!(self.lb, LbStep::End(End::Refused { why, .. }) if whys.contains(&why.as_str()))
    }

    fn hy_refused(&self) -> bool {
        matches!(self.hy, HyStep::End(e) if e.refused())
    }

    /// The LB took the request, or its head and waits for the body.
    fn lb_took(&self) -> bool {
        matches!(self.lb, LbStep::Req(_) | LbStep::End(End::Incomplete))
    }

    /// The head of the request they part on (leading blank lines skipped).
    fn head(&self) -> &[u8] {
        let at = self.at;
        let start = at
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(at.len());
        let b = &at[start..];
        for i in 0..b.len() {
            if b[i] == b'\n' {
                if b.get(i + 1) == Some(&b'\n') {
                    return &b[..i + 2];
                }
                if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                    return &b[..i + 3];
                }
            }
        }
        b
    }

    /// The head with the blank lines before it.
    fn head_and_before(&self) -> &[u8] {
        let head = self.head();
        let offset = head.as_ptr() as usize - self.at.as_ptr() as usize + head.len();
        &self.at[..offset]
    }

    /// What follows the head.
    fn after_head(&self) -> &[u8] {
        &self.at[self.head_and_before().len()..]
    }

    /// The head's fields, read leniently (LF or CR LF, trimmed): lower-case
    /// name, value.
    fn fields(&self) -> Vec<(String, Vec<u8>)> {
        self.head()
            .split(|&b| b == b'\n')
            .skip(1)
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                let name = String::from_utf8_lossy(line[..colon].trim_ascii()).to_ascii_lowercase();
                Some((name, line[colon + 1..].trim_ascii().to_vec()))
            })
            .collect()
    }

    fn field(&self, name: &str) -> Vec<Vec<u8>> {
        self.fields()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// The request line's target and version.
    fn request_line(&self) -> (Vec<u8>, Vec<u8>) {
        let (_, target, version) = self.request_line_parts();
        (target, version)
    }

    fn request_line_parts(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let line = self.head().split(|&b| b == b'\n').next().unwrap_or(b"");
        let mut parts = line.split(|&b| b == b' ');
        let method = parts.next().unwrap_or(b"").to_vec();
        let target = parts.next().unwrap_or(b"").to_vec();
        let version = parts.next().unwrap_or(b"").trim_ascii().to_vec();
        (method, target, version)
    }
}

fn bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The chunk-size lines of a chunked body (without their CR LF), found
/// independently of the LB's decoder: each line up to CR LF, the data it
/// announces skipped, up to the last chunk or what cannot be followed.
fn chunk_lines(body: &[u8]) -> Vec<&[u8]> {
    chunk_walk(body).0
}

/// [`chunk_lines`], and where the trailer section starts (after the last
/// chunk's line), if it was reached.
fn chunk_walk(body: &[u8]) -> (Vec<&[u8]>, Option<usize>) {
    let mut lines = Vec::new();
    let mut i = 0;
    let mut trailers = None;
    while i < body.len() {
        let Some(end) = find(&body[i..], b"\r\n") else {
            lines.push(&body[i..]);
            break;
        };
        let line = &body[i..i + end];
        lines.push(line);
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = std::str::from_utf8(&line[..digits])
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        match size {
            Some(0) => {
                trailers = Some(i + end + 2);
                break;
            }
            None => break,
            Some(n) => i = i.saturating_add(end + 4).saturating_add(n as usize),
        }
    }
    (lines, trailers)
}

/// RFC 9112 §7.1.1: `chunk-size *( BWS ";" BWS name [ BWS "=" BWS value ] )`,
/// a value a token or a quoted-string.
fn rfc_chunk_line(line: &[u8]) -> bool {
    let ws = |r: &[u8]| -> usize { r.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    let tchars = |r: &[u8]| -> usize {
        r.iter()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            .count()
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return false;
    }
    let mut r = &line[digits..];
    while !r.is_empty() {
        r = &r[ws(r)..];
        let Some((b';', rest)) = r.split_first() else {
            return false;
        };
        r = &rest[ws(rest)..];
        let n = tchars(r);
        if n == 0 {
            return false;
        }
        r = &r[n..];
        let after = &r[ws(r)..];
        if let Some((b'=', rest)) = after.split_first() {
            r = &rest[ws(rest)..];
            if let Some((b'"', mut q)) = r.split_first() {
                loop {
                    match q.split_first() {
                        Some((b'"', rest)) => {
                            r = rest;
                            break;
                        }
                        Some((b'\\', rest)) => match rest.split_first() {
                            Some((&c, rest)) if c == b'\t' || c >= 0x20 && c != 0x7f => q = rest,
                            _ => return false,
                        },
                        Some((&c, rest)) if c == b'\t' || c >= 0x20 && c != 0x7f => q = rest,
                        _ => return false,
                    }
                }
            } else {
                let n = tchars(r);
                if n == 0 {
                    return false;
                }
                r = &r[n..];
            }
        }
    }
    true
}

/// RFC 3986 §3.2.2 and RFC 9110 §7.2: `uri-host [ ":" port ]`, possibly
/// empty.
fn rfc_host(value: &[u8]) -> bool {
    let sub_or_unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
    let port = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty() || !literal.iter().all(|&b| sub_or_unreserved(b) || b == b':') {
            return false;
        }
        &value[end + 1..]
    } else {
        let colon = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        if !value[..colon].iter().all(|&b| sub_or_unreserved(b)) {
            return false;
        }
        &value[colon..]
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// RFC 9112 §3.2: origin-form, `*` for OPTIONS, or absolute-form http(s)
/// with a valid authority and no userinfo.
fn rfc_target(method: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    if target == b"*" {
        return method == b"OPTIONS";
    }
    let lower = target.to_ascii_lowercase();
    let rest = if lower.starts_with(b"http://") {
        &target[7..]
    } else if lower.starts_with(b"https://") {
        &target[8..]
    } else {
        return false;
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    !authority.is_empty() && !authority.contains(&b'@') && rfc_host(authority)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The LB refuses (or reads less) where hyper accepts: by design.
    Stricter,
    /// The LB accepts what hyper refuses, and what it forwards is
    /// well-formed and unambiguous.
    Lenient,
    /// Tolerated here so that the oracle runs, but reported: the LB should
    /// change (then the entry's example stops disagreeing, and
    /// `every_documented_difference_has_a_live_example` says to remove it).
    /// None is open now: the variant stays for the next one found.
    #[allow(dead_code)]
    SuspectedBug,
}

/// One class of intended difference.
struct Difference {
    name: &'static str,
    kind: Kind,
    /// A request that shows it (it must classify as this class).
    example: &'static [u8],
    lb: &'static str,
    hyper: &'static str,
    why: &'static str,
    matches: fn(&Diff) -> bool,
}

/// Every intended difference between the LB and hyper. A disagreement that
/// none of these matches is a failure (a bug, or a difference to document).
const DIFFERENCES: &[Difference] = &[
    Difference {
        name: "bare-lf-in-head",
        kind: Kind::Stricter,
        example: b"GET / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 5\r\n\r\nhello",
        lb: "400: every line of a head must end in CR LF",
        hyper: "takes a bare LF as a line end (httparse)",
        why: "parsers behind or in front of the LB differ on bare LF; one field to one is two to another (`Dummy: x\\nContent-Length: 5`)",
        matches: |d| {
            d.lb_refused(&["a line end other than CR LF"]) && bare_lf(d.head_and_before())
        },
    },
    Difference {
        name: "bare-lf-in-trailers",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n",
        lb: "400: trailer lines must end in CR LF",
        hyper: "reads a trailer line up to the next CR, and its fields with httparse (LF ends a field)",
        why: "`0\\r\\n\\n` ends the body early for some parsers and not others: what follows is a second request to one of them",
        matches: |d| {
            d.lb_refused(&["bare LF in the trailers", "bad trailer line"]) && bare_lf(d.after_head())
        },
    },
    Difference {
        name: "chunk-extension-grammar",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        lb: "400: a chunk line is `size [BWS ; name [= token|quoted-string]]...` exactly (RFC 9112 §7.1.1)",
        hyper: "skips any bytes but LF after `;` or the size's trailing whitespace (`5;`, `5 \\r\\n`, `5;a b`, `5;\\0`)",
        why: "lenient chunk lines are read differently by different parsers; the LB re-encodes chunks without extensions anyway",
        matches: |d| {
            d.lb_refused(&["bad chunk extension", "chunk extension too long"])
                && chunk_lines(d.after_head())
                    .iter()
                    .any(|l| !rfc_chunk_line(l) || l.len() > 4096)
        },
    },
    Difference {
        name: "chunk-size-digits",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        lb: "400: at most 16 hex digits in a chunk size (leading zeros count)",
        hyper: "any number of digits while the value fits in a u64 (leading zeros)",
        why: "parsers truncate or overflow long sizes differently; 16 digits fill a u64",
        matches: |d| {
            d.lb_refused(&["chunk size too large"])
                && chunk_lines(d.after_head())
                    .iter()
                    .any(|l| l.iter().take_while(|b| b.is_ascii_hexdigit()).count() > MAX_SIZE_DIGITS)
        },
    },
    Difference {
        name: "no-host",
        kind: Kind::Stricter,
        example: b"GET / HTTP/1.1\r\n\r\n",
        lb: "400: an HTTP/1.1 request without Host",
        hyper: "accepts it",
        why: "RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request lacking Host",
        matches: |d| {
            d.lb_refused(&["no Host"])
                && d.field("host").is_empty()
                && d.request_line().1 == b"HTTP/1.1"
        },
    },
    Difference {
        name: "more-than-one-host",
        kind: Kind::Stricter,
        example: b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        lb: "400",
        hyper: "accepts both fields",
        why: "RFC 9112 §3.2: more than one Host is 400; which one routes would be up to each parser",
        matches: |d| d.lb_refused(&["more than one Host"]) && d.field("host").len() > 1,
    },
    Difference {
        name: "bad-host",
        kind: Kind::Stricter,
        example: b"GET / HTTP/1.1\r\nHost: a b@c/d\r\n\r\n",
        lb: "400: Host must be `uri-host [: port]`",
        hyper: "does not look at Host",
        why: "RFC 9112 §3.2: an invalid Host is 400; an app building URLs from it must not get `a/b`, `u@h` or spaces",
        matches: |d| d.lb_refused(&["bad Host"]) && d.field("host").iter().any(|h| !rfc_host(h)),
    },
    Difference {
        name: "fragment-in-target",
        kind: Kind::Stricter,
        example: b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "400",
        hyper: "accepts it (the URI drops the fragment)",
        why: "a fragment is never sent (RFC 9112 §3.2); what a router makes of `#` differs",
        matches: |d| d.lb_refused(&["fragment in the request target"]) && d.request_line().0.contains(&b'#'),
    },
    Difference {
        name: "target-form",
        kind: Kind::Stricter,
        example: b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "400: only origin-form, absolute-form http(s) with a valid authority and no userinfo, or `*` for OPTIONS",
        hyper: "takes any target `http::Uri` parses (authority-form, `*` for any method, userinfo, other schemes)",
        why: "RFC 9112 §3.2: other forms are for CONNECT (refused) or OPTIONS; parsers disagree on what the rest mean",
        matches: |d| {
            let (method, target, _) = d.request_line_parts();
            d.lb_refused(&[
                "bad request target",
                "'*' target for a method other than OPTIONS",
                "bad authority in the request target",
            ]) && !rfc_target(&method, &target)
        },
    },
    Difference {
        name: "content-length-and-transfer-encoding",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        lb: "400",
        hyper: "reads the body as chunked (ignoring Content-Length, even an invalid one) and closes after",
        why: "CL.TE / TE.CL smuggling: RFC 9112 §6.1 lets a server refuse; a proxy that forwards both is the classic hole",
        matches: |d| {
            !d.field("transfer-encoding").is_empty()
                && !d.field("content-length").is_empty()
                && d.lb_refused(&["both Content-Length and Transfer-Encoding", "bad Content-Length"])
        },
    },
    Difference {
        name: "transfer-coding-not-exactly-chunked",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        lb: "501: Transfer-Encoding must be exactly one `chunked`",
        hyper: "accepts any codings whose last is chunked, in one or several fields",
        why: "the LB would have to decode other codings to frame the body; TE.TE obfuscations live in coding lists",
        matches: |d| {
            let codings = d.field("transfer-encoding");
            d.lb_refused(&["transfer coding"])
                && !codings.is_empty()
                && !(codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"))
        },
    },
    Difference {
        name: "connect",
        kind: Kind::Stricter,
        example: b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        lb: "501",
        hyper: "accepts it (as an upgrade)",
        why: "the LB is no tunnel",
        matches: |d| d.lb_refused(&["CONNECT"]) && d.request_line_parts().0 == b"CONNECT",
    },
    Difference {
        name: "content-length-digits",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\nhello",
        lb: "400: at most 19 digits in Content-Length",
        hyper: "any number of digits while the value fits in a u64",
        why: "no body is that long; long digit strings overflow differently",
        matches: |d| {
            d.lb_refused(&["bad Content-Length"])
                && d.field("content-length").iter().any(|v| {
                    v.split(|&b| b == b',')
                        .any(|p| p.trim_ascii().len() > 19 && p.trim_ascii().iter().all(u8::is_ascii_digit))
                })
        },
    },
    Difference {
        name: "head-larger-than-32k",
        kind: Kind::Stricter,
        example: b"",
        lb: "431: a head over 31.5 KiB or 96 fields (`http1::MAX_HEAD_IN`, `MAX_FIELDS_IN`)",
        hyper: "accepts heads up to its buffer (~400 KB)",
        why: "the LB buffers heads per client, and leaves room for the fields it adds so that what it forwards stays within 32 KiB and 100 fields (hyper's own defaults)",
        matches: |d| d.lb_refused(&["too large"]),
    },
    Difference {
        name: "content-length-list",
        kind: Kind::Lenient,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        lb: "accepts a list of identical lengths, forwards one `content-length: 5`",
        hyper: "400: a Content-Length value must be digits only",
        why: "RFC 9110 §8.6 allows a recipient to take `5, 5` as 5; the app gets one clean length",
        matches: |d| {
            d.lb_took()
                && d.hy_refused()
                && d.field("content-length").iter().any(|v| v.contains(&b','))
        },
    },
    Difference {
        name: "target-characters",
        kind: Kind::Lenient,
        example: b"GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "forwards any target bytes httparse takes (`<`, `>`, `` ` ``, `\"`, `{`, `}`, `\\`, `^`, `|`, UTF-8)",
        hyper: "400 for `<`, `>` and `` ` `` in the path and `\"`, `<`, `>` in the query (`http::Uri`); takes the others",
        why: "none of these is allowed in a request target (RFC 3986), but they do not frame anything: the app gets them verbatim",
        matches: |d| {
            d.lb_took()
                && matches!(d.hy, HyStep::End(End::Refused { why, .. }) if why == "invalid URI")
                && d.request_line().0.iter().any(|b| b"<>`\"".contains(b))
        },
    },
    Difference {
        name: "options-absolute-form-without-path",
        kind: Kind::Stricter,
        example: b"OPTIONS http://a HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "forwards `OPTIONS * HTTP/1.1` with `host: a`",
        hyper: "reads the target as `/`",
        why: "RFC 9112 §3.2.4: an OPTIONS in absolute form with an empty path is the server-wide `*` when it reaches the origin",
        matches: |d| {
            matches!((&d.lb, &d.hy), (LbStep::Req(lb), HyStep::Req(hy))
                if hy.method == "OPTIONS" && hy.target == "/" && lb.req.target == "*")
        },
    },
    Difference {
        name: "percent-encoded-authority",
        kind: Kind::Lenient,
        example: b"GET http://a%41b/ HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "takes `%` in an absolute-form authority (a reg-name may be percent-encoded) and forwards it as Host",
        hyper: "400 (`http::Uri` refuses `%` in an authority)",
        why: "RFC 3986 §3.2.2 allows pct-encoded in reg-name; the forwarded head (`host: a%41b`) is well-formed",
        matches: |d| {
            let (_, target, _) = d.request_line_parts();
            let authority: Vec<u8> = target
                .splitn(2, |&b| b == b':')
                .nth(1)
                .unwrap_or(b"")
                .iter()
                .skip(2)
                .take_while(|&&b| b != b'/' && b != b'?')
                .copied()
                .collect();
            d.lb_took()
                && matches!(d.hy, HyStep::End(End::Refused { why, .. }) if why == "invalid URI")
                && authority.contains(&b'%')
        },
    },
    Difference {
        name: "connection-obs-text",
        kind: Kind::Stricter,
        example: b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close, \xe8\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        lb: "reads the tokens of a Connection field with bytes above 0x7f (`close` closes, `keep-alive` keeps an HTTP/1.0 connection)",
        hyper: "ignores the whole field (it is not a `str`): keeps an HTTP/1.1 connection open, closes an HTTP/1.0 one",
        why: "the LB honours the `close` the client sent (it then reads nothing more); the junk token itself means nothing",
        matches: |d| {
            d.prev.is_some_and(|p| {
                p.headers
                    .iter()
                    .any(|(n, v)| n == "connection" && v.iter().any(|&b| b >= 0x80))
            }) && (matches!(d.lb, LbStep::End(End::Stopped))
                != matches!(d.hy, HyStep::End(End::Stopped)))
        },
    },
    Difference {
        name: "lb-refuses-sooner",
        kind: Kind::Stricter,
        example: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\tx\r\n",
        lb: "400 as soon as a head or trailer line is wrong",
        hyper: "waits for the end of the head (past its first 8 KiB read) or of the trailers, then refuses",
        why: "the same verdict, sooner: the LB re-parses the whole buffer; hyper only once the end of the head has arrived",
        matches: |d| d.hy_refuses_later == Some(true),
    },
];

/// The named class of a disagreement, if it is an intended one.
fn classify(diff: &Diff) -> Option<&'static Difference> {
    DIFFERENCES.iter().find(|d| (d.matches)(diff))
}

// ===== running cases =====

#[derive(Debug, Clone)]
struct Case {
    name: String,
    bytes: Vec<u8>,
    underscores: bool,
}

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    agreements: BTreeMap<&'static str, usize>,
    differences: BTreeMap<&'static str, usize>,
    normalized: BTreeMap<&'static str, usize>,
    /// Both refused, with these statuses (LB, hyper).
    refusal_statuses: BTreeMap<(u16, u16), usize>,
    forwarded_checked: usize,
    /// Forwarded requests hyper cannot re-read (their target).
    forwarded_unreadable: usize,
    failures: Vec<String>,
}

/// Runs one case; a failure is recorded in `tally`.
fn run_case(runtime: &tokio::runtime::Runtime, case: &Case, tally: &mut Tally) {
    tally.cases += 1;
    match judge(runtime, case, &mut tally.normalized) {
        Judgement::Agree(what, statuses) => {
            bump(&mut tally.agreements, what);
            if let Some(s) = statuses {
                *tally.refusal_statuses.entry(s).or_default() += 1;
            }
            if let Err(why) = check_forwarded(runtime, case, tally) {
                tally.failures.push(why);
            }
        }
        Judgement::Intended(d, _) => {
            bump(&mut tally.differences, d.name);
            if let Err(why) = check_forwarded(runtime, case, tally) {
                tally.failures.push(why);
            }
        }
        Judgement::Unexplained(report) => tally.failures.push(report),
    }
}

fn check_forwarded(
    runtime: &tokio::runtime::Runtime,
    case: &Case,
    tally: &mut Tally,
) -> Result<(), String> {
    let lb = lb_verdict(&case.bytes, case.underscores);
    for (i, r) in lb.requests.iter().enumerate() {
        if let Some(why) = rfc_violation(&case.bytes, r) {
            return Err(format!(
                "SUSPECTED LB BUG in {} (request {i}): the LB took a request the RFC grammar refuses: {why}\n  input: {}",
                case.name,
                lit(&case.bytes)
            ));
        }
        forwarded_check(runtime, r, tally).map_err(|why| {
            format!(
                "SUSPECTED LB BUG in {} (request {i}): {why}\n  input: {}\n  forwarded: {}",
                case.name,
                lit(&case.bytes),
                lit(&r.forwarded)
            )
        })?;
    }
    Ok(())
}

/// What, if anything, in a request the LB took breaks the grammar it
/// claims to enforce (checked independently of its code).
fn rfc_violation(input: &[u8], r: &LbReq) -> Option<String> {
    let head = &input[r.start..r.start + r.head_len];
    let body = &input[r.start + r.head_len..r.start + r.used];
    if head.windows(2).any(|w| (w[1] == b'\n') != (w[0] == b'\r')) || head.first() == Some(&b'\n') {
        return Some("a line end other than CR LF in the head".into());
    }
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut fields);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return Some("httparse does not read the head alone".into());
    }
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("");
    if target.contains('#') || !rfc_target(method.as_bytes(), target.as_bytes()) {
        return Some(format!("target {target:?}"));
    }
    let hosts: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("host"))
        .map(|f| f.value)
        .collect();
    if hosts.len() > 1 || hosts.iter().any(|h| !rfc_host(h)) {
        return Some(format!(
            "Host {:?}",
            hosts.iter().map(|h| lit(h)).collect::<Vec<_>>()
        ));
    }
    if hosts.is_empty() && request.version == Some(1) {
        return Some("HTTP/1.1 without Host".into());
    }
    if r.chunked {
        let (lines, trailers) = chunk_walk(body);
        for line in lines {
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if !rfc_chunk_line(line) || digits > MAX_SIZE_DIGITS {
                return Some(format!("chunk line {}", lit(line)));
            }
        }
        match trailers {
            None => return Some("no last chunk where the LB ended the body".into()),
            Some(t) if t > body.len() || bare_lf(&body[t..]) || !body.ends_with(b"\r\n") => {
                return Some("a trailer section not in CR LF lines".into())
            }
            Some(_) => {}
        }
    }
    None
}

enum Judgement {
    /// What they agreed on; both refused with these statuses.
    Agree(&'static str, Option<(u16, u16)>),
    /// An intended difference, on the request of this index.
    Intended(&'static Difference, usize),
    Unexplained(String),
}

fn judge(
    runtime: &tokio::runtime::Runtime,
    case: &Case,
    normalized: &mut BTreeMap<&'static str, usize>,
) -> Judgement {
    let input = &case.bytes;
    let lb = lb_verdict(input, case.underscores);
    let hy = hyper_verdict(runtime, input);
    let common = lb.requests.len().min(hy.requests.len());
    let mut part = None;
    for i in 0..common {
        if let Err(why) = same_meaning(
            &lb.requests[i],
            &hy.requests[i],
            case.underscores,
            normalized,
        ) {
            part = Some((i, Some(why)));
            break;
        }
    }
    let part = match part {
        Some(p) => p,
        None => {
            let same_end = match (&lb.end, &hy.end) {
                (End::Refused { .. }, End::Refused { .. }) => true,
                (a, b) => a == b,
            };
            if lb.requests.len() == hy.requests.len() && same_end {
                let what = match &lb.end {
                    End::Stopped if lb.requests.is_empty() => "nothing to read",
                    End::Stopped => "same requests",
                    End::Incomplete => "same requests, then the input ends mid-request",
                    End::Refused { .. } if lb.requests.is_empty() => "both refuse",
                    End::Refused { .. } => "same requests, then both refuse",
                };
                let statuses = match (&lb.end, &hy.end) {
                    (End::Refused { status: a, .. }, End::Refused { status: b, .. }) => {
                        Some((*a, *b))
                    }
                    _ => None,
                };
                return Judgement::Agree(what, statuses);
            }
            (common, None)
        }
    };
    let (i, mismatch) = part;
    let at = lb
        .requests
        .get(i)
        .map(|r| r.start)
        .unwrap_or(lb.end_at)
        .min(input.len());
    let diff = Diff {
        at: &input[at..],
        lb: match lb.requests.get(i) {
            Some(r) => LbStep::Req(r),
            None => LbStep::End(&lb.end),
        },
        hy: match hy.requests.get(i) {
            Some(r) => HyStep::Req(r),
            None => HyStep::End(&hy.end),
        },
        prev: i.checked_sub(1).and_then(|p| hy.requests.get(p)),
        mismatch,
        hy_refuses_later: None,
    };
    let mut diff = diff;
    if matches!(diff.lb, LbStep::End(End::Refused { .. }))
        && matches!(diff.hy, HyStep::End(End::Incomplete))
    {
        let mut completed = input.to_vec();
        completed.extend_from_slice(b"\r\n\r\n");
        let later = hyper_verdict(runtime, &completed);
        diff.hy_refuses_later = Some(later.requests.len() == i && later.end.refused());
    }
    if let Some(d) = classify(&diff) {
        return Judgement::Intended(d, i);
    }
    Judgement::Unexplained(report(case, &lb, &hy, &diff))
}

fn report(case: &Case, lb: &LbVerdict, hy: &HyVerdict, diff: &Diff) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "UNEXPLAINED DISAGREEMENT in {}", case.name);
    let _ = writeln!(s, "  input: {}", lit(&case.bytes));
    let _ = writeln!(
        s,
        "  parting at byte {}: {}",
        case.bytes.len() - diff.at.len(),
        lit(diff.at)
    );
    if let Some(m) = &diff.mismatch {
        let _ = writeln!(s, "  meaning differs: {m}");
    }
    let lb_step = match &diff.lb {
        LbStep::Req(r) => format!(
            "takes {} {} ({} bytes, then {})",
            r.req.method,
            r.req.target,
            r.used,
            if r.keep_alive {
                "keeps the connection"
            } else {
                "closes"
            }
        ),
        LbStep::End(end) => format!("{end:?}"),
    };
    let hy_step = match &diff.hy {
        HyStep::Req(r) => format!("takes {} {}", r.method, r.target),
        HyStep::End(end) => format!("{end:?}"),
    };
    let _ = writeln!(s, "  there the LB {lb_step}; hyper {hy_step}");
    let _ = writeln!(
        s,
        "  LB:    {} request(s) {:?}, then {:?}{}",
        lb.requests.len(),
        lb.requests
            .iter()
            .map(|r| format!("{} {} ({} bytes)", r.req.method, r.req.target, r.used))
            .collect::<Vec<_>>(),
        lb.end,
        if matches!(diff.lb, LbStep::End(End::Stopped)) && !lb.requests.is_empty() {
            " (closes after the last)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  hyper: {} request(s) {:?}, then {:?}; wrote {}",
        hy.requests.len(),
        hy.requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>(),
        hy.end,
        lit(&hy.output[..hy.output.len().min(200)])
    );
    s
}

/// A Rust byte-string literal for `bytes`.
fn lit(bytes: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\0' => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
    s
}

// ===== the cases =====

/// Seeds: valid requests of every framing, pipelines, and the classic
/// smuggling shapes.
const SEEDS: &[(&str, &[u8])] = &[
    ("get", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("get-query", b"GET /p/q?x=1&y=%20 HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n"),
    ("head", b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("options-star", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("post-length", b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"),
    ("post-length-0", b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
    ("put-expect", b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
    ("chunked", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    ("chunked-ext", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c;d=\"q \\\" r\"\r\nhello\r\n0\r\n\r\n"),
    ("chunked-trailers", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nServer-Timing: db;dur=5\r\nHost: evil\r\nContent-Length: 9\r\n\r\n"),
    ("chunked-hex", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n00a\r\n0123456789\r\n0\r\n\r\n"),
    ("chunked-bws", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n5\t; b = c\r\nworld\r\n0\r\n\r\n"),
    ("pipeline-3", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiPOST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nyo\r\n0\r\n\r\n"),
    ("pipeline-close", b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("pipeline-blank-lines", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n\r\n"),
    ("leading-crlf", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("http10", b"GET /old HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n"),
    ("http10-host", b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n"),
    ("http10-keep-alive", b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"),
    ("http10-keep-alive-then-close", b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"),
    ("http10-body", b"POST /p HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody"),
    ("http10-expect", b"PUT /p HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
    ("http10-chunked", b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("absolute", b"GET http://b.example:81/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-no-path", b"GET HTTP://b?q HTTP/1.1\r\nHost: b\r\n\r\n"),
    ("absolute-https-10", b"GET https://b HTTP/1.0\r\n\r\n"),
    ("absolute-userinfo", b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-ftp", b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("authority-form", b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("relative", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("star-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n"),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
    ("bad-host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ("host-ipv6", b"GET / HTTP/1.1\r\nHost: [::1]:3000\r\n\r\n"),
    ("host-empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    ("cl-te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
    ("te-cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-space-colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("te-tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
    ("te-xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-chunked-identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("te-obs-fold", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("te-underscore", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
    ("cl-underscore", b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nhello"),
    ("cl-twice-same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"),
    ("cl-twice-differ", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
    ("cl-plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
    ("cl-hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
    ("cl-space-inside", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nhello"),
    ("cl-zeros", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\nhello"),
    ("cl-huge", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\nhello"),
    ("cl-short-body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello"),
    ("bare-lf-head", b"GET / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"),
    ("bare-lf-all", b"GET / HTTP/1.1\nHost: a\n\n"),
    ("bare-lf-leading", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
    ("bare-lf-chunk-line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
    ("bare-lf-chunk-ext", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n"),
    ("bare-lf-chunk-data", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
    ("bare-lf-trailer-end", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nGET /slow HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("bare-lf-trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("chunk-semicolon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n"),
    ("chunk-space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
    ("chunk-junk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b c\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-nul", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00\r\nhello\r\n0\r\n\r\n"),
    ("chunk-0x", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-negative", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-16-digits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("chunk-17-digits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("chunk-overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n"),
    ("chunk-long-data", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n"),
    ("chunk-unterminated", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
    ("trailer-obs-fold", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n"),
    ("underscores", b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: v\r\nX_Forwarded_For: 6.6.6.6\r\nrip_worker_busy: 1\r\n\r\n"),
    ("hop-by-hop", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nRip-Worker-Busy: 1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Kept: k\r\n\r\n"),
    ("connection-lists-host", b"POST / HTTP/1.1\r\nHost: a\r\nConnection: host, content-length, transfer-encoding\r\nContent-Length: 2\r\n\r\nhi"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
    ("header-no-colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
    ("header-obs-text", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xc3\xa9 \xff\r\n\r\n"),
    ("header-nul", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"),
    ("target-utf8", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("target-braces", b"GET /a{b}|c\"d^e`f\\g HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("two-spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("lower-method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("custom-method", b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    ("http09", b"GET /\r\n\r\n"),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("upgrade", b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"),
    ("options-absolute", b"OPTIONS http://a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-ipv6", b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-percent", b"GET http://a%41b/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-empty-port", b"GET http://a:/x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-bad-port", b"GET http://a:8x/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-post", b"POST https://b.example/p?q HTTP/1.1\r\nHost: b.example\r\nContent-Length: 3\r\n\r\nabc"),
    ("double-slash", b"GET //evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("chunked-last-ext", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0;done=\"yes\"\r\n\r\n"),
    ("chunked-large-piece", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n1\r\n!\r\n0\r\n\r\n"),
    ("chunked-pipelined-small", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n1;x\r\nc\r\n0\r\n\r\nPOST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz"),
    ("chunked-data-crlf", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n0\r\n\r\nGE\r\n0\r\n\r\n"),
    ("trailer-underscore", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX_T: 1\r\nX-Forwarded-For: 1.2.3.4\r\nRip-Worker-Busy: 1\r\nX-Ok: 2\r\n\r\n"),
    ("get-with-body", b"GET /g HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /n HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("head-with-body", b"HEAD /h HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"),
    ("expect-no-body", b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"),
    ("cl-whitespace", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:   5  \r\n\r\nhello"),
    ("te-upper", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"),
    ("te-leading-comma", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n"),
    ("te-trailing-comma", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n"),
    ("te-empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
    ("host-upper-port", b"GET / HTTP/1.1\r\nHost: A.EXAMPLE:65536\r\n\r\n"),
    ("host-port-only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n"),
    ("host-zone", b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]:1\r\n\r\n"),
    ("forwarding-fields", b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"),
    ("rip-worker-bare", b"GET / HTTP/1.1\r\nHost: a\r\nrip-worker-: x\r\nRip-Worker-Recycle: 1\r\n\r\n"),
    ("connection-obs-text", b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close, \xe8ost\r\n\r\n"),
    ("connection-obs-text-10", b"GET /1 HTTP/1.0\r\nConnection: keep-alive, \xe8\r\n\r\n"),
    ("connection-close-keep-alive-11", b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("http10-keep-alive-upper", b"GET /1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    ("partial-head", b"GET / HTTP/1.1\r\nHost: a\r\n"),
    ("empty", b""),
];

/// Case `bytes` of a corpus file: a string (each char one byte) or a list
/// of them, sent back to back.
fn corpus_bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    let piece = |s: &str| -> Option<Vec<u8>> {
        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
    };
    match value {
        serde_json::Value::String(s) => piece(s),
        serde_json::Value::Array(items) => {
            let mut bytes = Vec::new();
            for item in items {
                bytes.extend(piece(item.as_str()?)?);
            }
            Some(bytes)
        }
        _ => None,
    }
}

/// The request cases of `tests/corpus/` (every `*.json` under it with a
/// `cases` list; response cases are skipped).
fn corpus_cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        println!(
            "note: no corpus at {} — corpus cases skipped",
            root.display()
        );
    }
    let mut cases = Vec::new();
    let mut unmodelled = 0;
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                println!("note: {} unreadable ({e}), skipped", file.display());
                continue;
            }
        };
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(json) => json,
            Err(e) => {
                println!("note: {} is not JSON ({e}), skipped", file.display());
                continue;
            }
        };
        let Some(list) = json.get("cases").and_then(|c| c.as_array()) else {
            continue;
        };
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (i, item) in list.iter().enumerate() {
            if item
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("request")
                != "request"
            {
                continue;
            }
            let Some(bytes) = item.get("bytes").and_then(corpus_bytes) else {
                println!("note: {rel} case {i} has no readable bytes, skipped");
                continue;
            };
            let name = item
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("#{i}"), str::to_string);
            let flags: Vec<&str> = item
                .get("flags")
                .and_then(|f| f.as_array())
                .map(|f| f.iter().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            if flags.iter().any(|f| f.starts_with("--max-body")) {
                unmodelled += 1;
            }
            cases.push(Case {
                name: format!("corpus {rel} {name}"),
                bytes,
                underscores: flags.contains(&"--allow-underscore-headers"),
            });
        }
    }
    if unmodelled > 0 {
        println!(
            "note: {unmodelled} corpus case(s) ask for --max-body, which is not modelled (hyper has no limit): run without it"
        );
    }
    cases
}

/// xorshift64*: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Lines a mutation may insert: the fields that frame, route or keep a
/// connection, and chunk lines.
const LINES: &[&[u8]] = &[
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Host: b\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b"Trailer: X\r\n",
    b"X_Forwarded_For: 1.2.3.4\r\n",
    b"\r\n",
    b"0\r\n",
    b"5\r\nhello\r\n",
    b"X: y\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
];

/// Bytes that matter to HTTP/1 framing.
const INTERESTING: &[u8] = b"\r\n \t\0;,_:=\"\\-0aAfF9#/?@";

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = [1, 1, 1, 1, 1, 1, 2, 2, 2, 3][rng.below(10)];
    for _ in 0..rounds {
        let n = b.len();
        match rng.below(11) {
            // A byte flipped or replaced.
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // A framing byte inserted.
            2 | 3 => {
                let i = rng.below(n + 1);
                b.insert(i, b"\r\n \t\0;,_"[rng.below(8)]);
            }
            // A framing byte deleted.
            4 => {
                let at: Vec<usize> = (0..n).filter(|&i| b"\r\n \t;,_:".contains(&b[i])).collect();
                if !at.is_empty() {
                    b.remove(at[rng.below(at.len())]);
                }
            }
            // A line duplicated, or two swapped.
            5 | 6 => {
                let mut lines: Vec<Vec<u8>> = b
                    .split_inclusive(|&c| c == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.len() > 1 {
                    let i = rng.below(lines.len());
                    if rng.below(2) == 0 {
                        let line = lines[i].clone();
                        lines.insert(i, line);
                    } else {
                        let j = rng.below(lines.len());
                        lines.swap(i, j);
                    }
                    b = lines.concat();
                }
            }
            // A header name's case changed.
            7 => {
                let mut lines: Vec<Vec<u8>> = b
                    .split_inclusive(|&c| c == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                let named: Vec<usize> = (1..lines.len())
                    .filter(|&i| lines[i].contains(&b':'))
                    .collect();
                if !named.is_empty() {
                    let line = &mut lines[named[rng.below(named.len())]];
                    let colon = line.iter().position(|&c| c == b':').unwrap_or(0);
                    let upper = rng.below(3);
                    for c in &mut line[..colon] {
                        *c = match upper {
                            0 => c.to_ascii_uppercase(),
                            1 => c.to_ascii_lowercase(),
                            _ if rng.below(2) == 0 => c.to_ascii_uppercase(),
                            _ => c.to_ascii_lowercase(),
                        };
                    }
                    b = lines.concat();
                }
            }
            // A framing line inserted at a line start.
            8 | 9 => {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain((0..n).filter(|&i| b[i] == b'\n').map(|i| i + 1))
                    .collect();
                let at = starts[rng.below(starts.len())];
                let line = LINES[rng.below(LINES.len())];
                b.splice(at..at, line.iter().copied());
            }
            // Cut short.
            _ if n > 0 => b.truncate(rng.below(n)),
            _ => {}
        }
    }
    b
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

fn seed_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, bytes) in SEEDS {
        cases.push(Case {
            name: format!("seed {name}"),
            bytes: bytes.to_vec(),
            underscores: false,
        });
        // Followed by one more request: whether each kept the connection.
        let mut next = bytes.to_vec();
        next.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        cases.push(Case {
            name: format!("seed {name} + next"),
            bytes: next,
            underscores: false,
        });
    }
    cases.push(Case {
        name: "seed underscores allowed".into(),
        bytes: b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: v\r\nTransfer_Encoding: chunked\r\nX_Forwarded_Host: h\r\n\r\n".to_vec(),
        underscores: true,
    });
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'b', 33 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    cases.push(Case {
        name: "seed head over 32 KiB".into(),
        bytes: big,
        underscores: false,
    });
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    cases.push(Case {
        name: "seed 101 fields".into(),
        bytes: many,
        underscores: false,
    });
    cases
}

fn print_tally(tally: &Tally, seeds: usize, corpus: usize, mutations: usize, elapsed: Duration) {
    println!("differential: LB vs hyper");
    println!(
        "  cases run: {} ({seeds} seeds, {corpus} corpus, {mutations} mutations) in {elapsed:.2?}",
        tally.cases
    );
    println!("  agreements: {}", tally.agreements.values().sum::<usize>());
    for (what, n) in &tally.agreements {
        println!("    {n:6}  {what}");
    }
    println!("  both refused, (LB status, hyper status; 0 = closed without one):");
    for ((a, b), n) in &tally.refusal_statuses {
        println!("    {n:6}  ({a}, {b})");
    }
    println!(
        "  intended disagreements: {}",
        tally.differences.values().sum::<usize>()
    );
    for (what, n) in &tally.differences {
        println!("    {n:6}  {what}");
    }
    println!("  LB rewrites seen in agreeing requests (by field/trailer/body):");
    for (what, n) in &tally.normalized {
        println!("    {n:6}  {what}");
    }
    println!(
        "  forwarded bytes re-read by hyper: {} request(s) (and {} whose target hyper refuses)",
        tally.forwarded_checked, tally.forwarded_unreadable
    );
    println!("  failures: {}", tally.failures.len());
}

#[test]
fn the_lb_and_hyper_agree_but_where_documented() {
    let started = Instant::now();
    let runtime = runtime();
    let seeds = seed_cases();
    let corpus = corpus_cases();
    let mut tally = Tally::default();
    for case in seeds.iter().chain(&corpus) {
        run_case(&runtime, case, &mut tally);
    }
    let pool: Vec<&Case> = seeds.iter().chain(&corpus).collect();
    // More, or others: DIFFERENTIAL_MUTATIONS=200000 DIFFERENTIAL_SEED=7.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mutations = env("DIFFERENTIAL_MUTATIONS").map_or(MUTATIONS, |n| n as usize);
    let mut rng = Rng(env("DIFFERENTIAL_SEED").map_or(SEED, |s| s.max(1)));
    for m in 0..mutations {
        let parent = pool[rng.below(pool.len())];
        let case = Case {
            name: format!("mutation {m} of {}", parent.name),
            bytes: mutate(&mut rng, &parent.bytes),
            underscores: parent.underscores,
        };
        run_case(&runtime, &case, &mut tally);
    }
    print_tally(
        &tally,
        seeds.len(),
        corpus.len(),
        mutations,
        started.elapsed(),
    );
    if !tally.failures.is_empty() {
        let shown = tally.failures.len().min(25);
        panic!(
            "{} case(s) disagree unexplained or forward the wrong bytes (first {shown}):\n\n{}",
            tally.failures.len(),
            tally.failures[..shown].join("\n")
        );
    }
}

#[test]
fn every_documented_difference_has_a_live_example() {
    let runtime = runtime();
    let mut normalized = BTreeMap::new();
    for d in DIFFERENCES {
        let bytes = if d.name == "head-larger-than-32k" {
            let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
            big.extend(std::iter::repeat_n(b'b', 33 * 1024));
            big.extend_from_slice(b"\r\n\r\n");
            big
        } else {
            d.example.to_vec()
        };
        let case = Case {
            name: d.name.to_string(),
            bytes,
            underscores: false,
        };
        match judge(&runtime, &case, &mut normalized) {
            Judgement::Intended(found, _) => assert_eq!(
                found.name, d.name,
                "the example of {} classifies as {}",
                d.name, found.name
            ),
            Judgement::Agree(what, _) => panic!(
                "the example of {} no longer disagrees ({what}): remove the entry",
                d.name
            ),
            Judgement::Unexplained(report) => panic!("{report}"),
        }
    }
}

/// The markdown table of [`DIFFERENCES`] and the normalizations.
fn render_docs() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut s = String::new();
    s.push_str("| reason | kind | example | the LB | hyper | why |\n|---|---|---|---|---|---|\n");
    for d in DIFFERENCES {
        let example = if d.name == "head-larger-than-32k" {
            "a field of 33 KiB".to_string()
        } else {
            format!("`{}`", lit(d.example))
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} |",
            d.name,
            match d.kind {
                Kind::Stricter => "LB stricter",
                Kind::Lenient => "LB more lenient",
                Kind::SuspectedBug => "**suspected LB bug**",
            },
            cell(&example),
            cell(d.lb),
            cell(d.hyper),
            cell(d.why)
        );
    }
    s.push_str("\nRewrites of an accepted request (not disagreements: the oracle expects them):\n\n| rewrite | what the app gets |\n|---|---|\n");
    for (name, what) in NORMALIZATIONS {
        let _ = writeln!(s, "| `{name}` | {} |", cell(what));
    }
    s
}

const DOC: &str = "docs/framing-differences.md";
const BEGIN: &str =
    "<!-- BEGIN GENERATED by tests/differential.rs (DIFFERENTIAL_WRITE_DOCS=1 to update) -->\n";
const END: &str = "<!-- END GENERATED -->\n";

#[test]
fn the_table_is_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let table = render_docs();
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        panic!("{DOC} lacks the generated section markers");
    };
    let current = &text[b + BEGIN.len()..e];
    if current != table {
        if std::env::var_os("DIFFERENTIAL_WRITE_DOCS").is_some() {
            let updated = format!("{}{BEGIN}{table}{}", &text[..b], &text[e..]);
            std::fs::write(&path, updated).expect("writable docs");
        } else {
            panic!("{DOC} is out of date: run DIFFERENTIAL_WRITE_DOCS=1 cargo test --test differential");
        }
    }
}

/// A look at one input: `DIFFERENTIAL_HEX=<hex bytes> cargo test --test
/// differential explain -- --ignored --nocapture`.
#[test]
#[ignore]
fn explain() {
    let hex = std::env::var("DIFFERENTIAL_HEX").expect("DIFFERENTIAL_HEX");
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let runtime = runtime();
    let case = Case {
        name: "explain".into(),
        bytes,
        underscores: std::env::var_os("DIFFERENTIAL_UNDERSCORES").is_some(),
    };
    let lb = lb_verdict(&case.bytes, case.underscores);
    let hy = hyper_verdict(&runtime, &case.bytes);
    println!("input: {}", lit(&case.bytes));
    for r in &lb.requests {
        println!("LB forwards: {}", lit(&r.forwarded));
    }
    println!("LB: {lb:#?}");
    println!("hyper: {hy:#?}");
    match judge(&runtime, &case, &mut BTreeMap::new()) {
        Judgement::Agree(what, _) => println!("agree: {what}"),
        Judgement::Intended(d, at) => println!("intended: {} (request {at})", d.name),
        Judgement::Unexplained(report) => println!("{report}"),
    }
}
