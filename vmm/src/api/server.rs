//! The API server: one thread, one connection at a time, one request per connection, parsed and
//! answered by keel-http. Every connection gets a total time budget (keel-http's head deadline,
//! kept over the body too), so a slow or silent client delays the next one by at most
//! `REQUEST_TIMEOUT` and can never wedge the thread.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::VmControl;
use crate::seccomp::{self, ThreadKind};
use keel_http::server::{Guarded, Protection};
use keel_http::{HttpError, Limits, Response};

/// Time a client has to send its whole request, and to take the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line plus headers. Real clients send a few hundred bytes.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Longest body. No endpoint takes more than an empty JSON object today.
pub const MAX_BODY_LEN: usize = 4 * 1024;

const LIMITS: Limits = Limits {
    max_head: MAX_HEAD_LEN,
    max_headers: 64,
    max_body: MAX_BODY_LEN,
};

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// API socket {0}: another process is serving it
    #[error("API socket {}: another process is serving it", .0.display())]
    InUse(PathBuf),
    /// API socket {0}: exists and is not a socket
    #[error("API socket {}: exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// API socket {path}: {source}
    #[error("API socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    /// Cannot start the API thread: {0}
    #[error("cannot start the API thread: {0}")]
    Thread(io::Error),
    /// API thread: {0}
    #[error("API thread: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
    /// The API thread ended before it was ready
    #[error("the API thread ended before it was ready")]
    ThreadDied,
}

/// A running API server. Dropping it removes the socket file (the thread itself ends with the
/// process), so keep it alive for as long as the VM runs.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    thread: JoinHandle<()>,
}

impl ApiServer {
    /// The socket the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the server thread is still running (it only ends if the process is ending).
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600), starts the "api" thread, which installs the api seccomp filter before
/// it accepts anything, and returns once the thread is serving. A stale socket left by a dead
/// process is replaced; a live one is an error.
pub fn start_server(path: &Path, vm: Arc<dyn VmControl>) -> Result<ApiServer, ApiError> {
    let listener = bind(path)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(ThreadKind::Api) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            serve(&listener, vm.as_ref());
        })
        .map_err(ApiError::Thread)?;
    let server = ApiServer {
        path: path.to_owned(),
        thread,
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(server),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::ThreadDied),
    }
}

fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| ApiError::Bind {
            path: path.to_owned(),
            source: e,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind {
        path: path.to_owned(),
        source: e,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        ApiError::Bind {
            path: path.to_owned(),
            source: e,
        }
    })?;
    Ok(listener)
}

