//! Keel's one HTTP/1.1 implementation, for every server and client: the agent, the console's local
//! API, `keelctl manager serve`, keel-vmm's control API.
//!
//! A small HTTP/1.1 layer for JSON APIs over any `Read + Write` (TLS stream, TCP or Unix socket).
//!
//! One request per connection (`Connection: close`), bodies framed by `Content-Length` only, a
//! size limit on everything, and strict parsing: what a well-behaved client never sends (folded
//! headers, spaces before a colon, duplicate conflicting lengths, chunked bodies) is refused with
//! a JSON error rather than guessed at. Nothing here knows about the agent, so other control APIs
//! (keel-vmm's) can serve through it too.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Size limits for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request or status line plus headers, in bytes.
    pub max_head: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before sending anything
    #[error("The peer closed the connection before sending anything")]
    Closed,
    /// Cannot read the message: {0}
    #[error("Cannot read the message: {0}")]
    Io(#[from] io::Error),
    /// Malformed message: {0}
    #[error("Malformed message: {0}")]
    Malformed(String),
    /// The message head exceeds {0} bytes
    #[error("The message head exceeds {0} bytes")]
    HeadTooLarge(usize),
    /// The message has more than {0} header fields
    #[error("The message has more than {0} header fields")]
    TooManyHeaders(usize),
    /// The body of {len} bytes exceeds the limit of {limit} bytes
    #[error("The body of {len} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { len: u64, limit: usize },
    /// Transfer-Encoding {0:?} is not supported; send Content-Length
    #[error("Transfer-Encoding {0:?} is not supported; send Content-Length")]
    TransferEncoding(String),
    /// HTTP version {0:?} is not supported; use HTTP/1.1
    #[error("HTTP version {0:?} is not supported; use HTTP/1.1")]
    Version(String),
}

impl HttpError {
    /// The response that tells a client what was wrong, when there is still a client to tell.
    pub fn response(&self) -> Option<Response> {
        let status = match self {
            Self::Closed | Self::Io(_) => return None,
            Self::Malformed(_) => 400,
            Self::BodyTooLarge { .. } => 413,
            Self::HeadTooLarge(_) | Self::TooManyHeaders(_) => 431,
            Self::TransferEncoding(_) => 501,
            Self::Version(_) => 505,
        };
        Some(Response::error(status, &self.to_string()))
    }
}

fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Malformed(what.into())
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What followed `?`, if anything.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as JSON of type `T`, or the 400 response to send instead.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Response::error(400, &format!("Invalid JSON body: {e}")))
    }
}

/// A response to send, or one received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers other than Content-Length and Connection, which the writer adds.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl Response {
    /// `value` as a JSON body.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body,
            },
            Err(e) => Self::error(500, &format!("Cannot encode the response: {e}")),
        }
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        let reply = ErrorBody {
            error: message.to_string(),
        };
        // A struct of one string always serializes.
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as JSON of type `T`.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// RFC 9110 token characters (method and header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads up to and including the blank line ending the head. Returns the head (without the
/// blank line) and the bytes read past it.
fn read_head(r: &mut impl Read, limits: &Limits) -> Result<(String, Vec<u8>), HttpError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HttpError::Closed),
            Ok(0) => return Err(malformed("the connection closed inside the message head")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::Io(e)),
        };
        let searched = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched + at;
            if end > limits.max_head {
                return Err(HttpError::HeadTooLarge(limits.max_head));
            }
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            let head = String::from_utf8(buf).map_err(|_| malformed("the head is not UTF-8"))?;
            return Ok((head, rest));
        }
        if buf.len() > limits.max_head + 3 {
            return Err(HttpError::HeadTooLarge(limits.max_head));
        }
    }
}

