//! HTTP/1.1 message heads and body framing for the LB's data path: plain
//! data, no I/O.
//!
//! The LB forwards a request head it has parsed (`httparse`) and checked,
//! rewritten for the worker — hop-by-hop and internal headers dropped,
//! `X-Forwarded-For` added, the body's framing normalized — and a response
//! head rewritten for the client the same way, with the LB's own `Date`.
//! Bodies pass through as they are, with [`Chunked`] following a chunked
//! body to find its end (and refusing a malformed one).
//!
//! What a client can send wrongly ends here, before any app sees it: a
//! malformed head (`400`), one too large (`431`), both `Content-Length` and
//! `Transfer-Encoding` or conflicting lengths (`400`: no request
//! smuggling), an unsupported transfer coding or `CONNECT` (`501`).

use std::ops::Range;
use std::time::SystemTime;

use hyper::Method;

use super::forwarded::{self, Claim, Hop};

/// The largest head the LB sends or reads back (hyper's and most servers'
/// order of magnitude).
pub const MAX_HEAD: usize = 32 * 1024;
/// The most header fields in a head the LB sends (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// The largest head accepted from a client or an app (`431` or `502`
/// beyond): room is left for the fields the LB adds (`Host`,
/// the forwarding fields, framing, `Date`, `Connection`, `X-Request-Id`),
/// so that what it sends on stays within [`MAX_HEAD`] and [`MAX_HEADERS`]
/// (a head whose `Host` is too long to be copied to `X-Forwarded-Host`
/// within them is `431`).
pub const MAX_HEAD_IN: usize = MAX_HEAD - 1024;
/// The most header fields accepted from a client or an app.
pub const MAX_FIELDS_IN: usize = MAX_HEADERS - 10;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// `400 Bad Request`.
    Malformed(&'static str),
    /// `431 Request Header Fields Too Large`.
    TooLarge,
    /// `501 Not Implemented`.
    Unsupported(&'static str),
}

impl HeadError {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            HeadError::Malformed(_) => (400, "Bad Request"),
            HeadError::TooLarge => (431, "Request Header Fields Too Large"),
            HeadError::Unsupported(_) => (501, "Not Implemented"),
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A parsed, checked request head.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    /// Bytes of the head in the buffer (the body, if any, follows).
    pub len: usize,
    pub method: Method,
    /// Where the request target lies in the buffer.
    pub target: Range<usize>,
    /// HTTP/1.0 or HTTP/1.1.
    pub http10: bool,
    pub body: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the LB answers it when the body is wanted.
    pub expect_continue: bool,
    /// Where the trusted proxy's `X-Request-Id` that was kept lies in the
    /// buffer (None: the LB's own id was sent).
    pub request_id: Option<Range<usize>>,
    /// A WebSocket handshake (`Connection: upgrade`, `Upgrade: websocket`):
    /// forwarded with both, and a `101` turns the exchange into a tunnel.
    pub websocket: bool,
    /// Where the (valid) host the client asked for lies in the buffer: its
    /// `Host`, or the authority of an absolute target (None: it gave none).
    pub host: Option<Range<usize>>,
}

impl RequestHead {
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(&buf[self.target.clone()]).unwrap_or("")
    }

    /// The path without the query (for routing and the log).
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a str {
        let target = self.target(buf);
        target.split('?').next().unwrap_or(target)
    }
}

/// What one header name means to the LB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Kept,
    /// Hop-by-hop or internal: never forwarded.
    Dropped,
    Connection,
    ContentLength,
    TransferEncoding,
    Host,
    Expect,
    /// Who the client is or how it came: the LB's to write
    /// ([`forwarded`]).
    Claim(Claim),
    Date,
    ContentType,
    WorkerBusy,
    WorkerRecycle,
    /// Hop-by-hop, but read: a WebSocket handshake passes it on.
    Upgrade,
    /// `X-Accel-Buffering` (nginx's name): `no` asks that the response
    /// flow as it is produced. Not forwarded.
    AccelBuffering,
}

fn field(name: &str) -> Field {
    // Most names are short and common: compare case-insensitively without
    // allocating.
    let eq = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if eq("host") => Field::Host,
        4 if eq("date") => Field::Date,
        2 if eq("te") => Field::Dropped,
        6 if eq("expect") => Field::Expect,
        7 if eq("upgrade") => Field::Upgrade,
        7 if eq("trailer") => Field::Dropped,
        10 if eq("connection") || eq("keep-alive") => {
            if eq("connection") {
                Field::Connection
            } else {
                Field::Dropped
            }
        }
        12 if eq("content-type") => Field::ContentType,
        14 if eq("content-length") => Field::ContentLength,
        15 if eq("rip-worker-busy") => Field::WorkerBusy,
        16 if eq("proxy-connection") => Field::Dropped,
        17 if eq("transfer-encoding") => Field::TransferEncoding,
        17 if eq("x-accel-buffering") => Field::AccelBuffering,
        18 if eq("rip-worker-recycle") => Field::WorkerRecycle,
        n if n >= 11 && name[..11].eq_ignore_ascii_case("rip-worker-") => Field::Dropped,
        _ => forwarded::claim(name).map_or(Field::Kept, Field::Claim),
    }
}

/// Whether `name` appears among the comma-separated tokens of `Connection`
/// headers (`close`, `keep-alive`, or header names to drop).
fn listed(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|value| {
        value
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// Whether a connection stays open after a message (RFC 9112 §9.3):
/// `close` ends it whatever else is listed; HTTP/1.0 needs `keep-alive`.
fn persistent(http10: bool, connection: &[&[u8]]) -> bool {
    !listed(connection, "close") && (!http10 || listed(connection, "keep-alive"))
}

/// Parses `Content-Length`: digits only; repeated values must agree.
fn content_length(value: &[u8], seen: Option<u64>) -> Result<u64, ()> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n: u64 = std::str::from_utf8(part)
            .map_err(|_| ())?
            .parse()
            .map_err(|_| ())?;
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    match (length, seen) {
        (Some(n), Some(s)) if n != s => Err(()),
        (Some(n), _) => Ok(n),
        (None, _) => Err(()),
    }
}

/// What a request head is read with besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// How the request came: what the forwarding fields say.
    pub hop: Hop<'a>,
    /// The `Host` an HTTP/1.0 request without one is given: the address the
    /// client connected to.
    pub host: Option<&'a str>,
    /// Keep header names with underscores (`--allow-underscore-headers`).
    pub underscores: bool,
}

