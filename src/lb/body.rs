//! Bodies on their way through the LB: which of the bytes that arrive
//! belong to the body, and the bytes that go on — plain data, no I/O.
//!
//! A body with a length passes as it is. A chunked body is decoded
//! strictly ([`Chunked`]) and re-encoded: the receiver gets one chunk per
//! piece of data, `<hex size>\r\n<data>\r\n`, with no extensions, then
//! `0\r\n`, the trailer fields kept, and `\r\n` — never a framing byte the
//! sender chose. [`Output`] holds what goes on as slices of the input
//! between framing of the LB's own, so data is not copied (but for small
//! pieces, which are gathered so that a body of one-byte chunks does not
//! become thousands of slices).

use std::ops::Range;

use super::chunked::{self, Chunked, Piece};
use super::http1::{Framing, Own, Relay};

/// Data pieces up to this size are copied into the framing buffer instead
/// of being sent as slices of their own.
const COPY_BELOW: usize = 512;

/// The bytes to send for some input: pieces of the input, and bytes of the
/// LB's own (framing), in order.
#[derive(Debug, Default)]
pub struct Output {
    own: Vec<u8>,
    parts: Vec<Part>,
    /// Body data bytes among them.
    data: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Input(usize, usize),
    Own(usize, usize),
}

impl Output {
    pub fn clear(&mut self) {
        self.own.clear();
        self.parts.clear();
        self.data = 0;
    }

    fn input(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some(Part::Input(_, end)) if *end == range.start => *end = range.end,
            _ => self.parts.push(Part::Input(range.start, range.end)),
        }
    }

    fn own(&mut self, bytes: &[u8]) {
        let start = self.own.len();
        self.own.extend_from_slice(bytes);
        self.owned_from(start);
    }

    /// Makes the bytes of `own` from `start` on the next part.
    fn owned_from(&mut self, start: usize) {
        let end = self.own.len();
        match self.parts.last_mut() {
            Some(Part::Own(_, last)) if *last == start => *last = end,
            _ => self.parts.push(Part::Own(start, end)),
        }
    }

    /// Data bytes of the body, at `range` of `input`.
    fn data(&mut self, input: &[u8], range: Range<usize>) {
        self.data += range.len() as u64;
        if range.len() < COPY_BELOW {
            self.own(&input[range]);
        } else {
            self.input(range);
        }
    }

    /// Passes on the data at the start of `input` of a body with
    /// `remaining` bytes to come (counted down); how many were taken.
    fn pass(&mut self, input: &[u8], remaining: &mut u64) -> usize {
        let n = (*remaining).min(input.len() as u64) as usize;
        self.data += n as u64;
        self.input(0..n);
        *remaining -= n as u64;
        n
    }

    /// One chunk of `range` of `input`, in canonical chunked form.
    fn chunk(&mut self, input: &[u8], range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let start = self.own.len();
        chunked::size_line(range.len(), &mut self.own);
        self.owned_from(start);
        self.data(input, range);
        self.own(b"\r\n");
    }

    /// The end of a chunked body, with its trailer fields.
    fn last_chunk(&mut self, trailers: &[u8]) {
        self.own(b"0\r\n");
        self.own(trailers);
        self.own(b"\r\n");
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes to send.
    pub fn len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match *p {
                Part::Input(s, e) | Part::Own(s, e) => e - s,
            })
            .sum()
    }

    /// Body data bytes among them.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// The bytes to send, in order, given the input they were made from.
    pub fn parts<'a>(&'a self, input: &'a [u8]) -> Parts<'a> {
        Parts {
            output: self,
            input,
            next: 0,
        }
    }

    /// Appends the bytes to send to `out`.
    pub fn copy_into(&self, input: &[u8], out: &mut Vec<u8>) {
        for part in self.parts(input) {
            out.extend_from_slice(part);
        }
    }
}

/// The bytes an [`Output`] sends. (A named type rather than a closure's:
/// futures that hold it across an await stay `Send`.)
#[derive(Clone)]
pub struct Parts<'a> {
    output: &'a Output,
    input: &'a [u8],
    next: usize,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let part = *self.output.parts.get(self.next)?;
        self.next += 1;
        Some(match part {
            Part::Input(s, e) => &self.input[s..e],
            Part::Own(s, e) => &self.output.own[s..e],
        })
    }
}

