//! Message bodies: `Content-Length`, chunked (RFC 9112 §7.1: chunk extensions are skipped,
//! trailer fields kept apart from the headers), or to the end of the connection (responses only).

use crate::{is_token, malformed, HttpError, Limits};
use std::io::{self, BufRead, Read, Write};

/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0 without a body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Up to the end of the connection (a response without a length).
    UntilClose,
}

/// Trailer fields of a chunked body, in order.
pub type Trailers = Vec<(String, String)>;

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk and the trailer section.
    Done,
}

/// Reads a chunked body from `R`, yielding the data; the trailers are kept for the caller.
#[derive(Debug)]
pub struct ChunkedReader<R> {
    inner: R,
    state: ChunkState,
    total: u64,
    max_total: Option<u64>,
    limits: Limits,
    trailers: Trailers,
}

impl<R: BufRead> ChunkedReader<R> {
    /// A decoder of the chunked body at the start of `inner`; trailers within `limits`
    /// (`max_head` bytes, `max_headers` fields), data without a total limit.
    pub fn new(inner: R, limits: &Limits) -> Self {
        Self {
            inner,
            state: ChunkState::Size,
            total: 0,
            max_total: None,
            limits: *limits,
            trailers: Vec::new(),
        }
    }

    /// Refuses a body longer than `max` bytes in all.
    pub fn with_max_total(mut self, max: Option<u64>) -> Self {
        self.max_total = max;
        self
    }

    /// The trailer fields, once the body has been read to its end.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// One CRLF-ended line without its CRLF, refused past `max` bytes or with a bare LF.
    fn read_line(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut line = Vec::new();
        loop {
            let avail = self.inner.fill_buf().map_err(HttpError::from_io)?;
            if avail.is_empty() {
                return Err(malformed("the connection closed inside a chunked body"));
            }
            let (used, ended) = match avail.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    line.extend_from_slice(&avail[..at]);
                    (at + 1, true)
                }
                None => {
                    line.extend_from_slice(avail);
                    (avail.len(), false)
                }
            };
            self.inner.consume(used);
            // The CR before the LF is not part of the limit.
            if line.len() > max + 1 {
                return Err(malformed(format!(
                    "a line in a chunked body is longer than {max} bytes"
                )));
            }
            if ended {
                break;
            }
        }
        match line.pop() {
            Some(b'\r') => Ok(line),
            _ => Err(malformed(
                "a line in a chunked body ends in a bare LF; end lines with CRLF",
            )),
        }
    }

    /// The trailer section, up to its blank line.
    fn read_trailers(&mut self) -> Result<(), HttpError> {
        let mut bytes = 0usize;
        loop {
            let line = self.read_line(self.limits.max_head)?;
            if line.is_empty() {
                return Ok(());
            }
            bytes += line.len() + 2;
            if bytes > self.limits.max_head {
                return Err(HttpError::HeadTooLarge(self.limits.max_head));
            }
            if self.trailers.len() == self.limits.max_headers {
                return Err(HttpError::TooManyHeaders(self.limits.max_headers));
            }
            self.trailers.push(parse_field(&line)?);
        }
    }

    fn step(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let line = self.read_line(MAX_CHUNK_LINE)?;
                    let size = parse_chunk_size(&line)?;
                    let total = self
                        .total
                        .checked_add(size)
                        .ok_or_else(|| malformed("the chunked body overflows"))?;
                    if let Some(max) = self.max_total.filter(|&max| total > max) {
                        return Err(HttpError::BodyTooLarge {
                            len: total,
                            limit: usize::try_from(max).unwrap_or(usize::MAX),
                        });
                    }
                    if size == 0 {
                        self.read_trailers()?;
                        self.state = ChunkState::Done;
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let avail = self.inner.fill_buf().map_err(HttpError::from_io)?;
                    if avail.is_empty() {
                        return Err(malformed("the connection closed inside a chunk"));
                    }
                    let n = avail
                        .len()
                        .min(buf.len())
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    buf[..n].copy_from_slice(&avail[..n]);
                    self.inner.consume(n);
                    self.total += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(n);
                }
                ChunkState::DataEnd => {
                    if !self.read_line(MAX_CHUNK_LINE)?.is_empty() {
                        return Err(malformed("a chunk is longer than its size"));
                    }
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step(buf).map_err(HttpError::into_io)
    }
}