/// Whether a head has a line end other than CR LF: a bare LF (which many
/// parsers behind us take as a line end, some not) or a bare CR. Either
/// would let two parsers disagree on where a field, or the head, ends.
fn bare_line_end(head: &[u8]) -> bool {
    if head.first() == Some(&b'\n') {
        return true;
    }
    // Byte by byte: a LF exactly where a CR precedes. (The head ends in LF,
    // so no CR is last.) No early exit, so that it compiles to wide
    // compares: a head costs a few dozen instructions.
    let mut bad = false;
    for (&before, &at) in head.iter().zip(&head[1..]) {
        bad |= (at == b'\n') != (before == b'\r');
    }
    bad
}

/// Whether `value` is a valid `Host`: `uri-host [ ":" port ]` (RFC 9110
/// §7.2, RFC 3986 §3.2.2), possibly empty.
fn valid_host(value: &[u8]) -> bool {
    fn reg_name_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty() || !literal.iter().all(|&b| reg_name_char(b) || b == b':') {
            return false;
        }
        (&value[..0], &value[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[..0]),
        }
    };
    if !host.iter().all(|&b| reg_name_char(b)) || !percent_encoded(host) {
        return false;
    }
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Whether every `%` in `text` starts a `%HH` escape.
fn percent_encoded(text: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = text[i..].iter().position(|&b| b == b'%') {
        let at = i + at;
        match text.get(at + 1..at + 3) {
            Some(hh) if hh.iter().all(u8::is_ascii_hexdigit) => i = at + 3,
            _ => return false,
        }
    }
    true
}

/// The forms of a request target (RFC 9112 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `/path?query`, `*` (OPTIONS only): forwarded as it is.
    Origin,
    /// `http://authority/path?query`: forwarded in origin form, with the
    /// authority as `Host`. `path` may be empty (then `/` is sent).
    Absolute {
        authority: Range<usize>,
        path: Range<usize>,
    },
}

/// Classifies the target at `range` in `buf`. Anything else — a relative
/// path, a fragment, userinfo, a scheme other than http(s) — is refused:
/// no two parsers agree on what it means.
fn target_form(buf: &[u8], range: Range<usize>, method: &Method) -> Result<Target, HeadError> {
    let target = &buf[range.clone()];
    if target.contains(&b'#') {
        return Err(HeadError::Malformed("fragment in the request target"));
    }
    if target.first() == Some(&b'/') {
        return Ok(Target::Origin);
    }
    if target == b"*" {
        return if method == Method::OPTIONS {
            Ok(Target::Origin)
        } else {
            Err(HeadError::Malformed(
                "'*' target for a method other than OPTIONS",
            ))
        };
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(HeadError::Malformed("bad request target"));
    };
    let after = &target[rest..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty() || !valid_host(authority) {
        return Err(HeadError::Malformed("bad authority in the request target"));
    }
    let start = range.start + rest;
    Ok(Target::Absolute {
        authority: start..start + end,
        path: start + end..range.end,
    })
}

/// Whether a header name with underscores would, read with `-` for `_` as
/// CGI and WSGI do, name a field the LB controls (framing, `Host`, hop-by-hop,
/// forwarding, the worker protocol): such a name is never forwarded.
fn controlled_when_dashed(name: &str) -> bool {
    let same = |b: u8, t: u8| {
        (if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }) == t
    };
    let prefixed = |prefix: &str| {
        name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(b, t)| same(b, t))
    };
    let claim = || {
        let mut dashed = [0u8; 32];
        let n = name.len();
        n <= dashed.len() && {
            for (d, b) in dashed.iter_mut().zip(name.bytes()) {
                *d = if b == b'_' { b'-' } else { b };
            }
            std::str::from_utf8(&dashed[..n]).is_ok_and(|d| forwarded::claim(d).is_some())
        }
    };
    CONTROLLED
        .iter()
        .any(|t| name.len() == t.len() && name.bytes().zip(t.bytes()).all(|(b, t)| same(b, t)))
        || prefixed("x-forwarded-")
        || prefixed("rip-worker-")
        || claim()
}