/// What is wrong with a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    Malformed,
    TooLarge,
}

impl BodyError {
    pub fn answer(self) -> Own<'static> {
        match self {
            BodyError::Malformed => Own::text(400, "Bad Request", "Bad Request", true),
            BodyError::TooLarge => Own::text(413, "Payload Too Large", "Payload Too Large", true),
        }
    }
}

/// Where a request body stands: how much is left, or where its chunked
/// encoding is.
#[derive(Debug, Clone, Default)]
pub struct RequestBody {
    chunked: Option<Chunked>,
    remaining: u64,
    /// Bytes of a chunked body read so far, framing included, against
    /// `max`: extensions and trailers cost what they weigh.
    wire: u64,
    max: u64,
    done: bool,
}

impl RequestBody {
    pub fn new(framing: Framing, max: u64) -> RequestBody {
        match framing {
            Framing::Length(n) => RequestBody {
                remaining: n,
                max,
                ..RequestBody::default()
            },
            Framing::Chunked => RequestBody {
                chunked: Some(Chunked::default()),
                max,
                ..RequestBody::default()
            },
            Framing::None | Framing::UntilClose => RequestBody {
                done: true,
                ..RequestBody::default()
            },
        }
    }

    /// The whole body has been taken.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes the bytes at the start of `input` that belong to the body and
    /// adds what goes on to `out`; returns how many were taken.
    pub fn take(&mut self, input: &[u8], out: &mut Output) -> Result<usize, BodyError> {
        if self.done {
            return Ok(0);
        }
        match &mut self.chunked {
            Some(chunked) => {
                let n = chunked
                    .feed(input, |piece| match piece {
                        Piece::Data(range) => out.chunk(input, range),
                        Piece::End(trailers) => out.last_chunk(trailers),
                    })
                    .map_err(|_| BodyError::Malformed)?;
                self.wire += n as u64;
                if self.wire > self.max {
                    return Err(BodyError::TooLarge);
                }
                self.done = chunked.is_done();
                Ok(n)
            }
            None => {
                let n = out.pass(input, &mut self.remaining);
                self.done = self.remaining == 0;
                Ok(n)
            }
        }
    }
}

/// Turns the worker's response body into what the client gets.
#[derive(Debug)]
pub struct Relayer {
    relay: Relay,
    remaining: u64,
    chunked: Chunked,
    done: bool,
}

impl Relayer {
    pub fn new(relay: Relay, framing: Framing) -> Relayer {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Relayer {
            relay,
            remaining,
            chunked: Chunked::default(),
            done: relay == Relay::None,
        }
    }

    /// The response has been read to its end.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the worker's connection can serve another request after
    /// this body (not when only its close ends the body).
    pub fn reusable(&self) -> bool {
        !matches!(self.relay, Relay::Chunk | Relay::UntilClose)
    }