/// The size on a chunk-size line: hex digits, then nothing or chunk extensions (skipped).
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned();
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() {
        return Err(malformed(format!("bad chunk size {:?}", shown())));
    }
    let significant = digits
        .iter()
        .position(|&b| b != b'0')
        .map_or(&[][..], |at| &digits[at..]);
    if significant.len() > 16 {
        return Err(malformed(format!("chunk size {:?} overflows", shown())));
    }
    let text = std::str::from_utf8(significant).map_err(|_| malformed("bad chunk size"))?;
    let size = if text.is_empty() {
        0
    } else {
        u64::from_str_radix(text, 16)
            .map_err(|_| malformed(format!("chunk size {:?} overflows", shown())))?
    };
    if !rest.is_empty() {
        let ext = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .map_or(&[][..], |at| &rest[at..]);
        let printable = ext.iter().all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f);
        if ext.first() != Some(&b';') || !printable {
            return Err(malformed(format!(
                "bad chunk extension on line {:?}",
                shown()
            )));
        }
    }
    Ok(size)
}

/// A `name: value` field line (a header or a trailer), strictly: a token name right before the
/// colon, a UTF-8 value without control characters other than tab.
pub(crate) fn parse_field(line: &[u8]) -> Result<(String, String), HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| malformed("a field is not UTF-8"))?;
    if text.starts_with([' ', '\t']) {
        return Err(malformed("folded field lines (obs-fold) are not accepted"));
    }
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| malformed(format!("field line {text:?} has no colon")))?;
    if !is_token(name) {
        return Err(malformed(format!("bad field name {name:?}")));
    }
    let value = value.trim_matches([' ', '\t']);
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(malformed(format!("field {name} has a control character")));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Decodes a whole chunked body held in `bytes`: the data (within `limits.max_body`) and the
/// trailer fields. Bytes after the body are ignored. Pure: an entry point for fuzzing.
pub fn decode_chunked(bytes: &[u8], limits: &Limits) -> Result<(Vec<u8>, Trailers), HttpError> {
    let mut reader = ChunkedReader::new(bytes, limits).with_max_total(Some(limits.max_body as u64));
    let mut data = Vec::new();
    reader.read_to_end(&mut data).map_err(HttpError::from_io)?;
    Ok((data, reader.trailers))
}

/// Writes a chunked body: every `write` is one chunk; [`ChunkedWriter::finish`] sends the last
/// chunk and the trailers.
#[derive(Debug)]
pub struct ChunkedWriter<W: Write> {
    inner: W,
}

impl<W: Write> ChunkedWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Ends the body: the zero-size chunk, `trailers`, the blank line. Returns the stream.
    pub fn finish(mut self, trailers: &[(&str, &str)]) -> io::Result<W> {
        let mut out = b"0\r\n".to_vec();
        for (name, value) in trailers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        self.inner.write_all(&out)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            // A zero-size chunk would end the body.
            return Ok(0);
        }
        let mut out = format!("{:x}\r\n", buf.len()).into_bytes();
        out.extend_from_slice(buf);
        out.extend_from_slice(b"\r\n");
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a body is read from: the bytes that came with the head, then the stream.
type Source<'a, R> = io::Chain<io::Cursor<Vec<u8>>, &'a mut R>;

#[derive(Debug)]
enum Inner<'a, R> {
    Length {
        src: io::Take<Source<'a, R>>,
        got: u64,
        len: u64,
    },
    Chunked(ChunkedReader<io::BufReader<Source<'a, R>>>),
    UntilClose(Source<'a, R>),
}

/// A message body being read, whatever its framing: `Read` yields exactly the body's bytes
/// (an error if the stream ends early or the framing is broken).
#[derive(Debug)]
pub struct Body<'a, R> {
    inner: Inner<'a, R>,
}

impl<'a, R: Read> Body<'a, R> {
    /// The body framed by `framing`, starting with `early` (read along with the head) and
    /// continuing in `stream`; chunked trailers within `limits`.
    pub fn new(early: Vec<u8>, stream: &'a mut R, framing: Framing, limits: &Limits) -> Self {
        let src = io::Cursor::new(early).chain(stream);
        let inner = match framing {
            Framing::Length(len) => Inner::Length {
                src: src.take(len),
                got: 0,
                len,
            },
            Framing::Chunked => Inner::Chunked(ChunkedReader::new(io::BufReader::new(src), limits)),
            Framing::UntilClose => Inner::UntilClose(src),
        };
        Self { inner }
    }

    /// The declared length, when there is one.
    pub fn length(&self) -> Option<u64> {
        match &self.inner {
            Inner::Length { len, .. } => Some(*len),
            _ => None,
        }
    }

    /// The trailer fields (after a chunked body is read to its end; none otherwise).
    pub fn trailers(&self) -> &[(String, String)] {
        match &self.inner {
            Inner::Chunked(chunked) => chunked.trailers(),
            _ => &[],
        }
    }

