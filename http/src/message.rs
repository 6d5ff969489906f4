//! Requests and responses, and writing responses.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Write};

/// The interim response a server sends before it reads a body the client holds back for it
/// (`Expect: 100-continue`).
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

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

/// The body of every error response: the contract's one definition.
pub use keel_api::reply::ErrorReply as ErrorBody;

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
        Self::json(
            status,
            &ErrorBody {
                error: message.to_string(),
            },
        )
    }

    /// No body (204 No Content and the like).
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
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

    /// The error message of an error response: the JSON `error`, else the body as text.
    pub fn error_message(&self) -> String {
        self.json_body::<ErrorBody>()
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of the headers named `name`, joined by ", " as RFC 9110 §5.3 combines them.
pub(crate) fn combined(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
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

/// Whether a response with `status` carries no body by definition (RFC 9112 §6.3).
pub(crate) fn bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Appends the header fields, the framing of `body` (`Content-Length`, none for a bodiless
/// status), `Connection: close`, the blank line and the body.
pub(crate) fn write_fields(
    out: &mut Vec<u8>,
    headers: &[(String, String)],
    body: &[u8],
    status: Option<u16>,
) {
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !status.is_some_and(bodiless) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
}

/// Writes `response` in one piece (one TLS record when it fits).
pub fn write_response(w: &mut impl Write, response: &Response) -> io::Result<()> {
    let status = response.status;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    write_fields(&mut out, &response.headers, &response.body, Some(status));
    w.write_all(&out)?;
    w.flush()
}

/// Writes a response head for a body of unknown length sent chunked: follow it with a
/// [`crate::ChunkedWriter`] over the same stream.
pub fn write_stream_head(w: &mut impl Write, status: u16, content_type: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        reason(status)
    );
    w.write_all(head.as_bytes())?;
    w.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_their_status() {
        let mut wire = Vec::new();
        write_response(&mut wire, &Response::empty(204).with_header("Server", "x")).unwrap();
        assert_eq!(
            wire,
            b"HTTP/1.1 204 No Content\r\nServer: x\r\nConnection: close\r\n\r\n"
        );
        let mut wire = Vec::new();
        write_response(&mut wire, &Response::error(409, "no")).unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no\"}"), "{text}");
        assert_eq!(Response::error(409, "no").error_message(), "no");
    }

    #[test]
    fn repeated_headers_combine() {
        let headers = vec![
            ("A".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "3".to_string()),
        ];
        assert_eq!(combined(&headers, "a").as_deref(), Some("1, 3"));
        assert_eq!(combined(&headers, "c"), None);
        assert_eq!(header(&headers, "B"), Some("2"));
    }
}