    /// Takes the bytes at the start of `input` that belong to the body and
    /// adds what the client gets to `out`; returns how many were taken.
    pub fn take(&mut self, input: &[u8], out: &mut Output) -> Result<usize, &'static str> {
        match self.relay {
            Relay::None => Ok(0),
            Relay::Pass(Framing::Chunked) | Relay::Dechunk => {
                let dechunk = self.relay == Relay::Dechunk;
                let n = self.chunked.feed(input, |piece| match piece {
                    Piece::Data(range) if dechunk => out.data(input, range),
                    Piece::Data(range) => out.chunk(input, range),
                    Piece::End(_) if dechunk => {}
                    Piece::End(trailers) => out.last_chunk(trailers),
                })?;
                self.done = self.chunked.is_done();
                Ok(n)
            }
            Relay::Pass(_) => {
                let n = out.pass(input, &mut self.remaining);
                self.done = self.remaining == 0;
                Ok(n)
            }
            Relay::Chunk => {
                out.chunk(input, 0..input.len());
                Ok(input.len())
            }
            Relay::UntilClose => {
                out.data += input.len() as u64;
                out.input(0..input.len());
                Ok(input.len())
            }
        }
    }

    /// The worker closed the connection: the end of the body (what the
    /// client still gets is added to `out`), or an error.
    pub fn end(&mut self, out: &mut Output) -> Result<(), &'static str> {
        match self.relay {
            Relay::Chunk => out.last_chunk(b""),
            Relay::UntilClose | Relay::None => {}
            _ => return Err("mid-body"),
        }
        self.done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(out: &Output, input: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        out.copy_into(input, &mut bytes);
        bytes
    }

    #[test]
    fn a_chunked_request_body_is_re_encoded() {
        let input = b"5;ext=\"x\"\r\nhello\r\n006\r\n world\r\n0\r\nX-T: 1\r\nHost: h\r\n\r\nGET";
        let mut body = RequestBody::new(Framing::Chunked, 1 << 20);
        let mut out = Output::default();
        let n = body.take(input, &mut out).expect("valid");
        assert_eq!(n, input.len() - 3);
        assert!(body.is_done());
        assert_eq!(out.data_len(), 11);
        assert_eq!(
            String::from_utf8(sent(&out, input)).unwrap(),
            "5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
        );
    }

    #[test]
    fn large_data_is_not_copied_and_small_data_is_gathered() {
        let data = vec![b'x'; 4096];
        let mut input = b"1000\r\n".to_vec();
        input.extend_from_slice(&data);
        input.extend_from_slice(b"\r\n1\r\na\r\n1\r\nb\r\n");
        let mut body = RequestBody::new(Framing::Chunked, 1 << 20);
        let mut out = Output::default();
        body.take(&input, &mut out).expect("valid");
        // size line, the data itself, then CRLF and both small chunks as one part.
        let parts: Vec<&[u8]> = out.parts(&input).collect();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[1].as_ptr(), input[6..].as_ptr());
        assert_eq!(parts[2], b"\r\n1\r\na\r\n1\r\nb\r\n");
    }

    /// Issue 10, hole 4: `--max-body` counted chunk data only, so extension
    /// bytes multiplied what a client could make the LB read.
    #[test]
    fn chunked_framing_counts_against_the_limit() {
        let ext = "a".repeat(4000);
        let mut input = Vec::new();
        for _ in 0..4 {
            input.extend_from_slice(format!("1;{ext}\r\nx\r\n").as_bytes());
        }
        let mut body = RequestBody::new(Framing::Chunked, 10_000);
        let mut out = Output::default();
        assert_eq!(body.take(&input, &mut out), Err(BodyError::TooLarge));
    }

    #[test]
    fn a_body_with_a_length_passes_as_it_is() {
        let mut body = RequestBody::new(Framing::Length(5), 100);
        let mut out = Output::default();
        assert_eq!(body.take(b"hel", &mut out), Ok(3));
        assert_eq!(sent(&out, b"hel"), b"hel");
        out.clear();
        assert_eq!(body.take(b"loGET", &mut out), Ok(2));
        assert!(body.is_done());
        assert_eq!(sent(&out, b"loGET"), b"lo");
    }

    #[test]
    fn responses_are_relayed_as_the_client_needs() {
        let input = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let mut out = Output::default();
        let mut relayer = Relayer::new(Relay::Pass(Framing::Chunked), Framing::Chunked);
        assert_eq!(relayer.take(input, &mut out), Ok(input.len()));
        assert!(relayer.is_done() && relayer.reusable());
        assert_eq!(sent(&out, input), b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");

        out.clear();
        let mut relayer = Relayer::new(Relay::Dechunk, Framing::Chunked);
        relayer.take(input, &mut out).expect("valid");
        assert_eq!(sent(&out, input), b"abc");

        out.clear();
        let mut relayer = Relayer::new(Relay::Chunk, Framing::UntilClose);
        relayer.take(b"abc", &mut out).expect("valid");
        relayer.end(&mut out).expect("a close ends it");
        assert!(!relayer.reusable());
        assert_eq!(sent(&out, b"abc"), b"3\r\nabc\r\n0\r\n\r\n");

        let mut relayer = Relayer::new(Relay::Pass(Framing::Length(9)), Framing::Length(9));
        out.clear();
        relayer.take(b"abc", &mut out).expect("valid");
        assert_eq!(relayer.end(&mut out), Err("mid-body"));
    }

    /// Issue 10, hole 1 on responses: `0\r\n\n` then a forged response
    /// desynchronized an h11 client.
    #[test]
    fn a_response_with_bare_lf_trailers_is_refused() {
        let input = b"3\r\nabc\r\n0\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
        let mut out = Output::default();
        let mut relayer = Relayer::new(Relay::Pass(Framing::Chunked), Framing::Chunked);
        assert!(relayer.take(input, &mut out).is_err());
    }
}
