//! Message heads: the request or status line and the header fields, parsed by `httparse` with
//! Keel's rules on top, and the body framing they declare.

use crate::body::{parse_field, Body, Framing};
use crate::message::{bodiless, combined, header, Request, Response, CONTINUE_RESPONSE};
use crate::{is_token, malformed, HttpError, Limits};
use std::io::{self, Read, Write};

/// Where the head in `buf` ends (just past its blank line), looking from `from` on: `None`
/// until it has all arrived. A bare LF anywhere is refused, as is a head over the limit.
fn head_end(buf: &[u8], from: usize, limits: &Limits) -> Result<Option<usize>, HttpError> {
    for at in from..buf.len() {
        if buf[at] != b'\n' {
            continue;
        }
        if at == 0 || buf[at - 1] != b'\r' {
            return Err(malformed("a line ends in a bare LF; end lines with CRLF"));
        }
        if at >= 3 && &buf[at - 3..at] == b"\r\n\r" {
            if at - 3 > limits.max_head {
                return Err(HttpError::HeadTooLarge(limits.max_head));
            }
            return Ok(Some(at + 1));
        }
    }
    if buf.len() > limits.max_head + 4 {
        return Err(HttpError::HeadTooLarge(limits.max_head));
    }
    Ok(None)
}

/// Reads up to and including the blank line ending the head. Returns what was read and where
/// the head ends in it (the rest is the start of the body).
fn read_head(r: &mut impl Read, limits: &Limits) -> Result<(Vec<u8>, usize), HttpError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HttpError::Closed),
            Ok(0) => return Err(malformed("the connection closed in the middle of the head")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::from_io(e)),
        };
        let from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from, limits)? {
            return Ok((buf, end));
        }
    }
}

/// Maps an `httparse` error, telling an unknown protocol version (505) from something that is
/// not HTTP at all (400) by the version in the first line (last in a request, first in a
/// response).
fn parse_error(e: httparse::Error, head: &[u8], limits: &Limits, request: bool) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders(limits.max_headers),
        httparse::Error::Version => {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let version = if request {
                line.rsplit(' ').next()
            } else {
                line.split(' ').next()
            }
            .unwrap_or_default();
            if version.starts_with("HTTP/") {
                HttpError::Version(shorten(version).to_string())
            } else {
                malformed(format!("bad protocol {:?}", shorten(version)))
            }
        }
        e => malformed(e.to_string()),
    }
}

/// Client input echoed in an error is useful, but only a bounded amount of it.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Header fields as owned strings: UTF-8 values, trimmed, without control characters.
fn fields(headers: &[httparse::Header<'_>]) -> Result<Vec<(String, String)>, HttpError> {
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        let mut line = h.name.as_bytes().to_vec();
        line.push(b':');
        line.extend_from_slice(h.value);
        out.push(parse_field(&line)?);
    }
    Ok(out)
}

/// The declared `Content-Length`, if any: digits only, equal when repeated.
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let parsed = Some(value)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| malformed(format!("bad Content-Length {:?}", shorten(value))))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(malformed("conflicting Content-Length headers"));
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// The framing the headers declare; `None` when neither length nor coding is given.
fn declared_framing(headers: &[(String, String)]) -> Result<Option<Framing>, HttpError> {
    let length = content_length(headers)?;
    match (combined(headers, "transfer-encoding"), length) {
        (Some(_), Some(_)) => Err(malformed(
            "both Content-Length and Transfer-Encoding are present; send one",
        )),
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Ok(Some(Framing::Chunked)),
        (Some(te), None) => Err(HttpError::TransferEncoding(shorten(&te).to_string())),
        (None, length) => Ok(length.map(Framing::Length)),
    }
}

/// A request whose head is read and whose body is still (mostly) in the stream: lets a server
/// refuse a request before its body, or stream a large body (an upload) instead of holding it.
#[derive(Debug)]
pub struct RequestHead {
    /// The request, with an empty body.
    pub request: Request,
    /// Bytes that arrived with the head (the start of the body).
    pub early: Vec<u8>,
    /// How the body is delimited (`Length(0)` without one).
    pub framing: Framing,
    /// The client waits for `100 Continue` before it sends the body (`Expect: 100-continue`);
    /// cleared once sent.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The declared body length (`None`: chunked).
    pub fn length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(len) => Some(len),
            Framing::Chunked | Framing::UntilClose => None,
        }
    }

    /// Whether more bytes than the declared body came with the head (a second, pipelined
    /// request, which is not served).
    pub fn pipelined(&self) -> bool {
        self.length()
            .is_some_and(|len| self.early.len() as u64 > len)
    }

    /// The body as a reader, whatever its size: sends `100 Continue` first when the client
    /// waits for it.
    pub fn body<'a, S: Read + Write>(
        &mut self,
        stream: &'a mut S,
        limits: &Limits,
    ) -> io::Result<Body<'a, S>> {
        if self.expect_continue {
            self.expect_continue = false;
            stream.write_all(CONTINUE_RESPONSE)?;
            stream.flush()?;
        }
        let early = std::mem::take(&mut self.early);
        Ok(Body::new(early, stream, self.framing, limits))
    }

    /// Reads the body within `limits` and completes the request. A declared length over the
    /// limit is refused before anything is read (and before `100 Continue`).
    pub fn read_body<S: Read + Write>(
        mut self,
        stream: &mut S,
        limits: &Limits,
    ) -> Result<Request, HttpError> {
        if let Some(len) = self.length().filter(|&len| len > limits.max_body as u64) {
            return Err(HttpError::BodyTooLarge {
                len,
                limit: limits.max_body,
            });
        }
        let body = self
            .body(stream, limits)
            .map_err(HttpError::from_io)?
            .read_all(limits.max_body)?;
        Ok(Request {
            body,
            ..self.request
        })
    }
}

