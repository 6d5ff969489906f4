//! `GET /v1/host/logs?after=SEQ[&follow=true]`: the host's log records from /dev/kmsg
//! (`localapi::kmsg` reads them; the newest `KEEP` of them), one JSON `LogEntry` per line. With `follow` the records
//! after SEQ come first, then each new one as the kernel logs it, until the client leaves.

use super::super::http::{self, HttpError};
use super::handlers::Tls;
use super::{Agent, Request};
use crate::agent::http::Response;
use crate::localapi::kmsg::{KmsgLog, DEVICE, KEEP};
use keel_api::logs::{LogEntry, JSON_LINES};
use keel_http::ChunkedWriter;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How often a follower looks for new records (and for a client that left).
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The `after` query parameter: `None` (every record held) or a sequence number.
fn after(request: &Request) -> Result<Option<u64>, Response> {
    match http::query_param(request.query.as_deref(), "after") {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Response::error(400, "after must be a log sequence number (0 or more)")),
    }
}

/// The records as JSON lines.
fn json_lines(entries: &[LogEntry]) -> Vec<u8> {
    let mut body = Vec::new();
    for entry in entries {
        // A LogEntry (numbers, an enum, a string) always serializes.
        if serde_json::to_writer(&mut body, entry).is_ok() {
            body.push(b'\n');
        }
    }
    body
}

/// The kernel log read so far, or the answer saying why it cannot be read.
fn read_log() -> Result<KmsgLog, Response> {
    let mut log = KmsgLog::new(DEVICE, KEEP);
    log.refresh()
        .map_err(|e| Response::error(500, &format!("Cannot read {DEVICE}: {e}")))?;
    Ok(log)
}

/// Whether the client closed its side or sent anything (it has nothing more to say after its
/// request), waiting at most `timeout` for either.
fn client_left(tcp: &TcpStream, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: tcp.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fd` is one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    ready > 0
        || (ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
}

impl Agent {
    pub(super) fn host_logs(&self, request: &Request) -> Response {
        if let Some(bad) = super::handlers::bad_follow(request) {
            return bad;
        }
        let after = match after(request) {
            Ok(after) => after,
            Err(response) => return response,
        };
        match read_log() {
            Ok(log) => Response {
                status: 200,
                headers: vec![("Content-Type".into(), JSON_LINES.into())],
                body: json_lines(&log.after(after)),
            },
            Err(response) => response,
        }
    }

    /// The records after `after`, then every new one until the client leaves (or a write
    /// times out).
    pub(super) fn follow_logs(&self, request: &Request, stream: &mut Tls) -> Result<(), HttpError> {
        let (mut last, mut log) = match after(request).and_then(|a| Ok((a, read_log()?))) {
            Ok(ready) => ready,
            Err(response) => return Ok(http::write_response(stream, &response)?),
        };
        // A followed log is quiet for as long as the host is: no deadline and no rate from here.
        stream.sock.open();
        let watch = stream.sock.get_ref().try_clone()?;
        http::write_stream_head(stream, 200, JSON_LINES)?;
        let mut out = ChunkedWriter::new(&mut *stream);
        loop {
            let fresh = log.after(last);
            if let Some(newest) = fresh.last() {
                last = Some(newest.seq);
                out.write_all(&json_lines(&fresh))?;
                out.flush()?;
            }
            if client_left(&watch, FOLLOW_POLL) || log.refresh().is_err() {
                out.finish(&[])?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keel_api::logs::LogSource;

    fn request(query: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: keel_api::logs::HOST_LOGS.into(),
            query: query.map(String::from),
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn after_is_a_sequence_number() {
        assert_eq!(after(&request(None)), Ok(None));
        assert_eq!(after(&request(Some("after=12&follow=true"))), Ok(Some(12)));
        for bad in [
            "after=",
            "after=-1",
            "after=x",
            "after=99999999999999999999",
        ] {
            assert_eq!(after(&request(Some(bad))).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn records_are_json_lines() {
        let entry = |seq| LogEntry {
            seq,
            level: 3,
            micros: 5,
            source: LogSource::Keel,
            message: "keel-agent: a\nb".into(),
        };
        let body = String::from_utf8(json_lines(&[entry(1), entry(2)])).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2, "{body}");
        let back: LogEntry = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back, entry(2));
        assert!(json_lines(&[]).is_empty());
    }
}
