//! The small part of HTTP/1.1 the control API needs: one request per connection, bodies sized by
//! `Content-Length` only, hard limits on every length. Parsing is pure (bytes in, request or
//! error out) so every malformed input is a table test; reading and writing sockets lives in
//! `server.rs`.

use std::fmt::Write as _;

/// Longest request line plus headers. Real clients send a few hundred bytes.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Longest body. No endpoint takes more than an empty JSON object today.
pub const MAX_BODY_LEN: usize = 4 * 1024;

/// A parsed request head. The body follows separately (its length is `content_length`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without any query string.
    pub path: String,
    pub content_length: usize,
}

/// A request the server cannot serve; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed request: {0}
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Request head longer than 8192 bytes
    #[error("request head longer than {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// Body of {0} bytes is longer than 4096
    #[error("body of {0} bytes is longer than {MAX_BODY_LEN}")]
    BodyTooLarge(usize),
    /// Transfer-Encoding is not supported; send Content-Length
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    /// Unsupported HTTP version {0}
    #[error("unsupported HTTP version {0}")]
    Version(String),
    /// The request was not complete within the time limit
    #[error("the request was not complete within the time limit")]
    Timeout,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::Timeout => 408,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::HeadTooLarge => 431,
            HttpError::TransferEncoding => 501,
            HttpError::Version(_) => 505,
        }
    }
}

/// Where the head ends in `buf`: the index just past the blank line, if it has arrived.
/// Accepts bare `\n` line ends as well as `\r\n` (hand-typed requests through `socat`).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// Parses a complete head (request line and headers, up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let malformed = |what: &str| HttpError::Malformed(what.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| malformed("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));

    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!(
            "request line {:?} is not METHOD PATH VERSION",
            truncate(request_line)
        )));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed(format!(
            "method {:?}",
            truncate(method)
        )));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!("path {:?}", truncate(target))));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Version(truncate(version).to_owned()));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    let mut content_length: Option<usize> = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!(
                "header line {:?} has no colon",
                truncate(line)
            )));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(HttpError::Malformed(format!(
                "header name {:?}",
                truncate(name)
            )));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| {
                HttpError::Malformed(format!("Content-Length {:?}", truncate(value)))
            })?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            if len > MAX_BODY_LEN {
                return Err(HttpError::BodyTooLarge(len));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
    }

    Ok(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        content_length: content_length.unwrap_or(0),
    })
}

/// Echoing client input back in an error is useful, but only a bounded amount of it.
fn truncate(s: &str) -> &str {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A response: status, optional JSON body, optional `Allow` header (for 405).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub allow: Option<&'static str>,
}