/// Fields an app must get from the LB alone (with [`controlled_when_dashed`]'s
/// prefixes `x-forwarded-` and `rip-worker-`, and every [`forwarded::claim`]).
const CONTROLLED: [&str; 10] = [
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
];

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
/// On success the head the worker gets is in `out` (cleared first).
pub fn parse_request(
    buf: &[u8],
    context: &Context<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_IN => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if len > MAX_HEAD_IN || request.headers.len() > MAX_FIELDS_IN {
        return Err(HeadError::TooLarge);
    }
    if bare_line_end(&buf[..len]) {
        return Err(HeadError::Malformed("a line end other than CR LF"));
    }
    let method_str = request.method.unwrap_or("");
    let method = Method::from_bytes(method_str.as_bytes())
        .map_err(|_| HeadError::Malformed("bad method"))?;
    if method == Method::CONNECT {
        return Err(HeadError::Unsupported("CONNECT"));
    }
    let target_str = request.path.unwrap_or("");
    let http10 = request.version == Some(0);
    let target = offset_of(buf, target_str.as_bytes());
    let form = target_form(buf, target.clone(), &method)?;

    let mut connection: Vec<&[u8]> = Vec::new();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut upgrade: Option<&[u8]> = None;
    for f in request.headers.iter() {
        match field(f.name) {
            Field::Connection => connection.push(f.value),
            Field::ContentLength => {
                length = Some(
                    content_length(f.value, length)
                        .map_err(|_| HeadError::Malformed("bad Content-Length"))?,
                )
            }
            Field::TransferEncoding => {
                // Only `chunked`, alone: anything else we could not frame.
                if !f.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HeadError::Unsupported("transfer coding"));
                }
                chunked = true;
            }
            Field::Host => {
                hosts += 1;
                host = Some(f.value);
            }
            // An HTTP/1.0 client cannot expect `100 Continue` (RFC 9110
            // §10.1.1): the expectation is ignored.
            Field::Expect => {
                expect_continue =
                    !http10 && f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            }
            Field::Upgrade => upgrade = Some(f.value),
            _ => {}
        }
    }
    if chunked && length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // RFC 6455 §4.1: a GET over HTTP/1.1 that asks for `websocket` (and no
    // other protocol: the LB tunnels nothing else).
    let websocket = !http10
        && method == Method::GET
        && listed(&connection, "upgrade")
        && upgrade.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if chunked && http10 {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    // RFC 9112 §3.2: exactly one valid Host in HTTP/1.1.
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    match host {
        Some(value) if !valid_host(value) => return Err(HeadError::Malformed("bad Host")),
        None if !http10 => return Err(HeadError::Malformed("no Host")),
        _ => {}
    }
    let body = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = persistent(http10, &connection);

    out.clear();
    out.extend_from_slice(method_str.as_bytes());
    out.push(b' ');
    let path = match &form {
        Target::Origin => target.clone(),
        Target::Absolute { path, .. } => {
            if path.is_empty() && method == Method::OPTIONS {
                // RFC 9112 §3.2.4: the server-wide OPTIONS.
                out.push(b'*');
            } else if path.is_empty() || buf[path.start] == b'?' {
                out.push(b'/');
            }
            path.clone()
        }
    };
    out.extend_from_slice(&buf[path.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in request.headers.iter() {
        let kept = match field(f.name) {
            Field::Host => matches!(form, Target::Origin),
            Field::Kept if f.name.bytes().any(|b| b == b'_') => {
                context.underscores
                    && !controlled_when_dashed(f.name)
                    && !listed(&connection, f.name)
            }
            Field::Kept | Field::Date | Field::ContentType => !listed(&connection, f.name),
            // From a trusted proxy, the claims the LB does not rewrite (but
            // never a name with `_`: read with `-`, it is a claim too).
            Field::Claim(Claim::Passed) => {
                context.hop.trusted.is_some()
                    && !f.name.contains('_')
                    && !listed(&connection, f.name)
            }
            _ => false,
        };
        if kept {
            put_header(out, f.name.as_bytes(), f.value);
        }
    }
    // The host forwarded, and where the one the client asked for lies.
    let (host, asked_host) = match (&form, host) {
        (Target::Absolute { authority, .. }, _) => {
            let range = authority.clone();
            let authority = &buf[range.clone()];
            put_header(out, b"host", authority);
            (authority, Some(range))
        }
        // HTTP/1.0 without Host reaches the app as HTTP/1.1, so it gets one.
        (Target::Origin, None) => {
            let local = context.host.unwrap_or("localhost").as_bytes();
            put_header(out, b"host", local);
            (local, None)
        }
        (Target::Origin, Some(host)) => (host, Some(offset_of(buf, host))),
    };
    if websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    match body {
        Framing::Length(n) => put_number(out, b"content-length", n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A bodiless POST still says so, as the client did.
        Framing::None if length.is_some() => out.extend_from_slice(b"content-length: 0\r\n"),
        _ => {}
    }
    let request_id = forwarded::put_fields(out, request.headers, host, &context.hop)
        .map(|id| offset_of(buf, id));
    out.extend_from_slice(b"\r\n");
    // The fields the LB adds fit within the room left for them, but for a
    // `Host` so long that its copy in `X-Forwarded-Host` does not.
    if out.len() > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(RequestHead {
        len,
        method,
        target: path,
        http10,
        body,
        keep_alive,
        expect_continue,
        websocket,
        request_id,
        host: asked_host,
    }))
}

fn offset_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_number(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A parsed worker response head.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    /// How the worker delimits the body.
    pub body: Framing,
    /// The worker keeps the connection open after this response.
    pub reusable: bool,
    /// `Rip-Worker-Busy: 1` on a 503: the app did not take the request.
    pub busy: bool,
    /// `Rip-Worker-Recycle: 1`: the app asks to be replaced.
    pub recycle: bool,
    /// The media type, for the access log.
    pub content_type: Option<Range<usize>>,
    /// The response flows as it is produced (`text/event-stream`, or
    /// `X-Accel-Buffering: no`): the LB keeps none of it for a slow client.
    pub stream: bool,
}

/// What became of a response head.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Incomplete,
    /// A `1xx` interim response of `len` bytes, skipped.
    Interim(usize),
    Final(ResponseHead),
}

/// How the LB sends a response body on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    None,
    /// Bytes as they come, `Length` of them or until the worker's chunked
    /// body ends.
    Pass(Framing),
    /// A close-delimited body, sent chunked to an HTTP/1.1 client.
    Chunk,
    /// A chunked body, sent as plain bytes to an HTTP/1.0 client (which then
    /// sees the connection close).
    Dechunk,
    /// A close-delimited body, as it is, to an HTTP/1.0 client.
    UntilClose,
}

