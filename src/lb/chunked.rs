//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: plain
//! data, no I/O.
//!
//! [`Chunked`] follows a chunked body through any split of its bytes and
//! reports its data and its end. What it accepts is exactly the RFC's
//! grammar — a chunk size of hex digits, extensions of `;name` or
//! `;name=value` (token or quoted string) with optional whitespace only
//! where the grammar has `BWS`, every line ended by CR LF, trailer fields as
//! header fields — and everything else is an error, because a proxy that
//! forwards a chunked body some parser behind it reads differently has
//! smuggled a request. The LB never forwards the bytes it was given: it
//! re-encodes the data it decoded (`lb::body`), with no extensions, and
//! the trailer fields it keeps in a canonical form.

use std::ops::Range;

/// What a chunked body yields, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Data bytes at this range of the input.
    Data(Range<usize>),
    /// The body ended; the trailer fields kept (each `name: value\r\n`,
    /// possibly none).
    End(&'a [u8]),
}

/// The longest chunk-size line (size and extensions) accepted.
pub const MAX_LINE: usize = 4096;
/// The most bytes of trailer fields accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 64;
/// Hex digits in a chunk size (16 fill a u64).
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// The chunk size's hex digits.
    #[default]
    Size,
    /// Whitespace after the size or an extension, before `;` (`BWS ";"`).
    SizeSpace,
    /// After `;`: whitespace, then an extension's name.
    NameStart,
    Name,
    /// Whitespace after a name: `=` or `;` must follow.
    NameSpace,
    /// After `=`: whitespace, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    QuotedEscape,
    /// After a closing quote.
    AfterQuote,
    /// CR seen at the end of the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body being decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// Data bytes left in the current chunk, or the size being read.
    size: u64,
    /// Bytes in the current size line.
    line: usize,
    /// The trailer section as received (lines with their CR LF), then the
    /// fields kept from it.
    trailers: Vec<u8>,
}