impl Response {
    /// 204 No Content: the request was done.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// A JSON body with `status`.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body: Some(body),
            allow: None,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        let reply = keel_api::reply::ErrorReply {
            error: message.to_string(),
        };
        // A struct of one string always serializes.
        Response::json(status, serde_json::to_string(&reply).unwrap_or_default())
    }

    /// The bytes on the wire. Every response closes the connection.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        // Writing to a String cannot fail.
        let _ = write!(head, "Server: keel-vmm\r\nConnection: close\r\n");
        if let Some(allow) = self.allow {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        match &self.body {
            Some(body) => {
                let _ = write!(
                    head,
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None if self.status == 204 => head.push_str("\r\n"),
            None => head.push_str("Content-Length: 0\r\n\r\n"),
        }
        head.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn head_end_table() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"", None),
            (b"GET / HTTP/1.1\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
            (b"GET / HTTP/1.1\r\n\r\n", Some(18)),
            (b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", Some(24)),
            (b"GET / HTTP/1.1\n\n", Some(16)),
            (b"\r\n", Some(2)),
        ];
        for (input, want) in cases {
            assert_eq!(
                head_end(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn parse_head_accepts() {
        let cases: &[(&str, &str, &str, usize)] = &[
            (
                "GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n",
                "GET",
                "/vm",
                0,
            ),
            ("PUT /vm/pause HTTP/1.0\r\n\r\n", "PUT", "/vm/pause", 0),
            ("PUT /vm/pause?x=1 HTTP/1.1\r\n\r\n", "PUT", "/vm/pause", 0),
            (
                "PUT /vm/resume HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
                "PUT",
                "/vm/resume",
                2,
            ),
            (
                "PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
                "PUT",
                "/vm",
                2,
            ),
            ("GET /vm HTTP/1.1\nAccept: */*\n\n", "GET", "/vm", 0),
        ];
        for (raw, method, path, len) in cases {
            let head = parse_head(raw.as_bytes()).unwrap();
            assert_eq!(
                (
                    head.method.as_str(),
                    head.path.as_str(),
                    head.content_length
                ),
                (*method, *path, *len),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn parse_head_rejects() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"\r\n", 400, "request line \"\""),
            (b"GET\r\n\r\n", 400, "is not METHOD PATH VERSION"),
            (b"GET /vm\r\n\r\n", 400, "is not METHOD PATH VERSION"),
            (
                b"GET /vm HTTP/1.1 extra\r\n\r\n",
                400,
                "is not METHOD PATH VERSION",
            ),
            (
                b"GET  /vm HTTP/1.1\r\n\r\n",
                400,
                "is not METHOD PATH VERSION",
            ),
            (b"get /vm HTTP/1.1\r\n\r\n", 400, "method \"get\""),
            (b"GET vm HTTP/1.1\r\n\r\n", 400, "path \"vm\""),
            (b"GET /vm HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
            (b"GET /vm SPDY\r\n\r\n", 505, "SPDY"),
            (b"GET /vm HTTP/1.1\r\nNoColon\r\n\r\n", 400, "has no colon"),
            (b"GET /vm HTTP/1.1\r\n: v\r\n\r\n", 400, "header name"),
            (
                b"GET /vm HTTP/1.1\r\nBad Name: v\r\n\r\n",
                400,
                "header name",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                400,
                "Content-Length \"x\"",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
                "conflicting",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 4097\r\n\r\n",
                413,
                "4097",
            ),
            (
                b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
                "Transfer-Encoding",
            ),
            (b"GET /\xff HTTP/1.1\r\n\r\n", 400, "not UTF-8"),
        ];
        for (raw, status, text) in cases {
            let err = parse_head(raw).unwrap_err();
            assert_eq!(
                err.status(),
                *status,
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
            assert!(err.to_string().contains(text), "{err} lacks {text:?}");
        }
    }

    /// Arbitrary bytes never panic the parser: a deterministic xorshift stream, biased towards
    /// the bytes HTTP cares about so inputs get past the first checks.
    #[test]
    fn arbitrary_input_never_panics() {
        const ALPHABET: &[u8] = b"GETPUT /vm:HTTP/1.01\r\n Content-Length9\xff\x00?=";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r.to_le_bytes()[1]
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            if let Some(end) = head_end(&input) {
                let _ = parse_head(&input[..end]);
            }
            let _ = parse_head(&input);
        }
    }

    #[test]
    fn errors_echo_a_bounded_amount_of_input() {
        let long = format!("GET /{} HTTP/1.1 x\r\n\r\n", "a".repeat(5000));
        let err = parse_head(long.as_bytes()).unwrap_err().to_string();
        assert!(err.len() < 200, "{}", err.len());
        assert_eq!(truncate("héllo"), "héllo");
    }

    #[test]
    fn responses_on_the_wire() {
        assert_eq!(
            String::from_utf8(Response::no_content().to_bytes()).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: keel-vmm\r\nConnection: close\r\n\r\n"
        );
        let mut not_allowed = Response::error(405, "use \"GET\"");
        not_allowed.allow = Some("GET");
        assert_eq!(
            String::from_utf8(not_allowed.to_bytes()).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nServer: keel-vmm\r\nConnection: close\r\n\
             Allow: GET\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n\
             {\"error\":\"use \\\"GET\\\"\"}"
        );
        let bare = Response {
            status: 999,
            body: None,
            allow: None,
        };
        assert!(String::from_utf8(bare.to_bytes())
            .unwrap()
            .starts_with("HTTP/1.1 999 Unknown\r\n"));
    }
}
