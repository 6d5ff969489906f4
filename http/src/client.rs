//! The client side: one request over any `Read + Write` (TLS, TCP or Unix socket), and its
//! response whatever the framing (`Content-Length`, chunked, or to the end of the connection).
//! Interim `1xx` responses are skipped.

use crate::body::Body;
use crate::head;
use crate::message::{write_fields, Response};
use crate::{HttpError, Limits};
use std::io::{self, Read, Write};

/// Writes a request; a body is sent as JSON with its `Content-Length`.
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
    write_fields(&mut out, &headers, body.unwrap_or_default(), None);
    w.write_all(&out)?;
    w.flush()
}

/// Writes the head of a request whose body follows chunked (an upload of unknown length): send
/// the body through a [`crate::ChunkedWriter`] over the same stream. `headers` come after
/// `Host`; `Transfer-Encoding` and `Connection` are added.
pub fn write_chunked_request_head(
    w: &mut impl Write,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    w.write_all(out.as_bytes())?;
    w.flush()
}

/// Reads a response head, skipping interim (1xx) responses, and returns the response (with an
/// empty body) and its body as a reader.
pub fn read_response_head<'a, R: Read>(
    r: &'a mut R,
    limits: &Limits,
) -> Result<(Response, Body<'a, R>), HttpError> {
    loop {
        let (response, framing, early) = head::read_response_head(r, limits)?;
        if (100..200).contains(&response.status) {
            // Whatever came after an interim response is the start of the next one.
            if !early.is_empty() {
                return read_after(early, r, limits);
            }
            continue;
        }
        return Ok((response, Body::new(early, r, framing, limits)));
    }
}

/// `read_response_head` when the next head's first bytes are already in hand.
fn read_after<'a, R: Read>(
    early: Vec<u8>,
    r: &'a mut R,
    limits: &Limits,
) -> Result<(Response, Body<'a, R>), HttpError> {
    let mut chained = io::Cursor::new(early).chain(r);
    let (response, framing, rest) = head::read_response_head(&mut chained, limits)?;
    if (100..200).contains(&response.status) {
        return Err(HttpError::MalformedResponse(
            "more than one interim response in a row".into(),
        ));
    }
    // What the head reader took from `early` and `r` past the head, then what it left in
    // `early`, then the stream.
    let (cursor, r) = chained.into_inner();
    let position = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let mut pending = rest;
    pending.extend_from_slice(cursor.get_ref().get(position..).unwrap_or_default());
    Ok((response, Body::new(pending, r, framing, limits)))
}

/// Reads one response, body included (within `limits`).
pub fn read_response(r: &mut impl Read, limits: &Limits) -> Result<Response, HttpError> {
    let (mut response, mut body) = read_response_head(r, limits)?;
    response.body = body
        .read_all(limits.max_body)
        .map_err(HttpError::in_response)?;
    Ok(response)
}

/// After sending a head with `Expect: 100-continue`: `None` when the server says go on (send
/// the body), or its final answer, read whole, when it refuses the request from its head.
pub fn await_continue(r: &mut impl Read, limits: &Limits) -> Result<Option<Response>, HttpError> {
    let (response, framing, early) = head::read_response_head(r, limits)?;
    if response.status == 100 {
        return Ok(None);
    }
    if (101..200).contains(&response.status) {
        return Err(HttpError::MalformedResponse(format!(
            "unexpected interim status {}",
            response.status
        )));
    }
    let body = Body::new(early, r, framing, limits)
        .read_all(limits.max_body)
        .map_err(HttpError::in_response)?;
    Ok(Some(Response { body, ..response }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::write_response;
    use crate::server::serve_head;
    use crate::ChunkedWriter;
    use std::io::Cursor;
    use std::os::unix::net::UnixStream;

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
    fn chunked_and_interim_responses() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n";
        let back = read_response(&mut Cursor::new(raw.to_vec()), &Limits::default()).unwrap();
        assert_eq!(
            (back.status, back.body.as_slice()),
            (200, b"abcde".as_slice())
        );
        // Interim and final heads arriving in one read, across reads.
        struct Halves(Vec<u8>, usize);
        impl Read for Halves {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        for step in [1, 7, 30, 1000] {
            let mut r = Halves(raw.to_vec(), step);
            let back = read_response(&mut r, &Limits::default()).unwrap();
            assert_eq!(back.body, b"abcde", "step {step}");
        }
        let broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab";
        let err = read_response(&mut Cursor::new(broken.to_vec()), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("malformed response"), "{err}");
    }

    #[test]
    fn a_streamed_response_is_read_to_its_last_chunk() {
        let mut wire = Vec::new();
        crate::write_stream_head(&mut wire, 200, "text/plain").unwrap();
        let mut out = ChunkedWriter::new(&mut wire);
        out.write_all(b"history ").unwrap();
        out.write_all(b"and more").unwrap();
        out.finish(&[]).unwrap();
        // What follows the last chunk is not part of the body.
        wire.extend_from_slice(b"garbage");
        let mut r = Cursor::new(wire);
        let (head, mut body) = read_response_head(&mut r, &Limits::default()).unwrap();
        assert_eq!(head.header("content-type"), Some("text/plain"));
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "history and more");
    }

    #[test]
    fn requests_round_trip() {
        let mut wire = Vec::new();
        write_request(&mut wire, "POST", "/v1/adopt", "10.0.0.1", Some(b"{}")).unwrap();
        let req = crate::read_request(&mut Cursor::new(wire), &Limits::default()).unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v1/adopt")
        );
        assert_eq!(req.header("host"), Some("10.0.0.1"));
        assert_eq!(req.body, b"{}");
    }

    /// A chunked upload with `Expect: 100-continue` against a server that streams the body and
    /// reads the digest from the trailer; and the same refused from its head.
    #[test]
    fn chunked_upload_with_expect_continue() {
        let limits = Limits::default();
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            serve_head(&mut server, &Limits::default(), |s, mut head| {
                if head.request.path != "/up" {
                    return Ok(Response::error(404, "no"));
                }
                let mut body = head.body(s, &Limits::default())?;
                let mut data = Vec::new();
                body.read_to_end(&mut data).map_err(HttpError::from_io)?;
                let digest = body.trailer("x-sum").unwrap_or_default().to_string();
                Ok(Response::json(200, &(data.len(), digest)))
            })
        });
        let headers = [("Expect", "100-continue"), ("Trailer", "X-Sum")];
        write_chunked_request_head(&mut client, "PUT", "/up", "h", &headers).unwrap();
        assert!(await_continue(&mut client, &limits).unwrap().is_none());
        let mut w = ChunkedWriter::new(&mut client);
        for _ in 0..100 {
            w.write_all(&[7u8; 1000]).unwrap();
        }
        w.finish(&[("X-Sum", "abc")]).unwrap();
        let response = read_response(&mut client, &limits).unwrap();
        assert_eq!(
            response.json_body::<(usize, String)>().unwrap(),
            (100_000, "abc".into())
        );
        served.join().unwrap().unwrap();

        let (mut client, mut server) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            serve_head(&mut server, &Limits::default(), |_, _| {
                Ok(Response::error(404, "no"))
            })
        });
        write_chunked_request_head(&mut client, "PUT", "/nope", "h", &headers).unwrap();
        let refused = await_continue(&mut client, &limits).unwrap().unwrap();
        assert_eq!(
            (refused.status, refused.error_message().as_str()),
            (404, "no")
        );
        served.join().unwrap().unwrap();
    }
}