/// `tchar` (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of the body from the start of `input`: returns how
    /// many belong to it (all of them unless the body ended inside), and
    /// hands `piece` the data ranges and, last, the end.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut piece: impl FnMut(Piece<'_>),
    ) -> Result<usize, &'static str> {
        use State::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            if matches!(
                self.state,
                SizeSpace
                    | NameStart
                    | Name
                    | NameSpace
                    | ValueStart
                    | Token
                    | Quoted
                    | QuotedEscape
                    | AfterQuote
            ) {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err("chunk extension too long");
                }
            }
            let space = b == b' ' || b == b'\t';
            self.state = match self.state {
                Size => match hex(b) {
                    Some(d) => {
                        if self.line == MAX_SIZE_DIGITS {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.line += 1;
                        Size
                    }
                    None if self.line == 0 => return Err("bad chunk size"),
                    None if b == b'\r' => SizeLf,
                    None if b == b';' => NameStart,
                    None if space => SizeSpace,
                    None => return Err("bad chunk size"),
                },
                SizeSpace if space => SizeSpace,
                SizeSpace if b == b';' => NameStart,
                SizeSpace => return Err("bad chunk extension"),
                NameStart if space => NameStart,
                NameStart | Name if is_tchar(b) => Name,
                Name if b == b'\r' => SizeLf,
                Name | NameSpace if b == b';' => NameStart,
                Name | NameSpace if b == b'=' => ValueStart,
                Name | NameSpace if space => NameSpace,
                NameStart | Name | NameSpace => return Err("bad chunk extension"),
                ValueStart if space => ValueStart,
                ValueStart if b == b'"' => Quoted,
                ValueStart | Token if is_tchar(b) => Token,
                Token | AfterQuote if b == b'\r' => SizeLf,
                Token | AfterQuote if b == b';' => NameStart,
                Token | AfterQuote if space => SizeSpace,
                ValueStart | Token | AfterQuote => return Err("bad chunk extension"),
                Quoted if b == b'"' => AfterQuote,
                Quoted if b == b'\\' => QuotedEscape,
                // qdtext: HTAB, SP, VCHAR but `"` and `\`, obs-text.
                Quoted | QuotedEscape if space || (0x21..=0x7e).contains(&b) || b >= 0x80 => Quoted,
                Quoted | QuotedEscape => return Err("bad chunk extension"),
                SizeLf => {
                    if b != b'\n' {
                        return Err("bad chunk line end");
                    }
                    self.line = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                Data => {
                    let n = self.size.min((input.len() - i) as u64) as usize;
                    piece(Piece::Data(i..i + n));
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataCr => return Err("chunk data longer than its size"),
                DataLf if b == b'\n' => Size,
                DataLf => return Err("bad chunk end"),
                TrailerStart if b == b'\r' => FinalLf,
                // A line starting with whitespace would continue the last
                // field (obs-fold): refused, as in a head.
                TrailerStart if space || b == b'\n' => return Err("bad trailer line"),
                TrailerStart | Trailer => {
                    if b == b'\n' {
                        return Err("bare LF in the trailers");
                    }
                    if self.trailers.len() >= MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    self.trailers.push(b);
                    if b == b'\r' {
                        TrailerLf
                    } else {
                        Trailer
                    }
                }
                TrailerLf if b == b'\n' => {
                    if self.trailers.len() >= MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    self.trailers.push(b);
                    TrailerStart
                }
                TrailerLf => return Err("bare CR in the trailers"),
                FinalLf if b == b'\n' => {
                    self.keep_trailers()?;
                    piece(Piece::End(&self.trailers));
                    Done
                }
                FinalLf => return Err("bad chunked body end"),
                Done => Done,
            };
            i += 1;
        }
        Ok(i)
    }

    /// Checks the trailer section as header fields and keeps the ones that
    /// may follow a body: a trailer cannot change how the message was
    /// framed or routed, or who sent it (RFC 9110 §6.5.1).
    fn keep_trailers(&mut self) -> Result<(), &'static str> {
        if self.trailers.is_empty() {
            return Ok(());
        }
        self.trailers.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let kept = match httparse::parse_headers(&self.trailers, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => {
                let mut kept = Vec::new();
                for f in fields.iter().filter(|f| allowed_in_trailers(f.name)) {
                    kept.extend_from_slice(f.name.as_bytes());
                    kept.extend_from_slice(b": ");
                    kept.extend_from_slice(f.value);
                    kept.extend_from_slice(b"\r\n");
                }
                kept
            }
            Err(httparse::Error::TooManyHeaders) => return Err("too many trailer fields"),
            _ => return Err("malformed trailer fields"),
        };
        // Re-written `name: value`, a field may grow by a byte: what goes
        // on must stay within what the receiver (the LB too) accepts.
        if kept.len() > MAX_TRAILERS {
            return Err("trailers too large");
        }
        self.trailers = kept;
        Ok(())
    }
}

/// Whether a trailer field may be forwarded.
fn allowed_in_trailers(name: &str) -> bool {
    const BARRED: [&str; 22] = [
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
    let prefixed = |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p);
    !name.contains('_')
        && !BARRED.iter().any(|b| name.eq_ignore_ascii_case(b))
        && !prefixed("x-forwarded-")
        && !prefixed("rip-worker-")
}