/// For a WebSocket handshake: if `buf` starts with a complete `101` head
/// from the app, writes the head the client gets to `out` (cleared first;
/// hop-by-hop fields but `Upgrade` dropped, the LB's `Date`) and returns
/// its length. `Ok(None)`: not a complete `101` (read on, or parse it as
/// any other response).
pub fn parse_switch(
    buf: &[u8],
    date: &[u8],
    request_id: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<usize>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if response.code == Some(101) => len,
        Ok(_) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let mut upgrade = None;
    let mut connection: Vec<&[u8]> = Vec::new();
    for f in response.headers.iter() {
        match field(f.name) {
            Field::Upgrade => upgrade = Some(f.value),
            Field::Connection => connection.push(f.value),
            _ => {}
        }
    }
    if !upgrade.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        || !listed(&connection, "upgrade")
    {
        return Err("the app switched to a protocol other than websocket");
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(response.reason.unwrap_or("Switching Protocols").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_response_fields(out, response.headers, &connection, date, request_id, b"");
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
    Ok(Some(len))
}

/// Writes the fields of an app's response head that go on to the client
/// (hop-by-hop, internal and `Connection`-named ones dropped, framing and
/// `Date` the LB's own), then the LB's `Date`, and the request's id unless
/// the app sent one of its own (an empty `request_id`: none), and
/// `Strict-Transport-Security: <hsts>` likewise (empty: none).
fn put_response_fields(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    connection: &[&[u8]],
    date: &[u8],
    request_id: &[u8],
    hsts: &[u8],
) {
    let mut has_id = false;
    let mut has_sts = false;
    for f in headers {
        if !hsts.is_empty() && f.name.eq_ignore_ascii_case("strict-transport-security") {
            has_sts = true;
        }
        let kept = match field(f.name) {
            Field::Claim(claim) => {
                has_id |= claim == Claim::RequestId;
                !listed(connection, f.name)
            }
            Field::Kept | Field::Host | Field::Expect | Field::ContentType => {
                !listed(connection, f.name)
            }
            _ => false,
        };
        if kept {
            put_header(out, f.name.as_bytes(), f.value);
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if !has_id && !request_id.is_empty() {
        put_header(out, b"x-request-id", request_id);
    }
    if !has_sts && !hsts.is_empty() {
        put_header(out, b"strict-transport-security", hsts);
    }
}

/// What a response answers: how the request asked for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked<'a> {
    /// The request was `HEAD`: no body follows whatever the headers say.
    pub head_request: bool,
    /// The client speaks HTTP/1.0.
    pub client_http10: bool,
    /// The client connection closes after this response.
    pub close: bool,
    /// The request's id, echoed in `X-Request-Id` unless the app sent one
    /// (empty: none).
    pub request_id: &'a [u8],
    /// `Strict-Transport-Security` for the client unless the app sent its
    /// own (empty: none).
    pub hsts: &'a [u8],
}

/// Parses a worker's response head at the start of `buf` and writes the
/// head the client gets to `out` (cleared first). Returns the parsed head,
/// how the body is relayed, and whether the client connection closes after
/// it.
pub fn parse_response(
    buf: &[u8],
    asked: &Asked<'_>,
    date: &[u8],
    out: &mut Vec<u8>,
) -> Result<(Parsed, Relay, bool), &'static str> {
    let Asked {
        head_request,
        client_http10,
        mut close,
        request_id,
        hsts,
    } = *asked;
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_IN => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok((Parsed::Incomplete, Relay::None, close)),
        Err(httparse::Error::TooManyHeaders) => return Err("response head too large"),
        Err(_) => return Err("malformed response head"),
    };
    if len > MAX_HEAD_IN || response.headers.len() > MAX_FIELDS_IN {
        return Err("response head too large");
    }
    let status = response.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err("status code out of range");
    }
    if (100..200).contains(&status) {
        if status == 101 {
            return Err("the app switched protocols");
        }
        return Ok((Parsed::Interim(len), Relay::None, close));
    }
    let http10 = response.version == Some(0);
    let mut connection: Vec<&[u8]> = Vec::new();
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    let mut busy = false;
    let mut recycle = false;
    let mut content_type = None;
    let mut stream = false;
    for f in response.headers.iter() {
        match field(f.name) {
            Field::Connection => connection.push(f.value),
            // RFC 9112 §6.3: a proxy must not forward a response whose
            // length it cannot tell for sure.
            Field::ContentLength => {
                length = Some(content_length(f.value, length).map_err(|_| "bad Content-Length")?)
            }
            Field::TransferEncoding => {
                codings += 1;
                chunked = f.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            Field::WorkerBusy => busy = f.value.trim_ascii() == b"1",
            Field::WorkerRecycle => recycle = f.value.trim_ascii() == b"1",
            Field::AccelBuffering => {
                stream |= f.value.trim_ascii().eq_ignore_ascii_case(b"no");
            }
            Field::ContentType => {
                content_type = Some(offset_of(buf, f.value));
                let media = f.value.trim_ascii();
                stream |=
                    media.len() >= 17 && media[..17].eq_ignore_ascii_case(b"text/event-stream");
            }
            _ => {}
        }
    }
    if codings > 0 {
        // Only `chunked`, which the LB decodes: any other coding would be
        // relayed with a framing the LB cannot check, or rewritten.
        if codings > 1 || !chunked {
            return Err("unsupported transfer coding");
        }
        if length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if http10 {
            return Err("Transfer-Encoding in an HTTP/1.0 response");
        }
    }
    let no_body = head_request || status == 204 || status == 304;
    let body = if no_body {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    // After HEAD, 204 or 304 the app may still write the body its headers
    // describe (a common bug): what comes next on the connection cannot be
    // trusted to be the next response, so it is not reused.
    let reusable = body != Framing::UntilClose && !no_body && persistent(http10, &connection);
    let relay = match (body, client_http10) {
        (Framing::None, _) => Relay::None,
        (Framing::Length(_), _) => Relay::Pass(body),
        (Framing::Chunked, false) => Relay::Pass(Framing::Chunked),
        (Framing::Chunked, true) => Relay::Dechunk,
        (Framing::UntilClose, false) => Relay::Chunk,
        (Framing::UntilClose, true) => Relay::UntilClose,
    };
    if matches!(relay, Relay::Dechunk | Relay::UntilClose) {
        close = true;
    }

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    put_status(out, status);
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_response_fields(out, response.headers, &connection, date, request_id, hsts);
    match (relay, length) {
        // A 204 has no framing at all (RFC 9110 §8.6, §6.1): a client that
        // took a length on it would read the next response as its body.
        _ if status == 204 => {}
        // The length stands (as one value) unless the body is re-framed.
        (Relay::Pass(Framing::Length(_)) | Relay::None, Some(n)) => {
            put_number(out, b"content-length", n)
        }
        (Relay::Pass(Framing::Chunked) | Relay::Chunk, _) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        (Relay::None, None) if !no_body => out.extend_from_slice(b"content-length: 0\r\n"),
        // HEAD of a chunked response: say how the GET would be framed.
        (Relay::None, None) if head_request && chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        _ => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((
        Parsed::Final(ResponseHead {
            len,
            status,
            body,
            reusable,
            busy: busy && status == 503,
            recycle,
            content_type,
            stream,
        }),
        relay,
        close,
    ))
}

fn put_status(out: &mut Vec<u8>, status: u16) {
    out.push(b'0' + (status / 100 % 10) as u8);
    out.push(b'0' + (status / 10 % 10) as u8);
    out.push(b'0' + (status % 10) as u8);
}

/// An answer of the LB's own.
#[derive(Debug, Clone, Copy)]
pub struct Own<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// The connection closes after it.
    pub close: bool,
    /// `Retry-After: 1` (queue full, server busy).
    pub retry_after: bool,
    /// `Cache-Control: no-cache` (the LB's own routes, as the original).
    pub no_cache: bool,
    /// Header lines it carries besides, each ending in CRLF (a redirect's
    /// `Location`, HSTS).
    pub extra: &'a [u8],
}

impl Own<'static> {
    pub fn text(
        status: u16,
        reason: &'static str,
        body: &'static str,
        close: bool,
    ) -> Own<'static> {
        Own {
            status,
            reason,
            content_type: "text/plain",
            body: body.as_bytes(),
            close,
            retry_after: false,
            no_cache: false,
            extra: b"",
        }
    }
}