    /// The first trailer field named `name` (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole body, refused past `max` bytes (before reading, when the length is declared).
    pub fn read_all(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let too_large = |len| HttpError::BodyTooLarge { len, limit: max };
        let mut body = Vec::new();
        match &mut self.inner {
            Inner::Length { len, .. } => {
                if *len > max as u64 {
                    return Err(too_large(*len));
                }
                self.read_to_end(&mut body).map_err(HttpError::from_io)?;
            }
            Inner::Chunked(chunked) => {
                chunked.max_total = Some(max as u64);
                self.read_to_end(&mut body).map_err(HttpError::from_io)?;
            }
            Inner::UntilClose(src) => {
                src.take(max as u64 + 1)
                    .read_to_end(&mut body)
                    .map_err(HttpError::from_io)?;
                if body.len() > max {
                    return Err(too_large(body.len() as u64));
                }
            }
        }
        Ok(body)
    }
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Length { src, got, len } => {
                let n = src.read(buf)?;
                if n == 0 && *got < *len && !buf.is_empty() {
                    let message = format!("the body ended after {got} of {len} bytes");
                    return Err(malformed(message).into_io());
                }
                *got += n as u64;
                Ok(n)
            }
            Inner::Chunked(chunked) => chunked.read(buf),
            Inner::UntilClose(src) => src.read(buf),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decode(raw: &[u8]) -> Result<(Vec<u8>, Trailers), HttpError> {
        decode_chunked(raw, &Limits::default())
    }