/// Writes the chunk-size line for `len` data bytes.
pub fn size_line(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `pieces` in order: the data, the kept trailers, and the
    /// bytes used.
    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>, usize), &'static str> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut used = 0;
        for piece in pieces {
            let n = chunked.feed(piece, |p| match p {
                Piece::Data(r) => data.extend_from_slice(&piece[r]),
                Piece::End(t) => trailers = Some(t.to_vec()),
            })?;
            used += n;
            if chunked.is_done() {
                break;
            }
        }
        match trailers {
            Some(trailers) => Ok((data, trailers, used)),
            None => Err("the body did not end"),
        }
    }

    fn whole(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize), &'static str> {
        decode(&[body])
    }

    #[test]
    fn bodies_are_followed_across_any_split() {
        let body =
            b"5\r\nhello\r\n6;ext=1;q=\"a \\\" b\"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let (data, trailers, used) = decode(&[&body[..split], &body[split..]]).expect("valid");
            assert_eq!(data, b"hello world", "split at {split}");
            assert_eq!(trailers, b"X-Trailer: t\r\n", "split at {split}");
            assert_eq!(used, end, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(decode(&bytewise).expect("valid").0, b"hello world");
        assert_eq!(
            whole(b"0\r\n\r\n").expect("valid"),
            (Vec::new(), Vec::new(), 5)
        );
    }

    #[test]
    fn the_rfc_grammar_of_extensions_is_accepted() {
        for line in [
            &b"5;a"[..],
            b"5;a=b",
            b"5 ;a",
            b"5\t; a = b",
            b"5;a;b=c;d=\"q\"",
            b"5;a=\"\"",
            b"5;a=\"\\\\\"",
            b"0005",
            b"0000000000000005",
            b"A;x",
        ] {
            let mut body = line.to_vec();
            let size = if line.starts_with(b"A") { 10 } else { 5 };
            body.extend_from_slice(b"\r\n");
            body.extend(std::iter::repeat_n(b'x', size));
            body.extend_from_slice(b"\r\n0\r\n\r\n");
            assert!(whole(&body).is_ok(), "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// The lines of issue 10's "lenient chunk lines": each is read one way
    /// by some parsers and another way by others.
    #[test]
    fn malformed_chunk_lines_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5 3\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5;a \r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\x00\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\x7f\"\r\nhello\r\n0\r\n\r\n",
            b"5;=b\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\rhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!\r\n",
            b"5\r\nhelloXY",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                whole(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Issue 10, hole 1: a bare LF in the trailers ended the body early for
    /// a parser that takes LF as a line end, and the rest was a second
    /// request — the exact bytes of the report.
    #[test]
    fn bare_line_ends_in_trailers_are_refused() {
        for bad in [
            &b"5\r\nhello\r\n0\r\n\nGET /slow?ms=700 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"0\r\nX: y\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nX: y\n\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nX: y\r\r\n\r\n",
            b"0\r\n\r\r\n",
            b"0\r\n\rX",
        ] {
            assert!(
                whole(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_trailers_are_refused() {
        for bad in [
            &b"0\r\nX: a\r\n b\r\n\r\n"[..],
            b"0\r\n X: a\r\n\r\n",
            b"0\r\nNo colon\r\n\r\n",
            b"0\r\nX : a\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\n: a\r\n\r\n",
        ] {
            assert!(
                whole(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = b"0\r\n".to_vec();
        while huge.len() <= MAX_TRAILERS + 16 {
            huge.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        huge.extend_from_slice(b"\r\n");
        assert_eq!(whole(&huge), Err("trailers too large"));
        let many: Vec<u8> = std::iter::once(b"0\r\n".to_vec())
            .chain((0..MAX_TRAILER_FIELDS + 1).map(|i| format!("X-{i}: v\r\n").into_bytes()))
            .chain(std::iter::once(b"\r\n".to_vec()))
            .flatten()
            .collect();
        assert_eq!(whole(&many), Err("too many trailer fields"));
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(whole(long.as_bytes()), Err("chunk extension too long"));
    }

    /// Found by the fuzz targets: re-written trailers outgrew the limit the
    /// LB's own decoder applies; a field named exactly a prefix passed.
    #[test]
    fn trailers_stay_within_their_limit_once_re_written() {
        let mut raw = b"0\r\nX:".to_vec();
        // At the limit as received, one byte over it once re-written.
        raw.extend(std::iter::repeat_n(b'v', MAX_TRAILERS - 4));
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(
            matches!(whole(&raw), Err("trailers too large")),
            "re-written trailers over the limit were kept"
        );
        let (_, kept, _) =
            whole(b"0\r\nRip-Worker-: 1\r\nX-Forwarded-: 2\r\nX: 3\r\n\r\n").expect("valid");
        assert_eq!(kept, b"X: 3\r\n");
    }

    #[test]
    fn framing_and_routing_trailers_are_dropped() {
        let (_, trailers, _) = whole(
            b"0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nX-Ok: yes\r\nX_Forwarded_For: 1.2.3.4\r\nx-forwarded-for: 1.2.3.4\r\nRip-Worker-Busy: 1\r\nServer-Timing: db;dur=53\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(
            String::from_utf8(trailers).unwrap(),
            "X-Ok: yes\r\nServer-Timing: db;dur=53\r\n"
        );
    }

    #[test]
    fn size_lines_are_hex() {
        let mut out = Vec::new();
        size_line(255, &mut out);
        size_line(0, &mut out);
        assert_eq!(out, b"ff\r\n0\r\n");
    }
}