/// Writes `own` as a complete response to `out` (cleared first).
/// `request_id`: the request's id (empty for a head the LB could not read).
pub fn own_response(own: &Own<'_>, date: &[u8], request_id: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    put_status(out, own.status);
    out.push(b' ');
    out.extend_from_slice(own.reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(own.content_type.as_bytes());
    out.extend_from_slice(b"\r\n");
    put_number(out, b"content-length", own.body.len() as u64);
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if own.retry_after {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    if own.no_cache {
        out.extend_from_slice(b"cache-control: no-cache\r\n");
    }
    if !request_id.is_empty() {
        put_header(out, b"x-request-id", request_id);
    }
    if own.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(own.extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(own.body);
}

/// The `Date` header value, formatted once a second.
pub struct DateCache {
    second: u64,
    value: [u8; 29],
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            second: u64::MAX,
            value: [b' '; 29],
        }
    }
}

impl DateCache {
    pub fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            let text = httpdate::fmt_http_date(now);
            let bytes = text.as_bytes();
            let n = bytes.len().min(self.value.len());
            self.value[..n].copy_from_slice(&bytes[..n]);
        }
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const CONTEXT: Context<'static> = Context {
        hop: Hop {
            client: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3))),
            trusted: None,
            https: false,
            port: Some(3000),
            request_id: b"rid-1",
            received_us: 1_764_331_200_000_123,
        },
        host: Some("127.0.0.1:3000"),
        underscores: false,
    };

    /// The fields the LB adds to a request from [`CONTEXT`]'s client with
    /// this `Host`.
    fn forwarding(host: &str) -> String {
        format!(
            "x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: {host}\r\n\
             x-forwarded-port: 3000\r\nx-real-ip: 10.1.2.3\r\nx-request-id: rid-1\r\n\
             x-request-start: t=1764331200000123\r\n"
        )
    }

    fn request_in(
        raw: &str,
        context: &Context<'_>,
    ) -> Result<Option<(RequestHead, String)>, HeadError> {
        let mut out = Vec::new();
        parse_request(raw.as_bytes(), context, &mut out)
            .map(|head| head.map(|h| (h, String::from_utf8(out).unwrap())))
    }

    fn request(raw: &str) -> Result<Option<(RequestHead, String)>, HeadError> {
        request_in(raw, &CONTEXT)
    }

    fn refused(raw: &str) -> bool {
        matches!(request(raw), Err(HeadError::Malformed(_)))
    }

    fn ok(raw: &str) -> (RequestHead, String) {
        request(raw).expect("valid").expect("complete")
    }

    #[test]
    fn a_plain_get_is_forwarded_with_hop_by_hop_headers_dropped() {
        let (head, out) = ok("GET /ping?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nRip-Worker-Busy: 1\r\nRIP-WORKER-ID: 2\r\nAccept: */*\r\n\r\n");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.body, Framing::None);
        assert!(head.keep_alive && !head.http10);
        assert_eq!(
            out,
            format!(
                "GET /ping?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n{}\r\n",
                forwarding("a")
            )
        );
    }

    #[test]
    fn the_target_and_path_are_found() {
        let raw = "GET /a/b?c=d HTTP/1.1\r\nHost: a\r\n\r\n";
        let (head, _) = ok(raw);
        assert_eq!(head.target(raw.as_bytes()), "/a/b?c=d");
        assert_eq!(head.path(raw.as_bytes()), "/a/b");
    }

    #[test]
    fn framing_is_checked_and_normalized() {
        let (head, out) = ok("POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(head.body, Framing::Length(5));
        assert_eq!(
            head.len,
            "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n".len()
        );
        assert!(out.contains("content-length: 5\r\n"));
        let (head, out) = ok("POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.body, Framing::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        let (head, _) = ok("POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(head.body, Framing::Length(5));
        let (head, out) = ok("POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.body, Framing::None);
        assert!(out.contains("content-length: 0\r\n"));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(
                matches!(request(raw), Err(HeadError::Malformed(_))),
                "{raw:?}"
            );
        }
        for raw in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(request(raw), Err(HeadError::Unsupported(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert!(matches!(
            request("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            request("G\x01T / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            request("GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            request(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooLarge)
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(request(&huge), Err(HeadError::TooLarge));
        assert_eq!(request("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn keep_alive_follows_the_version() {
        assert!(
            !ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(ok("GET / HTTP/1.0\r\n\r\n").0.http10);
    }

    #[test]
    fn expect_continue_is_answered_here() {
        let (head, out) =
            ok("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(head.expect_continue);
        assert!(!out.to_ascii_lowercase().contains("expect"));
    }

    /// Issue 13: what a client says of who it is or how it came is
    /// replaced, whatever its case or how many times it says it.
    #[test]
    fn an_untrusted_clients_claims_are_replaced() {
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 443\r\n\
                   X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Ssl: on\r\n\
                   X-Forwarded-Prefix: /admin\r\nX-Client-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n\
                   CF-Connecting-IP: 6.6.6.6\r\nX-Request-Id: mine\r\nX-Request-Start: t=1\r\n\
                   X-Queue-Start: t=1\r\nAccept: */*\r\n\r\n";
        let (head, out) = ok(raw);
        assert_eq!(head.request_id, None);
        assert_eq!(
            out,
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n{}\r\n",
                forwarding("a")
            )
        );
    }

    /// From a trusted proxy the chain goes on: `X-Forwarded-For` gets the
    /// peer, `X-Real-IP` is the nearest untrusted address, and the rest
    /// is the proxy's (several lines joined into one).
    #[test]
    fn a_trusted_proxys_claims_are_kept() {
        let proxies = crate::flags::TrustedProxies::parse("10.0.0.0/8").expect("valid");
        let trusted = Context {
            hop: Hop {
                trusted: Some(&proxies),
                ..CONTEXT.hop
            },
            ..CONTEXT
        };
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 1.2.3.4\r\nX-Forwarded-For: 10.9.9.9\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nX-Forwarded-Port: 443\r\n\
                   X-Real-IP: 6.6.6.6\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Forwarded-Ssl: on\r\n\
                   X-Request-Id: Root=1-abc\r\nX-Request-Start: t=1764331199999000\r\n\r\n";
        let (head, out) = request_in(raw, &trusted).expect("valid").expect("complete");
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Forwarded-Ssl: on\r\n\
             x-forwarded-for: 6.6.6.6, 1.2.3.4, 10.9.9.9, 10.1.2.3\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: shop.example\r\nx-forwarded-port: 443\r\nx-real-ip: 1.2.3.4\r\n\
             x-request-id: Root=1-abc\r\nx-request-start: t=1764331199999000\r\n\r\n"
        );
        assert_eq!(head.request_id.map(|r| &raw[r]), Some("Root=1-abc"));
        // What the proxy did not say is the LB's; an id that is not plain,
        // or given twice, is replaced.
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n",
        ] {
            let (head, out) = request_in(raw, &trusted).expect("valid").expect("complete");
            assert_eq!(head.request_id, None);
            assert_eq!(
                out,
                format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", forwarding("a"))
            );
        }
    }

    /// Found by the fuzz target: a trusted proxy's `X-Forwarded-*` name with
    /// `_` went on, though names with `_` are dropped.
    #[test]
    fn a_trusted_proxys_claims_with_underscores_are_dropped() {
        let proxies = crate::flags::TrustedProxies::parse("10.0.0.0/8").expect("valid");
        for underscores in [false, true] {
            let trusted = Context {
                hop: Hop {
                    trusted: Some(&proxies),
                    ..CONTEXT.hop
                },
                underscores,
                ..CONTEXT
            };
            let raw =
                "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-Hoi_n: 1\r\nX-Forwarded-Ssl: on\r\n\r\n";
            let (_, out) = request_in(raw, &trusted).expect("valid").expect("complete");
            assert!(!out.contains("Hoi_n"), "{out}");
            assert!(out.contains("X-Forwarded-Ssl: on\r\n"), "{out}");
        }
    }

    /// Without a client address (a test's context) nothing claims one; the
    /// rest is still the LB's.
    #[test]
    fn no_address_no_address_fields() {
        let (_, out) = request_in(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
            &Context::default(),
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
        );
    }

    /// A `Host` too long to be copied into `X-Forwarded-Host` within the
    /// limits of what the LB sends is `431`, not a head over them.
    #[test]
    fn a_host_too_long_to_forward_is_431() {
        let host = "h".repeat(MAX_HEAD_IN - 100);
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(request(&raw).err(), Some(HeadError::TooLarge));
        let host = "h".repeat(MAX_HEAD / 2 - 600);
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (_, out) = ok(&raw);
        assert!(out.len() <= MAX_HEAD);
    }

    /// The request's id is echoed to the client, unless the app sent its
    /// own.
    #[test]
    fn responses_carry_the_request_id() {
        let asked = Asked {
            request_id: b"rid-1",
            ..Asked::default()
        };
        let mut out = Vec::new();
        for (app, client) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\ndate: D\r\nx-request-id: rid-1\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nX-Request-Id: app\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nX-Request-Id: app\r\ndate: D\r\ncontent-length: 0\r\n\r\n",
            ),
        ] {
            parse_response(app.as_bytes(), &asked, b"D", &mut out).expect("valid");
            assert_eq!(String::from_utf8_lossy(&out), client);
        }
        let own = Own::text(504, "Gateway Timeout", "Queue timeout", false);
        own_response(&own, b"D", b"rid-1", &mut out);
        assert!(String::from_utf8_lossy(&out).contains("\r\nx-request-id: rid-1\r\n"));
    }

    fn response(
        raw: &str,
        head_request: bool,
        http10: bool,
        close: bool,
    ) -> (Parsed, Relay, bool, String) {
        let mut out = Vec::new();
        let asked = Asked {
            head_request,
            client_http10: http10,
            close,
            request_id: b"",
            hsts: b"",
        };
        let (parsed, relay, close) = parse_response(
            raw.as_bytes(),
            &asked,
            b"Sat, 28 Nov 2026 12:00:00 GMT",
            &mut out,
        )
        .expect("valid");
        (parsed, relay, close, String::from_utf8(out).unwrap())
    }

    fn final_head(parsed: Parsed) -> ResponseHead {
        match parsed {
            Parsed::Final(head) => head,
            other => panic!("expected a final head, got {other:?}"),
        }
    }

    #[test]
    fn a_response_is_cleaned_for_the_client() {
        let (parsed, relay, close, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nDate: old\r\nRip-Worker-Id: 3\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-App: kept\r\n\r\npong",
            false,
            false,
            false,
        );
        let head = final_head(parsed);
        assert_eq!(
            (head.status, head.body, head.reusable),
            (200, Framing::Length(4), true)
        );
        assert_eq!(relay, Relay::Pass(Framing::Length(4)));
        assert!(!close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-App: kept\r\ndate: Sat, 28 Nov 2026 12:00:00 GMT\r\ncontent-length: 4\r\n\r\n"
        );
    }

    #[test]
    fn internal_signals_are_read_and_removed() {
        let (parsed, _, _, out) = response(
            "HTTP/1.1 503 Service Unavailable\r\nRip-Worker-Busy: 1\r\nRetry-After: 0\r\nrip-worker-recycle: 1\r\nContent-Length: 4\r\n\r\nbusy",
            false,
            false,
            false,
        );
        let head = final_head(parsed);
        assert!(head.busy && head.recycle);
        assert!(!out.to_ascii_lowercase().contains("rip-worker"));
        // Busy only means something on a 503.
        let (parsed, ..) = response(
            "HTTP/1.1 200 OK\r\nRip-Worker-Busy: 1\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
            false,
        );
        assert!(!final_head(parsed).busy);
    }

    #[test]
    fn bodies_are_reframed_as_the_client_needs() {
        let (parsed, relay, _, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
            false,
        );
        assert_eq!(final_head(parsed).body, Framing::Chunked);
        assert_eq!(relay, Relay::Pass(Framing::Chunked));
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        // An HTTP/1.0 client gets the data plain and the connection closed.
        let (_, relay, close, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
            false,
        );
        assert_eq!((relay, close), (Relay::Dechunk, true));
        assert!(out.contains("connection: close\r\n") && !out.contains("transfer-encoding"));
        // A close-delimited body goes out chunked, and the worker's
        // connection cannot be reused.
        let (parsed, relay, close, out) = response("HTTP/1.0 200 OK\r\n\r\n", false, false, false);
        let head = final_head(parsed);
        assert_eq!((head.body, head.reusable), (Framing::UntilClose, false));
        assert_eq!((relay, close), (Relay::Chunk, false));
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        // HEAD, 204 and 304 have no body whatever they say.
        let (parsed, relay, _, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
            true,
            false,
            false,
        );
        assert_eq!(
            (final_head(parsed).body, relay),
            (Framing::None, Relay::None)
        );
        assert!(out.contains("content-length: 99\r\n"));
        let (parsed, relay, ..) = response("HTTP/1.1 204 No Content\r\n\r\n", false, false, false);
        assert_eq!(
            (final_head(parsed).body, relay),
            (Framing::None, Relay::None)
        );
        // An empty body keeps saying so; a response with no framing at all
        // and no body gets a length.
        let (_, _, _, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
            false,
        );
        assert!(out.contains("content-length: 0\r\n"), "{out}");
    }

    #[test]
    fn interim_responses_are_skipped_and_upgrades_refused() {
        let (parsed, ..) = response(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            false,
            false,
            false,
        );
        assert_eq!(
            parsed,
            Parsed::Interim("HTTP/1.1 100 Continue\r\n\r\n".len())
        );
        let mut out = Vec::new();
        let asked = Asked::default();
        assert!(parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", &asked, b"d", &mut out).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", &asked, b"d", &mut out).is_err());
    }

    /// Issue 10, hole 5: httparse takes a bare LF as a line end, llhttp
    /// (strict) does not: `Dummy: x\nContent-Length: 23` is one field to
    /// one of them and two to the other.
    #[test]
    fn line_ends_other_than_crlf_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 23\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
        ] {
            assert!(
                matches!(request(raw), Err(HeadError::Malformed(_))),
                "{raw:?} -> {:?}",
                request(raw)
            );
        }
        // Empty lines before the request line are skipped (RFC 9112 §2.2)
        // when they are CR LF.
        assert!(ok("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").0.method == Method::GET);
    }

    /// Issue 10, hole 6: RFC 9112 §3.2.
    #[test]
    fn host_is_required_once_and_valid() {
        for raw in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(refused(raw), "{raw:?} -> {:?}", request(raw));
        }
        for host in [
            "a",
            "a.example:8080",
            "[::1]:3000",
            "127.0.0.1",
            "",
            "xn--d1a.b_c~",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let (_, out) = ok(&raw);
            assert!(out.contains(&format!("Host: {host}\r\n")), "{out}");
        }
        // HTTP/1.0 without Host reaches the app as HTTP/1.1, with the
        // address the client connected to as its Host.
        let (head, out) = ok("GET /p HTTP/1.0\r\n\r\n");
        assert!(head.http10);
        assert_eq!(
            out,
            format!(
                "GET /p HTTP/1.1\r\nhost: 127.0.0.1:3000\r\n{}\r\n",
                forwarding("127.0.0.1:3000")
            )
        );
        // Connection cannot remove Host (or the framing).
        let (_, out) = ok("POST / HTTP/1.1\r\nHost: a\r\nConnection: close, host, content-length, transfer-encoding\r\nContent-Length: 2\r\n\r\nhi");
        assert!(
            out.contains("Host: a\r\n") && out.contains("content-length: 2\r\n"),
            "{out}"
        );
    }

    /// `RequestHead::host` (what `--redirect-http` builds its `Location`
    /// from) is the host the client asked for: its `Host`, the authority of
    /// an absolute target, or none.
    #[test]
    fn the_asked_host_is_where_the_parser_found_it() {
        let asked = |raw: &str| {
            let (head, _) = ok(raw);
            head.host.map(|r| raw[r].to_string())
        };
        assert_eq!(
            asked("GET /a?b HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n").as_deref(),
            Some("shop.example:8080")
        );
        assert_eq!(
            asked("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            asked("GET http://abs.example/x HTTP/1.1\r\nHost: abs.example\r\n\r\n").as_deref(),
            Some("abs.example")
        );
        assert_eq!(asked("GET /p HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn request_targets_have_one_meaning() {
        for raw in [
            "GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(refused(raw), "{raw:?} -> {:?}", request(raw));
        }
        assert!(ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
            .1
            .starts_with("OPTIONS * HTTP/1.1\r\n"));
        // The absolute form reaches the app in origin form, its authority
        // as the one Host (RFC 9112 §3.2.2: the Host sent is ignored).
        let raw = "GET http://b.example:81/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (head, out) = ok(raw);
        assert_eq!(head.target(raw.as_bytes()), "/x?y=1");
        assert_eq!(
            out,
            format!(
                "GET /x?y=1 HTTP/1.1\r\nhost: b.example:81\r\n{}\r\n",
                forwarding("b.example:81")
            )
        );
        let (_, out) = ok("GET HTTP://b?q HTTP/1.1\r\nHost: b\r\n\r\n");
        assert!(out.starts_with("GET /?q HTTP/1.1\r\nhost: b\r\n"), "{out}");
        let (_, out) = ok("GET https://b HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\nhost: b\r\n"), "{out}");
    }

    /// Issue 10, hole 7: CGI and WSGI read `_` as `-`, so
    /// `Transfer_Encoding` would be a second framing header to them.
    #[test]
    fn header_names_with_underscores_are_dropped() {
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent_Length: 9\r\nX_Forwarded_For: 6.6.6.6\r\nrip_worker_busy: 1\r\nX_Custom: v\r\nContent-Length: 2\r\n\r\nhi";
        let (_, out) = ok(raw);
        assert!(!out.contains('_'), "{out}");
        assert!(out.contains("content-length: 2\r\n"));
        // Kept on request, but never those that name a controlled field.
        let keep = Context {
            underscores: true,
            ..CONTEXT
        };
        let (_, out) = request_in(raw, &keep).expect("valid").expect("complete");
        assert!(out.contains("X_Custom: v\r\n"), "{out}");
        for name in [
            "Transfer_Encoding",
            "Content_Length",
            "X_Forwarded_For",
            "rip_worker_busy",
        ] {
            assert!(!out.contains(name), "{name} forwarded: {out}");
        }
    }

    /// Found by the differential oracle: `close` wins over `keep-alive`.
    #[test]
    fn close_ends_an_http10_connection_whatever_else_is_listed() {
        assert!(
            !ok("GET /1 HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
                .0
                .keep_alive
        );
        let head = final_head(
            response(
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, close\r\n\r\nx",
                false,
                false,
                false,
            )
            .0,
        );
        assert!(!head.reusable);
    }

    #[test]
    fn odd_corners_of_targets_and_hosts() {
        // The server-wide OPTIONS in absolute form is `*` to the app.
        let (_, out) = ok("OPTIONS http://a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("OPTIONS * HTTP/1.1\r\n"), "{out}");
        // A `%` must begin an escape.
        assert!(refused("GET / HTTP/1.1\r\nHost: a%\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a%4g\r\n\r\n"));
        assert!(ok("GET / HTTP/1.1\r\nHost: a%41\r\n\r\n")
            .1
            .contains("Host: a%41\r\n"));
    }

    #[test]
    fn a_websocket_handshake_passes_its_upgrade_on() {
        let raw = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (head, out) = ok(raw);
        assert!(head.websocket);
        assert!(
            out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "{out}"
        );
        // Any other protocol, or no Connection: upgrade, is a plain request.
        for other in [
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let (head, out) = ok(other);
            assert!(!head.websocket, "{other:?}");
            assert!(!out.to_ascii_lowercase().contains("upgrade"), "{out}");
        }
        let mut out = Vec::new();
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nDate: old\r\n\r\nframes";
        let len = parse_switch(switch, b"D", b"", &mut out)
            .expect("valid")
            .expect("a 101");
        assert_eq!(&switch[len..], b"frames");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\ndate: D\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
        let mut out = Vec::new();
        assert_eq!(
            parse_switch(b"HTTP/1.1 200 OK\r\n\r\n", b"D", b"", &mut out),
            Ok(None)
        );
        assert!(parse_switch(
            b"HTTP/1.1 101 S\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            b"D",
            b"",
            &mut out
        )
        .is_err());
    }

    /// Found by the fuzz targets: a field named exactly an internal prefix
    /// passed; a head near the limits came out over them once the LB had
    /// added its own fields.
    #[test]
    fn internal_prefixes_and_head_limits_hold_at_their_edges() {
        let (_, out) = ok("GET / HTTP/1.1\r\nHost: a\r\nRip-Worker-: 1\r\n\r\n");
        assert!(!out.to_ascii_lowercase().contains("rip-worker"), "{out}");
        let keep = Context {
            underscores: true,
            ..CONTEXT
        };
        let (_, out) = request_in(
            "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_: 1\r\nRip_Worker_: 1\r\n\r\n",
            &keep,
        )
        .expect("valid")
        .expect("complete");
        assert!(!out.contains('_'), "{out}");
        let many: String = (0..MAX_FIELDS_IN).map(|_| "a: b\r\n").collect();
        let (_, out) = ok(&format!("GET / HTTP/1.0\r\n{many}\r\n"));
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut forwarded = httparse::Request::new(&mut fields);
        assert!(forwarded
            .parse(out.as_bytes())
            .expect("parses")
            .is_complete());
        let too_many: String = (0..=MAX_FIELDS_IN).map(|_| "a: b\r\n").collect();
        assert_eq!(
            request(&format!("GET / HTTP/1.1\r\nHost: a\r\n{too_many}\r\n")),
            Err(HeadError::TooLarge)
        );
        // A response head over the limit is refused however it arrives.
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(MAX_HEAD_IN)
        );
        assert_eq!(response_error(&big), Some("response head too large"));
        assert_eq!(
            response_error(&big[..MAX_HEAD_IN + 10]),
            Some("response head too large")
        );
    }

    #[test]
    fn http10_clients_get_no_100_continue() {
        let (head, _) = ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(!head.expect_continue);
    }

    fn response_error(raw: &str) -> Option<&'static str> {
        let mut out = Vec::new();
        parse_response(raw.as_bytes(), &Asked::default(), b"d", &mut out).err()
    }

    /// Issue 10, hole 3 and hole 8: what the LB cannot frame for sure, or
    /// would have to rewrite, is a `502`, never relayed.
    #[test]
    fn responses_with_unsure_framing_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 10\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: abc\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 10\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 099 Too Early\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(response_error(raw).is_some(), "{raw:?} was relayed");
        }
        // The same length twice is one length, sent once.
        let (parsed, _, _, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
            false,
            false,
            false,
        );
        assert_eq!(final_head(parsed).body, Framing::Length(5));
        assert_eq!(out.matches("content-length").count(), 1, "{out}");
    }

    /// Found by the fuzz helper: a 204 went out with the app's length.
    #[test]
    fn a_204_goes_out_without_framing() {
        for raw in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let (_, relay, _, out) = response(raw, false, false, false);
            assert_eq!(relay, Relay::None);
            let lower = out.to_ascii_lowercase();
            assert!(
                !lower.contains("content-length") && !lower.contains("transfer-encoding"),
                "{out}"
            );
        }
        // A 304 keeps the length of what it stands for.
        let (_, _, _, out) = response(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
            false,
        );
        assert!(out.contains("content-length: 9\r\n"), "{out}");
    }

    /// Issue 10, hole 2: after a HEAD, 204 or 304 the app may go on writing
    /// the body its head announced; the connection must not serve the next
    /// request, or that body becomes the next client's response.
    #[test]
    fn connections_are_not_reused_after_bodiless_responses() {
        let reusable = |raw: &str, head_request: bool| {
            final_head(response(raw, head_request, false, false).0).reusable
        };
        assert!(reusable(
            "HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n",
            false
        ));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n",
            true
        ));
        assert!(!reusable("HTTP/1.1 204 No Content\r\n\r\n", false));
        assert!(!reusable(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        ));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
            false
        ));
        assert!(!reusable(
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
            false
        ));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            false
        ));
    }

    #[test]
    fn hsts_is_added_unless_the_app_sent_its_own() {
        let asked = Asked {
            hsts: b"max-age=60",
            ..Asked::default()
        };
        let mut out = Vec::new();
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        parse_response(plain.as_bytes(), &asked, b"D", &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("\r\nstrict-transport-security: max-age=60\r\n"),
            "{text}"
        );
        let own =
            "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5\r\nContent-Length: 0\r\n\r\n";
        parse_response(own.as_bytes(), &asked, b"D", &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap().to_ascii_lowercase();
        assert_eq!(
            text.matches("strict-transport-security").count(),
            1,
            "{text}"
        );
        assert!(text.contains("max-age=5"), "{text}");
        parse_response(plain.as_bytes(), &Asked::default(), b"D", &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("strict"));
    }

    #[test]
    fn own_responses_are_complete() {
        let mut out = Vec::new();
        let own = Own {
            retry_after: true,
            ..Own::text(503, "Service Unavailable", "Server busy", false)
        };
        own_response(&own, b"D", b"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 11\r\ndate: D\r\nretry-after: 1\r\n\r\nServer busy"
        );
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut dates = DateCache::default();
        let text = String::from_utf8(dates.now().to_vec()).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
