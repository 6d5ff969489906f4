//! Keel's one HTTP/1.1 implementation, for every server and client: the agent, the console's local
//! API, `keelctl manager serve`, keel-vmm's control API, and their clients.
//!
//! A small HTTP/1.1 layer for JSON APIs over any `Read + Write` (TLS stream, TCP or Unix socket):
//!
//! - [`head`]: request and response heads, parsed by `httparse` with Keel's strict rules on top:
//!   CRLF line ends only (a bare LF is refused), no folded headers, no space before a colon,
//!   UTF-8 header values without control characters, one body framing (`Content-Length` and
//!   `Transfer-Encoding` together are refused, as are conflicting lengths), size limits.
//! - [`body`]: `Content-Length` and chunked bodies, read (with chunk extensions and trailers, per
//!   RFC 9112 §7.1) and written.
//! - [`message`]: requests and responses, and writing them.
//! - [`route`]: routing tables and path patterns.
//! - [`server`]: serving one request (`Expect: 100-continue` included), and protecting a server
//!   from slow and greedy clients: a deadline per connection over the TLS handshake and the head,
//!   a minimum body rate, a per-peer cap and connection pools that unauthenticated peers cannot
//!   take from authenticated ones.
//! - [`client`]: one request over any stream, the response read whatever its framing.
//!
//! One request per connection (`Connection: close`). What a well-behaved peer never sends is
//! refused with a JSON error (`{"error": …}`) rather than guessed at. Nothing here knows about
//! the agent.
//!
//! Pure entry points (bytes in, result out, never a panic) for fuzzing and table tests:
//! [`head::parse_request_head`], [`head::parse_response_head`], [`body::decode_chunked`].

use std::io;

pub mod body;
pub mod client;
pub mod head;
pub mod message;
pub mod route;
pub mod server;

pub use body::{decode_chunked, Body, ChunkedReader, ChunkedWriter, Framing, Trailers};
pub use client::{read_response, read_response_head, write_chunked_request_head, write_request};
pub use head::{parse_request_head, parse_response_head, read_request_head, RequestHead};
pub use message::{
    write_response, write_stream_head, ErrorBody, Request, Response, CONTINUE_RESPONSE,
};
pub use route::{path_matches, path_params, query_param, route, Route};
pub use server::{read_request, serve_one};

/// Size limits for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request or status line plus headers, in bytes (and the trailer section of a chunked body).
    pub max_head: usize,
    /// Number of header fields (and of trailer fields).
    pub max_headers: usize,
    /// Body held in memory, in bytes. Streamed bodies (uploads) are limited by their reader.
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
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum HttpError {
    /// The peer closed the connection before sending anything
    Closed,
    /// Cannot read the message: {0}
    Io(#[from] io::Error),
    /// malformed request: {0}
    Malformed(String),
    /// malformed response: {0}
    MalformedResponse(String),
    /// Message head longer than {0} bytes
    HeadTooLarge(usize),
    /// The message has more than {0} header fields
    TooManyHeaders(usize),
    /// The body of {len} bytes is longer than {limit} bytes
    BodyTooLarge { len: u64, limit: usize },
    /// Transfer-Encoding {0:?} is not supported; send chunked or Content-Length
    TransferEncoding(String),
    /// HTTP version {0:?} is not supported; use HTTP/1.1
    Version(String),
    /// Expect {0:?} is not supported; only 100-continue is
    Expectation(String),
    /// The request was not complete within the time limit
    Timeout,
}

impl HttpError {
    /// The response that tells a client what was wrong, when there is still a client to tell.
    pub fn response(&self) -> Option<Response> {
        let status = match self {
            Self::Closed | Self::Io(_) | Self::MalformedResponse(_) => return None,
            Self::Malformed(_) => 400,
            Self::Timeout => 408,
            Self::BodyTooLarge { .. } => 413,
            Self::Expectation(_) => 417,
            Self::HeadTooLarge(_) | Self::TooManyHeaders(_) => 431,
            Self::TransferEncoding(_) => 501,
            Self::Version(_) => 505,
        };
        Some(Response::error(status, &self.to_string()))
    }

    /// The same error, said of a response (the client side) rather than of a request.
    pub fn in_response(self) -> Self {
        match self {
            Self::Malformed(what) => Self::MalformedResponse(what),
            Self::TransferEncoding(te) => {
                Self::MalformedResponse(format!("unsupported Transfer-Encoding {te:?}"))
            }
            e => e,
        }
    }

    /// An I/O error as an `HttpError`: a timeout is `Timeout`, an error that a body reader
    /// wrapped in an `io::Error` is itself again.
    pub fn from_io(e: io::Error) -> Self {
        if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) {
            return Self::Timeout;
        }
        if e.get_ref().is_some_and(|inner| inner.is::<HttpError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(http) = inner.downcast::<HttpError>() {
                    return *http;
                }
            }
            return Self::Malformed("a body reader failed".into());
        }
        Self::Io(e)
    }

    /// This error carried in an `io::Error`, for `Read` implementations.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

pub(crate) fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Malformed(what.into())
}

/// RFC 9110 token characters (method and header names).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Inputs for the never-panics tests: `seed` mutated (bytes changed, `inserts` inserted,
/// truncated), and every tenth input random bytes.
#[cfg(test)]
pub(crate) fn mutations(seed: &[u8], inserts: &'static [u8], rounds: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut input = seed.to_vec();
        for _ in 0..(next() % 6) {
            let at = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 if at < input.len() => input[at] = next() as u8,
                1 => input.insert(at, inserts[(next() as usize) % inserts.len()]),
                _ => input.truncate(at),
            }
        }
        if round % 10 == 0 {
            input = (0..next() % 100).map(|_| next() as u8).collect();
        }
        out.push(input);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_travel_through_io_errors_and_back() {
        let e = HttpError::BodyTooLarge { len: 9, limit: 8 }.into_io();
        assert!(matches!(
            HttpError::from_io(e),
            HttpError::BodyTooLarge { len: 9, limit: 8 }
        ));
        let timeout = io::Error::from(io::ErrorKind::WouldBlock);
        assert!(matches!(HttpError::from_io(timeout), HttpError::Timeout));
        let other = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(HttpError::from_io(other), HttpError::Io(_)));
        let said = HttpError::Malformed("x".into()).in_response();
        assert_eq!(said.to_string(), "malformed response: x");
        assert!(said.response().is_none());
    }
}