/// Splits the head into its first line and header fields.
fn parse_fields(head: &str, limits: &Limits) -> Result<(String, Vec<(String, String)>), HttpError> {
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err(HttpError::TooManyHeaders(limits.max_headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("header line {line:?} has no colon")))?;
        if !is_token(name) {
            return Err(malformed(format!("bad header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(malformed(format!("header {name} has a control character")));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    Ok((start, headers))
}

/// The declared body length: `None` when there is no Content-Length.
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    if let Some(te) = header(headers, "transfer-encoding") {
        return Err(HttpError::TransferEncoding(te.to_string()));
    }
    let mut length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let parsed = Some(value)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| malformed(format!("bad Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(malformed("conflicting Content-Length headers"));
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// Reads the body: `length` bytes, or everything up to end of stream when `length` is `None`.
fn read_body(
    r: &mut impl Read,
    mut body: Vec<u8>,
    length: Option<u64>,
    limits: &Limits,
) -> Result<Vec<u8>, HttpError> {
    let too_large = |len| HttpError::BodyTooLarge {
        len,
        limit: limits.max_body,
    };
    match length {
        Some(len) => {
            let want = usize::try_from(len)
                .ok()
                .filter(|&l| l <= limits.max_body)
                .ok_or(too_large(len))?;
            // One request per connection: bytes past the body (pipelining) are not served.
            body.truncate(want);
            let have = body.len();
            body.resize(want, 0);
            r.read_exact(&mut body[have..])
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        malformed(format!("the body ended before its {len} bytes"))
                    }
                    _ => HttpError::Io(e),
                })?;
            Ok(body)
        }
        None => {
            let cap = limits.max_body as u64 + 1;
            r.take(cap.saturating_sub(body.len() as u64))
                .read_to_end(&mut body)?;
            if body.len() > limits.max_body {
                return Err(too_large(body.len() as u64));
            }
            Ok(body)
        }
    }
}

/// Reads one request.
pub fn read_request(r: &mut impl Read, limits: &Limits) -> Result<Request, HttpError> {
    let head = read_request_head(r, limits)?;
    head.read_body(r, limits)
}

/// A request whose head is read and whose body is still (mostly) in the stream: lets a server
/// stream a large body (an upload) instead of holding it in memory.
#[derive(Debug)]
pub struct RequestHead {
    /// The request, with an empty body.
    pub request: Request,
    /// Body bytes that arrived with the head.
    pub early: Vec<u8>,
    /// The declared body length (0 without Content-Length).
    pub length: u64,
}

impl RequestHead {
    /// Reads the body within `limits` and completes the request.
    pub fn read_body(self, r: &mut impl Read, limits: &Limits) -> Result<Request, HttpError> {
        let body = read_body(r, self.early, Some(self.length), limits)?;
        Ok(Request {
            body,
            ..self.request
        })
    }

    /// The body as a reader of exactly `length` bytes, whatever its size.
    pub fn body_reader<'a, R: Read>(&'a self, r: &'a mut R) -> impl Read + 'a {
        let early = &self.early[..self.early.len().min(self.length as usize)];
        let left = self.length - early.len() as u64;
        early.chain(r.take(left))
    }
}

/// Reads a request's line and headers, leaving the body in the stream.
pub fn read_request_head(r: &mut impl Read, limits: &Limits) -> Result<RequestHead, HttpError> {
    let (head, rest) = read_head(r, limits)?;
    let (line, headers) = parse_fields(&head, limits)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(format!("bad request line {line:?}")));
    };
    if !is_token(method) {
        return Err(malformed(format!("bad method {method:?}")));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(format!("bad request target {target:?}")));
    }
    check_version(version)?;
    let length = content_length(&headers)?.unwrap_or(0);
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
        early: rest,
        length,
    })
}

fn check_version(version: &str) -> Result<(), HttpError> {
    match version {
        "HTTP/1.1" | "HTTP/1.0" => Ok(()),
        v if v.starts_with("HTTP/") => Err(HttpError::Version(v.to_string())),
        v => Err(malformed(format!("bad protocol {v:?}"))),
    }
}

/// Reads one response (the client side).
pub fn read_response(r: &mut impl Read, limits: &Limits) -> Result<Response, HttpError> {
    let (mut response, rest) = read_response_head(r, limits)?;
    let length = content_length(&response.headers)?;
    response.body = read_body(r, rest, length, limits)?;
    Ok(response)
}

/// Reads a response's status line and headers; returns the response with an empty body and the
/// body bytes that came with the head (for a body streamed to the end of the connection).
pub fn read_response_head(
    r: &mut impl Read,
    limits: &Limits,
) -> Result<(Response, Vec<u8>), HttpError> {
    let (head, rest) = read_head(r, limits)?;
    let (line, headers) = parse_fields(&head, limits)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    check_version(version)?;
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed(format!("bad status line {line:?}")))?;
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    Ok((response, rest))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

fn write_fields(out: &mut Vec<u8>, headers: &[(String, String)], body: &[u8]) {
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// Writes `response` in one piece (one TLS record when it fits).
pub fn write_response(w: &mut impl Write, response: &Response) -> io::Result<()> {
    let status = response.status;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    write_fields(&mut out, &response.headers, &response.body);
    w.write_all(&out)?;
    w.flush()
}

/// Writes a request; a body is sent as JSON.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    path: &str,
    host: &str,
    body: Option<&[u8]>,
) -> io::Result<()> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    let mut headers = vec![("Host".to_string(), host.to_string())];
    if body.is_some() {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    write_fields(&mut out, &headers, body.unwrap_or_default());
    w.write_all(&out)?;
    w.flush()
}