/// Parses a request head at the start of `bytes` (the rest is kept as the start of the body).
/// Pure: an entry point for fuzzing and table tests.
pub fn parse_request_head(bytes: &[u8], limits: &Limits) -> Result<RequestHead, HttpError> {
    let end = head_end(bytes, 0, limits)?.ok_or_else(|| malformed("the head is incomplete"))?;
    parse_request(&bytes[..end], bytes[end..].to_vec(), limits)
}

/// Reads a request's line and headers, leaving the body in the stream.
pub fn read_request_head(r: &mut impl Read, limits: &Limits) -> Result<RequestHead, HttpError> {
    let (mut buf, end) = read_head(r, limits)?;
    let early = buf.split_off(end);
    parse_request(&buf, early, limits)
}

fn parse_request(head: &[u8], early: Vec<u8>, limits: &Limits) -> Result<RequestHead, HttpError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("the head is incomplete")),
        Err(e) => return Err(parse_error(e, head, limits, true)),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed("the request line is incomplete"));
    };
    // Methods are case-sensitive, and every one Keel serves is upper case.
    if !is_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(malformed(format!("bad method {:?}", shorten(method))));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(format!(
            "bad request target {:?}",
            shorten(target)
        )));
    }
    let headers = fields(parsed.headers)?;
    let framing = declared_framing(&headers)?.unwrap_or(Framing::Length(0));
    if version == 0 && framing == Framing::Chunked {
        return Err(malformed("HTTP/1.0 has no chunked transfer coding"));
    }
    let expect_continue = match header(&headers, "expect") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("100-continue") => version == 1,
        Some(v) => return Err(HttpError::Expectation(shorten(v).to_string())),
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (target, None),
    };
    Ok(RequestHead {
        request: Request {
            method: method.to_string(),
            path: path.to_string(),
            query,
            headers,
            body: Vec::new(),
        },
        early,
        framing,
        expect_continue,
    })
}

/// Parses a response head at the start of `bytes`: the response (without its body), how its
/// body is framed (the answer to a request other than HEAD), and the bytes after the head.
/// Pure: an entry point for fuzzing and table tests.
pub fn parse_response_head(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Response, Framing, Vec<u8>), HttpError> {
    let end = head_end(bytes, 0, limits)
        .map_err(HttpError::in_response)?
        .ok_or_else(|| HttpError::MalformedResponse("the head is incomplete".into()))?;
    let (response, framing) =
        parse_response(&bytes[..end], limits).map_err(HttpError::in_response)?;
    Ok((response, framing, bytes[end..].to_vec()))
}

/// Reads a response's status line and headers; returns the response (with an empty body), its
/// framing, and the body bytes that came with the head.
pub(crate) fn read_response_head(
    r: &mut impl Read,
    limits: &Limits,
) -> Result<(Response, Framing, Vec<u8>), HttpError> {
    let (mut buf, end) = read_head(r, limits).map_err(HttpError::in_response)?;
    let early = buf.split_off(end);
    let (response, framing) = parse_response(&buf, limits).map_err(HttpError::in_response)?;
    Ok((response, framing, early))
}

