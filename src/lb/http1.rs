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

use std::net::IpAddr;
use std::ops::Range;
use std::time::SystemTime;

use hyper::Method;

/// The largest request head accepted (`431` beyond).
pub const MAX_HEAD: usize = 32 * 1024;
/// The most header fields in a head (`431` beyond).
pub const MAX_HEADERS: usize = 100;

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
    ForwardedFor,
    Date,
    ContentType,
    WorkerBusy,
    WorkerRecycle,
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
        7 if eq("upgrade") || eq("trailer") => Field::Dropped,
        10 if eq("connection") || eq("keep-alive") => {
            if eq("connection") {
                Field::Connection
            } else {
                Field::Dropped
            }
        }
        12 if eq("content-type") => Field::ContentType,
        14 if eq("content-length") => Field::ContentLength,
        15 if eq("x-forwarded-for") => Field::ForwardedFor,
        15 if eq("rip-worker-busy") => Field::WorkerBusy,
        16 if eq("proxy-connection") => Field::Dropped,
        17 if eq("transfer-encoding") => Field::TransferEncoding,
        18 if eq("rip-worker-recycle") => Field::WorkerRecycle,
        n if n > 11 && name[..11].eq_ignore_ascii_case("rip-worker-") => Field::Dropped,
        _ => Field::Kept,
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

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
/// On success the head the worker gets is in `out` (cleared first).
pub fn parse_request(
    buf: &[u8],
    client: Option<IpAddr>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
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

    let mut connection: Vec<&[u8]> = Vec::new();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut forwarded_for: Option<&[u8]> = None;
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
            Field::Host => hosts += 1,
            Field::Expect => {
                expect_continue = f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            }
            Field::ForwardedFor => forwarded_for = Some(f.value),
            _ => {}
        }
    }
    if chunked && length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && http10 {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    let body = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = if http10 {
        listed(&connection, "keep-alive")
    } else {
        !listed(&connection, "close")
    };

    out.clear();
    out.extend_from_slice(method_str.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target_str.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in request.headers.iter() {
        let kept = match field(f.name) {
            Field::Kept | Field::Host | Field::Date | Field::ContentType => {
                !listed(&connection, f.name)
            }
            _ => false,
        };
        if kept {
            put_header(out, f.name.as_bytes(), f.value);
        }
    }
    match body {
        Framing::Length(n) => put_number(out, b"content-length", n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A bodiless POST still says so, as the client did.
        Framing::None if length.is_some() => out.extend_from_slice(b"content-length: 0\r\n"),
        _ => {}
    }
    if let Some(ip) = client {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = forwarded_for {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        use std::io::Write;
        let _ = write!(out, "{ip}");
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(RequestHead {
        len,
        method,
        target,
        http10,
        body,
        keep_alive,
        expect_continue,
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

/// Parses a worker's response head at the start of `buf` and writes the
/// head the client gets to `out` (cleared first). `head_request`: the
/// request was `HEAD` (no body follows whatever the headers say);
/// `client_http10`: the client speaks HTTP/1.0; `close`: the client
/// connection closes after this response. Returns the parsed head and how
/// the body is relayed.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_http10: bool,
    mut close: bool,
    date: &[u8],
    out: &mut Vec<u8>,
) -> Result<(Parsed, Relay, bool), &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok((Parsed::Incomplete, Relay::None, close)),
        Err(_) => return Err("malformed response head"),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err("the app switched protocols");
        }
        return Ok((Parsed::Interim(len), Relay::None, close));
    }
    let mut connection: Vec<&[u8]> = Vec::new();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut busy = false;
    let mut recycle = false;
    let mut content_type = None;
    for f in response.headers.iter() {
        match field(f.name) {
            Field::Connection => connection.push(f.value),
            Field::ContentLength => length = content_length(f.value, length).ok().or(length),
            Field::TransferEncoding => {
                chunked = f.value.trim_ascii().eq_ignore_ascii_case(b"chunked")
                    || f.value
                        .trim_ascii()
                        .to_ascii_lowercase()
                        .ends_with(b", chunked")
            }
            Field::WorkerBusy => busy = f.value.trim_ascii() == b"1",
            Field::WorkerRecycle => recycle = f.value.trim_ascii() == b"1",
            Field::ContentType => content_type = Some(offset_of(buf, f.value)),
            _ => {}
        }
    }
    let http10 = response.version == Some(0);
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
    let reusable = body != Framing::UntilClose
        && if http10 {
            listed(&connection, "keep-alive")
        } else {
            !listed(&connection, "close")
        };
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
    for f in response.headers.iter() {
        let kept = match field(f.name) {
            Field::Kept
            | Field::Host
            | Field::Expect
            | Field::ForwardedFor
            | Field::ContentType => !listed(&connection, f.name),
            // The length stands as given unless the body is re-framed.
            Field::ContentLength => matches!(relay, Relay::Pass(Framing::Length(_)) | Relay::None),
            _ => false,
        };
        if kept {
            put_header(out, f.name.as_bytes(), f.value);
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    match relay {
        Relay::Pass(Framing::Chunked) | Relay::Chunk => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        Relay::None if length.is_none() && !no_body => {
            out.extend_from_slice(b"content-length: 0\r\n")
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
        }
    }
}

/// Writes `own` as a complete response to `out` (cleared first).
pub fn own_response(own: &Own<'_>, date: &[u8], out: &mut Vec<u8>) {
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
    if own.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
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

/// Follows a chunked body through arbitrary splits of its bytes, to find
/// where it ends and to refuse a malformed one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Data bytes left in the current chunk, or the size being read.
    size: u64,
    /// Bytes in the current size or trailer line (bounded).
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// The longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of the body from the start of `input`; returns how
    /// many belong to it (all of them unless the body ended inside), and
    /// calls `data` with the ranges that are chunk data.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match hex(b) {
                    Some(d) => {
                        if self.line >= 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.line += 1;
                    }
                    None if self.line == 0 => return Err("bad chunk size"),
                    None if b == b'\r' => self.state = SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = Extension,
                    None => return Err("bad chunk size"),
                },
                Extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err("chunk extension too long");
                    }
                    if b == b'\r' {
                        self.state = SizeLf;
                    } else if b == b'\n' {
                        return Err("bad chunk line");
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err("bad chunk line");
                    }
                    self.line = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = (self.size).min((input.len() - i) as u64) as usize;
                    data(i..i + n);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err("bad chunk end");
                    }
                    self.state = Size;
                }
                TrailerStart => {
                    if b == b'\r' {
                        self.state = FinalLf;
                    } else {
                        self.line = 1;
                        self.state = Trailer;
                    }
                }
                Trailer => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err("trailer too long");
                    }
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err("bad trailer line");
                    }
                    self.line = 0;
                    self.state = TrailerStart;
                }
                FinalLf => {
                    if b != b'\n' {
                        return Err("bad chunked body end");
                    }
                    self.state = Done;
                }
                Done => {}
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes the chunk header for `len` bytes (`len` in hex, CRLF).
pub fn chunk_header(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Result<Option<(RequestHead, String)>, HeadError> {
        let mut out = Vec::new();
        parse_request(raw.as_bytes(), Some("10.1.2.3".parse().unwrap()), &mut out)
            .map(|head| head.map(|h| (h, String::from_utf8(out).unwrap())))
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
            "GET /ping?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nx-forwarded-for: 10.1.2.3\r\n\r\n"
        );
    }

    #[test]
    fn the_target_and_path_are_found() {
        let raw = "GET /a/b?c=d HTTP/1.1\r\n\r\n";
        let (head, _) = ok(raw);
        assert_eq!(head.target(raw.as_bytes()), "/a/b?c=d");
        assert_eq!(head.path(raw.as_bytes()), "/a/b");
    }

    #[test]
    fn framing_is_checked_and_normalized() {
        let (head, out) = ok("POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(head.body, Framing::Length(5));
        assert_eq!(
            head.len,
            "POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\n".len()
        );
        assert!(out.contains("content-length: 5\r\n"));
        let (head, out) = ok("POST /e HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.body, Framing::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        let (head, _) = ok("POST /e HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(head.body, Framing::Length(5));
        let (head, out) = ok("POST /e HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
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
            !ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
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
    fn expect_continue_is_answered_here_and_forwarded_for_is_appended() {
        let (head, out) = ok("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n");
        assert!(head.expect_continue);
        assert!(!out.to_ascii_lowercase().contains("expect"));
        assert!(out.contains("x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"));
    }

    fn response(
        raw: &str,
        head_request: bool,
        http10: bool,
        close: bool,
    ) -> (Parsed, Relay, bool, String) {
        let mut out = Vec::new();
        let (parsed, relay, close) = parse_response(
            raw.as_bytes(),
            head_request,
            http10,
            close,
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
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nX-App: kept\r\ndate: Sat, 28 Nov 2026 12:00:00 GMT\r\n\r\n"
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
        assert!(out.contains("Content-Length: 99\r\n"));
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
        assert!(out.contains("Content-Length: 0\r\n"), "{out}");
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
        assert!(parse_response(
            b"HTTP/1.1 101 Switching\r\n\r\n",
            false,
            false,
            false,
            b"d",
            &mut out
        )
        .is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false, false, false, b"d", &mut out).is_err());
    }

    fn dechunk(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), &'static str> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in pieces {
            let n = chunked.feed(piece, |r| data.extend_from_slice(&piece[r]))?;
            used += n;
            if chunked.is_done() {
                break;
            }
        }
        assert!(chunked.is_done(), "the body did not end");
        Ok((data, used))
    }

    #[test]
    fn chunked_bodies_are_followed_across_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let whole = body.len() - 4;
        for split in 0..body.len() {
            let (data, used) = dechunk(&[&body[..split], &body[split..]]).expect("valid");
            assert_eq!(data, b"hello world", "split at {split}");
            assert_eq!(used, whole, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(dechunk(&bytewise).expect("valid").0, b"hello world");
        assert_eq!(dechunk(&[b"0\r\n\r\n"]).expect("valid"), (Vec::new(), 5));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhello!\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXY",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            let mut chunked = Chunked::default();
            assert!(
                chunked.feed(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn own_responses_are_complete() {
        let mut out = Vec::new();
        let own = Own {
            retry_after: true,
            ..Own::text(503, "Service Unavailable", "Server busy", false)
        };
        own_response(&own, b"D", &mut out);
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