/// One entry of a routing table.
#[derive(Debug, Clone)]
pub struct Route<H> {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: H,
}

/// The handler for `request`, or the 404 or 405 (with `Allow`) response.
pub fn route<'r, H>(routes: &'r [Route<H>], request: &Request) -> Result<&'r H, Response> {
    let mut allowed = Vec::new();
    for r in routes
        .iter()
        .filter(|r| path_matches(r.path, &request.path))
    {
        if r.method == request.method {
            return Ok(&r.handler);
        }
        allowed.push(r.method);
    }
    if allowed.is_empty() {
        return Err(Response::error(
            404,
            &format!("No such path {:?}", request.path),
        ));
    }
    let message = format!("Method {} not allowed on {}", request.method, request.path);
    Err(Response::error(405, &message).with_header("Allow", &allowed.join(", ")))
}

/// Whether `path` fits `pattern`, where a `{name}` segment matches any one non-empty segment.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The value of each `{name}` segment of `pattern` in `path`, in order.
pub fn path_params<'p>(pattern: &str, path: &'p str) -> Vec<&'p str> {
    pattern
        .split('/')
        .zip(path.split('/'))
        .filter(|(w, _)| w.starts_with('{'))
        .map(|(_, g)| g)
        .collect()
}

/// The value of `key` in a `a=1&b=2` query string (no percent-decoding: values are plain).
pub fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Writes a response head without Content-Length: the body runs to the end of the connection.
pub fn write_stream_head(w: &mut impl Write, status: u16, content_type: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n",
        reason(status)
    );
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Serves one request on `stream`: reads it, lets `handle` answer it (with the stream at hand,
/// for example to look at the TLS peer), writes the answer, or the error response when the
/// request could not be read. Returns the read error, if any, for the caller to log.
pub fn serve_one<S: Read + Write>(
    stream: &mut S,
    limits: &Limits,
    handle: impl FnOnce(&mut S, &Request) -> Response,
) -> Result<(), HttpError> {
    match read_request(stream, limits) {
        Ok(request) => {
            let response = handle(stream, &request);
            write_response(stream, &response)?;
            Ok(())
        }
        Err(e) => {
            if let Some(response) = e.response() {
                // The client may be gone already; the read error is what matters.
                let _ = write_response(stream, &response);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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
        #[derive(Deserialize)]
        struct A {
            a: u32,
        }
        assert_eq!(want.json::<A>().unwrap().a, 1);
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
            (b"GET x HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"GET / FTP/1.1\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), Some(505)),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX : v\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\n folded: v\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n".to_vec(), Some(400)),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n".to_vec(), Some(400)),
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
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Some(501),
            ),
            (big.into_bytes(), Some(431)),
            (many.into_bytes(), Some(431)),
        ];
        for (raw, want) in cases {
            let err = parse(&raw).unwrap_err();
            let got = err.response().map(|r| r.status);
            assert_eq!(got, want, "{:?}: {err}", String::from_utf8_lossy(&raw));
            if let Some(r) = err.response() {
                let body: ErrorBody = r.json_body().unwrap();
                assert_eq!(body.error, err.to_string());
            }
        }
    }

    #[test]
    fn equal_duplicate_lengths_and_pipelined_bytes_are_tolerated() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n";
        assert_eq!(parse(raw).unwrap().body, b"ab");
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seed = b"POST /v1/adopt HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n{}{}";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = Limits {
            max_head: 64,
            max_headers: 4,
            max_body: 8,
        };
        for round in 0..5000 {
            let mut input = seed.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % (input.len() + 1);
                match next() % 3 {
                    0 if at < input.len() => input[at] = next() as u8,
                    1 => input.insert(at, b"\r\n: \x00\xff0"[(next() % 7) as usize]),
                    _ => input.truncate(at),
                }
            }
            if round % 10 == 0 {
                input = (0..next() % 100).map(|_| next() as u8).collect();
            }
            match read_request(&mut Cursor::new(input.clone()), &limits) {
                Ok(r) => assert!(r.body.len() <= limits.max_body),
                Err(HttpError::Closed) => assert!(input.is_empty()),
                Err(e) => assert!(e.response().is_some(), "{e}"),
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let resp = Response::json(201, &serde_json::json!({"ok": true})).with_header("X-Y", "z");
        let mut wire = Vec::new();
        write_response(&mut wire, &resp).unwrap();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let back = read_response(&mut Cursor::new(wire), &Limits::default()).unwrap();
        assert_eq!(back.status, 201);
        assert_eq!(back.header("x-y"), Some("z"));
        assert_eq!(back.body, resp.body);
        // Without Content-Length the body runs to the end of the stream, within the limit.
        let raw = b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec();
        assert_eq!(
            read_response(&mut Cursor::new(raw), &Limits::default())
                .unwrap()
                .body,
            b"hello"
        );
        let long = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 65537]].concat();
        assert!(matches!(
            read_response(&mut Cursor::new(long), &Limits::default()),
            Err(HttpError::BodyTooLarge { .. })
        ));
        assert!(read_response(
            &mut Cursor::new(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
            &Limits::default()
        )
        .is_err());
    }

    #[test]
    fn requests_round_trip() {
        let mut wire = Vec::new();
        write_request(&mut wire, "POST", "/v1/adopt", "10.0.0.1", Some(b"{}")).unwrap();
        let req = parse(&wire).unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v1/adopt")
        );
        assert_eq!(req.header("host"), Some("10.0.0.1"));
        assert_eq!(req.body, b"{}");
    }

    #[test]
    fn routing() {
        let routes = [
            Route {
                method: "GET",
                path: "/a",
                handler: 1,
            },
            Route {
                method: "POST",
                path: "/a",
                handler: 2,
            },
            Route {
                method: "GET",
                path: "/b",
                handler: 3,
            },
        ];
        let req = |method: &str, path: &str| Request {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: vec![],
            body: vec![],
        };
        assert_eq!(route(&routes, &req("GET", "/a")), Ok(&1));
        assert_eq!(route(&routes, &req("POST", "/a")), Ok(&2));
        assert_eq!(route(&routes, &req("GET", "/b")), Ok(&3));
        let e = route(&routes, &req("GET", "/c")).unwrap_err();
        assert_eq!(e.status, 404);
        let e = route(&routes, &req("DELETE", "/a")).unwrap_err();
        assert_eq!(e.status, 405);
        assert_eq!(e.header("allow"), Some("GET, POST"));
    }

    #[test]
    fn serve_one_answers_errors_too() {
        struct Duplex(Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut ok = Duplex(Cursor::new(b"GET /x HTTP/1.1\r\n\r\n".to_vec()), vec![]);
        serve_one(&mut ok, &Limits::default(), |_, r| {
            Response::json(200, &r.path)
        })
        .unwrap();
        let resp = read_response(&mut Cursor::new(ok.1), &Limits::default()).unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"\"/x\"".as_slice())
        );

        let mut bad = Duplex(
            Cursor::new(b"GET /x HTTP/1.1\r\nbad\r\n\r\n".to_vec()),
            vec![],
        );
        let err = serve_one(&mut bad, &Limits::default(), |_, _| {
            Response::json(200, &"no")
        });
        assert!(matches!(err, Err(HttpError::Malformed(_))));
        let resp = read_response(&mut Cursor::new(bad.1), &Limits::default()).unwrap();
        assert_eq!(resp.status, 400);
    }

    #[test]
    fn path_patterns_and_queries() {
        let cases = [
            ("/v1/vms/{name}", "/v1/vms/a", true),
            ("/v1/vms/{name}", "/v1/vms/", false),
            ("/v1/vms/{name}", "/v1/vms/a/start", false),
            ("/v1/vms/{name}/start", "/v1/vms/a/start", true),
            ("/v1/vms", "/v1/vms", true),
            ("/v1/vms", "/v1/vmsx", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(path_matches(pattern, path), want, "{pattern} {path}");
        }
        assert_eq!(
            path_params("/v1/images/{kind}/{name}", "/v1/images/kernel/k1"),
            ["kernel", "k1"]
        );
        assert_eq!(query_param(Some("a=1&follow=true"), "follow"), Some("true"));
        assert_eq!(query_param(Some("follow"), "follow"), Some(""));
        assert_eq!(query_param(None, "follow"), None);
    }

    #[test]
    fn a_streamed_body_is_exactly_its_length() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let mut cursor = Cursor::new(raw.to_vec());
        let head = read_request_head(&mut cursor, &Limits::default()).unwrap();
        let mut body = Vec::new();
        head.body_reader(&mut cursor)
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, b"hello");
    }
}