fn parse_response(head: &[u8], limits: &Limits) -> Result<(Response, Framing), HttpError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("the head is incomplete")),
        Err(e) => return Err(parse_error(e, head, limits, false)),
    }
    let Some(status) = parsed.code.filter(|c| (100..600).contains(c)) else {
        return Err(malformed("bad status code"));
    };
    let headers = fields(parsed.headers)?;
    let declared = declared_framing(&headers)?;
    let framing = if bodiless(status) {
        Framing::Length(0)
    } else {
        declared.unwrap_or(Framing::UntilClose)
    };
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    Ok((response, framing))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::read_request;
    use std::io::Cursor;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut Cursor::new(raw.to_vec()), &Limits::default())
    }

    /// A reader handing out one byte per read, the worst case for the head scanner.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    impl Write for Trickle<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn parses_a_request() {
        let raw = b"POST /v1/adopt?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\nX-A:  b c \r\n\r\n{\"a\":1}";
        let want = Request {
            method: "POST".into(),
            path: "/v1/adopt".into(),
            query: Some("x=1".into()),
            headers: vec![
                ("Host".into(), "h".into()),
                ("Content-Length".into(), "7".into()),
                ("X-A".into(), "b c".into()),
            ],
            body: b"{\"a\":1}".to_vec(),
        };
        assert_eq!(parse(raw).unwrap(), want);
        let trickled = read_request(&mut Trickle(raw), &Limits::default()).unwrap();
        assert_eq!(trickled, want);
        assert_eq!(want.header("content-length"), Some("7"));
        #[derive(serde::Deserialize)]
        struct A {
            a: u32,
        }
        assert_eq!(want.json::<A>().unwrap().a, 1);
        let chunked =
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap().body, want.body);
    }

    #[test]
    fn malformed_requests_get_the_right_status() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        let many: String = (0..65).map(|i| format!("X{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            (b"".to_vec(), None),
            (b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec(), Some(400)),
            (b"GET /\r\n\r\n".to_vec(), Some(400)),
            (b"GET  / HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"G(T / HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"get / HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"GET x HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"GET / FTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), Some(505)),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX : v\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\n folded: v\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n".to_vec(), Some(400)),
            // Bare LF line ends, anywhere.
            (b"GET / HTTP/1.1\n\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nHost: h\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\n\n".to_vec(), Some(400)),
            (b"\nGET / HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
                Some(400),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n".to_vec(),
                Some(400),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                Some(400),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab".to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n".to_vec(),
                Some(413),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                Some(501),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
                Some(501),
            ),
            // Both framings: a request smuggling attempt.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                Some(400),
            ),
            // Chunked bodies that break the rules.
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\n"
                    .to_vec(),
                Some(400),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n".to_vec(),
                Some(413),
            ),
            (
                b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n".to_vec(),
                Some(417),
            ),
            (big.into_bytes(), Some(431)),
            (many.into_bytes(), Some(431)),
        ];
        for (raw, want) in cases {
            let err = parse(&raw).unwrap_err();
            let got = err.response().map(|r| r.status);
            assert_eq!(got, want, "{:?}: {err}", String::from_utf8_lossy(&raw));
            if let Some(r) = err.response() {
                let body: crate::ErrorBody = r.json_body().unwrap();
                assert_eq!(body.error, err.to_string());
            }
            // The pure parser agrees with the reader on the head.
            if let Err(pure) = parse_request_head(&raw, &Limits::default()) {
                assert!(pure.response().is_some(), "{pure}");
            }
        }
    }

    #[test]
    fn equal_duplicate_lengths_and_pipelined_bytes_are_tolerated() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n";
        assert_eq!(parse(raw).unwrap().body, b"ab");
        let head = parse_request_head(raw, &Limits::default()).unwrap();
        assert!(head.pipelined());
        let head = parse_request_head(b"GET / HTTP/1.1\r\n\r\n", &Limits::default()).unwrap();
        assert!(!head.pipelined());
        assert_eq!(head.framing, Framing::Length(0));
    }

    #[test]
    fn response_heads() {
        let ok = |raw: &[u8]| parse_response_head(raw, &Limits::default());
        let (r, framing, early) = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(
            (r.status, framing, early),
            (200, Framing::Length(2), b"hi".to_vec())
        );
        let (_, framing, _) = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(framing, Framing::Chunked);
        let (_, framing, _) = ok(b"HTTP/1.0 200 \r\n\r\n").unwrap();
        assert_eq!(framing, Framing::UntilClose);
        let (_, framing, _) = ok(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(framing, Framing::Length(0));
        let (_, framing, _) = ok(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert_eq!(framing, Framing::Length(0));
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\n\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"ICY 200 OK\r\n\r\n",
        ];
        for raw in bad {
            let err = ok(raw).unwrap_err();
            assert!(err.response().is_none(), "{err}");
        }
        assert!(matches!(
            ok(b"HTTP/2 200 OK\r\n\r\n"),
            Err(HttpError::Version(_))
        ));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seed = b"POST /v1/adopt HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n{}{}";
        let limits = Limits {
            max_head: 64,
            max_headers: 4,
            max_body: 8,
        };
        for input in crate::mutations(seed, b"\r\n: \x00\xff0", 5000) {
            match read_request(&mut Cursor::new(input.clone()), &limits) {
                Ok(r) => assert!(r.body.len() <= limits.max_body),
                Err(HttpError::Closed) => assert!(input.is_empty()),
                Err(e) => assert!(e.response().is_some(), "{e}"),
            }
            let _ = parse_request_head(&input, &limits);
            let _ = parse_response_head(&input, &limits);
        }
    }
}