fn serve(listener: &UnixListener, vm: &dyn VmControl) -> ! {
    loop {
        match listener.accept() {
            Ok((stream, _)) => handle_connection(stream, vm),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                log::warn!("api: accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(stream: UnixStream, vm: &dyn VmControl) {
    let protection = Protection {
        head_timeout: REQUEST_TIMEOUT,
        io_timeout: REQUEST_TIMEOUT,
        ..Protection::default()
    };
    let Ok(mut stream) = Guarded::new(stream, protection) else {
        return;
    };
    let response = match read_request(&mut stream) {
        Ok(request) => route(&request.method, &request.path, &request.body, vm),
        // The client closed without sending anything: nothing to answer.
        Err(HttpError::Closed) => return,
        Err(e) => match e.response() {
            Some(response) => response,
            None => {
                log::warn!("api: reading a request: {e}");
                return;
            }
        },
    };
    // A client that left early does not get its answer; nothing else to do about it.
    let _ = keel_http::write_response(&mut stream, &response.with_header("Server", "keel-vmm"));
    let mut stream = stream.into_inner();
    linger(&mut stream);
}

/// Reads one request within the connection's time budget (the head deadline is never lifted).
/// Bytes past the body are refused: one request per connection.
fn read_request(stream: &mut Guarded<UnixStream>) -> Result<keel_http::Request, HttpError> {
    let head = keel_http::read_request_head(stream, &LIMITS)?;
    if head.pipelined() {
        return Err(HttpError::Malformed(
            "more data than Content-Length (one request per connection)".into(),
        ));
    }
    head.read_body(stream, &LIMITS)
}

/// Closing a unix socket with unread input resets the peer, which may then lose the response
/// still queued for it (a rejected over-long request is exactly that case). So signal the end of
/// the response and discard what the client still sends, bounded in bytes and time.
fn linger(stream: &mut UnixStream) {
    const MAX_DISCARD: usize = 64 * 1024;
    const MAX_WAIT: Duration = Duration::from_millis(500);
    if stream.shutdown(std::net::Shutdown::Write).is_err()
        || stream.set_read_timeout(Some(MAX_WAIT)).is_err()
    {
        return;
    }
    let deadline = Instant::now() + MAX_WAIT;
    let mut scratch = [0u8; 4096];
    let mut discarded = 0;
    while discarded < MAX_DISCARD && Instant::now() < deadline {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Maps a request to the VM operation. The endpoints take no body; an empty JSON object is
/// accepted for clients that always send one.
pub fn route(method: &str, path: &str, body: &[u8], vm: &dyn VmControl) -> Response {
    type Action = fn(&dyn VmControl) -> Result<(), String>;
    let (allowed, action): (&'static str, Option<Action>) = match path {
        "/vm" => ("GET", None),
        "/vm/pause" => ("PUT", Some(|vm| vm.pause())),
        "/vm/resume" => ("PUT", Some(|vm| vm.resume())),
        "/vm/shutdown" => ("PUT", Some(|vm| vm.shutdown())),
        "/vm/power-off" => ("PUT", Some(|vm| vm.power_off())),
        _ => return Response::error(404, &format!("no such endpoint {path}")),
    };
    if method != allowed {
        let message = format!("{path} does not support {method}; use {allowed}");
        return Response::error(405, &message).with_header("Allow", allowed);
    }
    if !body_is_empty(body) {
        return Response::error(
            400,
            &format!("{path} takes no body (or an empty JSON object)"),
        );
    }
    match action {
        None => Response::json(200, &vm.info()),
        Some(action) => match action(vm) {
            Ok(()) => Response::empty(204),
            Err(e) => Response::error(409, &e),
        },
    }
}

fn body_is_empty(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .is_ok_and(|m| m.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{VmInfo, VmState};
    use super::*;
    use std::io::{BufRead, Write};
    use std::sync::Mutex;

    /// The VMM core's side of the API boundary: records the calls and refuses what a real VM
    /// would refuse (pausing twice, resuming a running VM).
    #[derive(Default)]
    struct FakeVm {
        calls: Mutex<Vec<&'static str>>,
        paused: Mutex<bool>,
    }

    impl FakeVm {
        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl VmControl for FakeVm {
        fn info(&self) -> VmInfo {
            self.calls.lock().unwrap().push("info");
            VmInfo {
                state: if *self.paused.lock().unwrap() {
                    VmState::Paused
                } else {
                    VmState::Running
                },
                vcpus: 2,
                memory_mib: 256,
                vmm_version: "0.1.0".into(),
                uptime_us: 42,
            }
        }
        fn pause(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("pause");
            let mut paused = self.paused.lock().unwrap();
            if *paused {
                return Err("the VM is already paused".into());
            }
            *paused = true;
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("resume");
            let mut paused = self.paused.lock().unwrap();
            if !*paused {
                return Err("the VM is not paused".into());
            }
            *paused = false;
            Ok(())
        }
        fn shutdown(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("shutdown");
            Ok(())
        }
        fn power_off(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("power_off");
            Ok(())
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("keel-api-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Sends raw bytes, half-closes, returns (status, headers, body).
    fn exchange(path: &Path, raw: &[u8]) -> (u16, Vec<String>, String) {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(raw).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reader = io::BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            headers.push(line);
        }
        let mut body = String::new();
        reader.read_to_string(&mut body).unwrap();
        (status, headers, body)
    }

    fn start(name: &str) -> (TempDir, Arc<FakeVm>, ApiServer) {
        let dir = TempDir::new(name);
        let vm = Arc::new(FakeVm::default());
        let server = start_server(&dir.0.join("api.sock"), vm.clone()).unwrap();
        (dir, vm, server)
    }

    #[test]
    fn serves_every_endpoint_over_a_real_socket() {
        let (_dir, vm, server) = start("endpoints");
        let path = server.path().to_owned();

        let (status, headers, body) = exchange(&path, b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(headers.contains(&"Content-Type: application/json".to_owned()));
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["state"], "running");
        assert_eq!(info["vcpus"], 2);
        assert_eq!(info["memory_mib"], 256);
        assert_eq!(info["uptime_us"], 42);

        let put = |p: &str| exchange(&path, format!("PUT {p} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(put("/vm/pause").0, 204);
        let (status, _, body) = put("/vm/pause");
        assert_eq!(status, 409);
        assert_eq!(body, r#"{"error":"the VM is already paused"}"#);
        assert_eq!(
            exchange(&path, b"GET /vm HTTP/1.1\r\n\r\n").2,
            r#"{"state":"paused","vcpus":2,"memory_mib":256,"vmm_version":"0.1.0","uptime_us":42}"#
        );
        assert_eq!(put("/vm/resume").0, 204);
        assert_eq!(put("/vm/shutdown").0, 204);
        let with_body = exchange(
            &path,
            b"PUT /vm/power-off HTTP/1.1\r\nContent-Length: 4\r\n\r\n{ }\n",
        );
        assert_eq!(with_body.0, 204);
        assert_eq!(
            vm.calls(),
            [
                "info",
                "pause",
                "pause",
                "info",
                "resume",
                "shutdown",
                "power_off"
            ]
        );
        assert!(server.is_running());
    }

    #[test]
    fn malformed_requests_get_json_errors_and_touch_nothing() {
        let (_dir, vm, server) = start("malformed");
        let path = server.path().to_owned();
        let long_head = format!(
            "GET /vm HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_LEN)
        );
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (
                b"GET /nope HTTP/1.1\r\n\r\n".to_vec(),
                404,
                "no such endpoint /nope",
            ),
            (b"DELETE /vm HTTP/1.1\r\n\r\n".to_vec(), 405, "use GET"),
            (b"GET /vm/pause HTTP/1.1\r\n\r\n".to_vec(), 405, "use PUT"),
            (b"garbage\r\n\r\n".to_vec(), 400, "malformed request"),
            // Bare LF line ends are refused, as by every Keel server.
            (b"GET /vm HTTP/1.1\n\n".to_vec(), 400, "bare LF"),
            (
                b"GET /vm HTTP/1.1\r\nAccept: */*\n\r\n".to_vec(),
                400,
                "bare LF",
            ),
            (b"\x00\x01\x02\r\n\r\n".to_vec(), 400, "malformed request"),
            (
                b"GET /vm HTTP/1.1\r\n".to_vec(),
                400,
                "closed in the middle",
            ),
            (long_head.into_bytes(), 431, "head longer than"),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec(),
                413,
                "longer than 4096",
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
                400,
                "body ended after 5 of 10",
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 7\r\n\r\n\"pause\"".to_vec(),
                400,
                "takes no body",
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"a\": 1}".to_vec(),
                400,
                "takes no body",
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\n\r\nPUT /vm/pause HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "one request per connection",
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                501,
                "Transfer-Encoding",
            ),
        ];
        for (raw, status, text) in cases {
            let (got, headers, body) = exchange(&path, &raw);
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
            assert_eq!(got, status, "{shown:?}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let message = json["error"].as_str().unwrap();
            assert!(
                message.contains(text),
                "{shown:?}: {message:?} lacks {text:?}"
            );
            if status == 405 {
                assert!(
                    headers.iter().any(|h| h.starts_with("Allow: ")),
                    "{headers:?}"
                );
            }
        }
        assert!(vm.calls().is_empty(), "{:?}", vm.calls());
        assert!(server.is_running());
    }

    #[test]
    fn silent_and_vanishing_clients_do_not_block_the_server() {
        let (_dir, _vm, server) = start("clients");
        let path = server.path().to_owned();
        // Connect and close without a byte, and connect and vanish mid-request.
        drop(UnixStream::connect(&path).unwrap());
        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(b"GET /vm HT").unwrap();
        drop(half);
        assert_eq!(exchange(&path, b"GET /vm HTTP/1.1\r\n\r\n").0, 200);
    }

    #[test]
    fn a_silent_client_times_out_with_408() {
        let (_dir, _vm, server) = start("timeout");
        let mut stream = UnixStream::connect(server.path()).unwrap();
        stream.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
        let waited = started.elapsed();
        assert!(
            waited >= REQUEST_TIMEOUT - Duration::from_millis(500),
            "{waited:?}"
        );
        assert!(waited < REQUEST_TIMEOUT * 2, "{waited:?}");
    }

    #[test]
    fn socket_file_lifecycle() {
        let dir = TempDir::new("lifecycle");
        let path = dir.0.join("api.sock");
        let vm: Arc<dyn VmControl> = Arc::new(FakeVm::default());

        // A stale socket (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let server = start_server(&path, vm.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A live one is not taken over.
        let err = start_server(&path, vm.clone()).unwrap_err();
        assert!(
            err.to_string().contains("another process is serving it"),
            "{err}"
        );

        // Dropping the server removes the socket.
        drop(server);
        assert!(!path.exists());

        // A regular file in the way is not deleted.
        std::fs::write(&path, b"precious").unwrap();
        let err = start_server(&path, vm.clone()).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");

        let err = start_server(&dir.0.join("missing/api.sock"), vm).unwrap_err();
        assert!(err.to_string().contains("missing/api.sock"), "{err}");
    }
}