    #[test]
    fn chunked_bodies_decode() {
        type Case<'a> = (&'a [u8], &'a [u8], &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (b"0\r\n\r\n", b"", &[]),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", &[]),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nIGNORED",
                b"hello world",
                &[],
            ),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", &[]),
            (
                b"a;name=value;x=\"q s\"\r\n0123456789\r\n0\r\n\r\n",
                b"0123456789",
                &[],
            ),
            (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"hello", &[]),
            (b"0005\r\nhello\r\n000\r\n\r\n", b"hello", &[]),
            (
                b"2\r\nhi\r\n0\r\nX-Content-Sha256: abc\r\nX-B:  v \r\n\r\n",
                b"hi",
                &[("X-Content-Sha256", "abc"), ("X-B", "v")],
            ),
            (b"00000000000000000000001\r\nx\r\n0\r\n\r\n", b"x", &[]),
        ];
        for (raw, data, trailers) in cases {
            let (got, got_trailers) = decode(raw).unwrap();
            assert_eq!(&got, data, "{:?}", String::from_utf8_lossy(raw));
            let want: Vec<(String, String)> = trailers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(got_trailers, want);
        }
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        let many: String = (0..65).map(|i| format!("T{i}: v\r\n")).collect();
        let many = format!("0\r\n{many}\r\n");
        let big = format!("0\r\nT: {}\r\n\r\n", "v".repeat(9000));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "closed inside a chunked body"),
            (b"\r\n".to_vec(), "bad chunk size"),
            (b"x\r\n".to_vec(), "bad chunk size"),
            (b"-1\r\n".to_vec(), "bad chunk size"),
            (b"+1\r\nx\r\n0\r\n\r\n".to_vec(), "bad chunk size"),
            (b"0x1\r\nx\r\n0\r\n\r\n".to_vec(), "bad chunk extension"),
            (b"1 \r\nx\r\n0\r\n\r\n".to_vec(), "bad chunk extension"),
            (b"1\x00\r\nx\r\n0\r\n\r\n".to_vec(), "bad chunk extension"),
            (b"1;a\x01\r\nx\r\n0\r\n\r\n".to_vec(), "bad chunk extension"),
            (b"10000000000000000\r\n".to_vec(), "overflows"),
            (
                b"ffffffffffffffff\r\nx\r\nffffffffffffffff\r\n".to_vec(),
                "longer than",
            ),
            (b"5\nhello\r\n0\r\n\r\n".to_vec(), "bare LF"),
            (b"5\r\nhello\n0\r\n\r\n".to_vec(), "bare LF"),
            (
                b"5\r\nhelloXX\r\n0\r\n\r\n".to_vec(),
                "longer than its size",
            ),
            (b"5\r\nhel".to_vec(), "closed inside a chunk"),
            (b"5\r\nhello\r\n".to_vec(), "closed inside a chunked body"),
            (b"0\r\n".to_vec(), "closed inside a chunked body"),
            (b"0\r\nT: v\r\n".to_vec(), "closed inside a chunked body"),
            (b"0\r\n folded: v\r\n\r\n".to_vec(), "obs-fold"),
            (b"0\r\nT : v\r\n\r\n".to_vec(), "bad field name"),
            (b"0\r\nNoColon\r\n\r\n".to_vec(), "no colon"),
            (b"0\r\nT: a\x01b\r\n\r\n".to_vec(), "control character"),
            (b"0\r\nT: v\n\r\n".to_vec(), "bare LF"),
            (long_ext.into_bytes(), "longer than 4096"),
            (many.into_bytes(), "more than 64"),
            (big.into_bytes(), "longer than 8192"),
        ];
        for (raw, want) in cases {
            let err = decode(&raw).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{:?}: {err} lacks {want:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
        }
        // The total is limited before the data is read.
        let small = Limits {
            max_body: 4,
            ..Limits::default()
        };
        let err = decode_chunked(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", &small).unwrap_err();
        assert!(matches!(err, HttpError::BodyTooLarge { len: 5, limit: 4 }));
        assert_eq!(err.response().unwrap().status, 413);
    }

    #[test]
    fn the_writer_and_the_reader_agree() {
        let mut wire = Vec::new();
        let mut w = ChunkedWriter::new(&mut wire);
        w.write_all(b"hello").unwrap();
        w.write_all(b"").unwrap();
        w.write_all(&[b'x'; 300]).unwrap();
        w.finish(&[("X-Content-Sha256", "00ff")]).unwrap();
        let expected_start = b"5\r\nhello\r\n12c\r\n";
        assert_eq!(&wire[..expected_start.len()], expected_start);
        assert!(wire.ends_with(b"\r\n0\r\nX-Content-Sha256: 00ff\r\n\r\n"));
        let (data, trailers) = decode(&wire).unwrap();
        assert_eq!(data.len(), 305);
        assert_eq!(
            trailers,
            [("X-Content-Sha256".to_string(), "00ff".to_string())]
        );
    }

    #[test]
    fn bodies_by_framing() {
        let mut rest = io::Cursor::new(b"lo world".to_vec());
        let mut body = Body::new(
            b"hel".to_vec(),
            &mut rest,
            Framing::Length(5),
            &Limits::default(),
        );
        assert_eq!(body.length(), Some(5));
        assert_eq!(body.read_all(5).unwrap(), b"hello");

        let mut rest = io::Cursor::new(b"lo".to_vec());
        let mut body = Body::new(
            b"hel".to_vec(),
            &mut rest,
            Framing::Length(9),
            &Limits::default(),
        );
        let err = body.read_all(64).unwrap_err();
        assert!(err.to_string().contains("ended after 5 of 9"), "{err}");

        let mut rest = io::Cursor::new(b"".to_vec());
        let mut body = Body::new(vec![], &mut rest, Framing::Length(9), &Limits::default());
        assert!(matches!(
            body.read_all(8),
            Err(HttpError::BodyTooLarge { len: 9, limit: 8 })
        ));

        let mut rest = io::Cursor::new(b"lo\r\n0\r\nT: 1\r\n\r\n".to_vec());
        let mut body = Body::new(
            b"5\r\nhel".to_vec(),
            &mut rest,
            Framing::Chunked,
            &Limits::default(),
        );
        assert_eq!(body.read_all(64).unwrap(), b"hello");
        assert_eq!(body.trailer("t"), Some("1"));

        let mut rest = io::Cursor::new(b"9\r\n123456789\r\n0\r\n\r\n".to_vec());
        let mut body = Body::new(vec![], &mut rest, Framing::Chunked, &Limits::default());
        assert!(matches!(
            body.read_all(8),
            Err(HttpError::BodyTooLarge { len: 9, limit: 8 })
        ));

        let mut rest = io::Cursor::new(b"to the end".to_vec());
        let mut body = Body::new(vec![], &mut rest, Framing::UntilClose, &Limits::default());
        assert_eq!(body.read_all(64).unwrap(), b"to the end");
        let mut rest = io::Cursor::new(b"to the end".to_vec());
        let mut body = Body::new(vec![], &mut rest, Framing::UntilClose, &Limits::default());
        assert!(matches!(
            body.read_all(4),
            Err(HttpError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn random_chunked_input_never_panics() {
        let seed = b"5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n";
        let limits = Limits {
            max_head: 32,
            max_headers: 2,
            max_body: 8,
        };
        for input in crate::mutations(seed, b"\r\n;: 0fF", 5000) {
            if let Ok((data, trailers)) = decode_chunked(&input, &limits) {
                assert!(data.len() <= limits.max_body);
                assert!(trailers.len() <= limits.max_headers);
            }
        }
    }
}
