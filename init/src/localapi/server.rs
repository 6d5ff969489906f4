//! Serves a `ConsoleBackend` on the console socket through `agent::http`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::types::{Invalid, ManagerProbe, NetworkForm, ResetRequest, TestRequest};
use super::{ApiError, ConsoleBackend};
use crate::agent::api::CreateStateRequest;
use crate::agent::http::server::{Guarded, Pool, PoolLimits, Protection};
use crate::agent::http::{self, Limits, Request, Response, Route};
use crate::agent::registration::ManagerChoice;

/// At most this many requests are served at once (two consoles, a few polls each).
const MAX_CONNECTIONS: usize = 8;
/// Most log records in one answer; the client asks again after the last one it got.
pub const MAX_LOG_PAGE: usize = 1000;
/// A client that stalls longer than this mid-request is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Cannot create the console socket {0}: {1}
    #[error("Cannot create the console socket {0}: {1}")]
    Bind(PathBuf, io::Error),
}

#[derive(Debug, Clone, Copy)]
enum Handler {
    Status,
    Network,
    Preview,
    Apply,
    Confirm,
    Test,
    Logs,
    Reset,
    Registration,
    ProbeManager,
    ChooseManager,
    ForgetManager,
    State,
    CreateState,
}

const ROUTES: &[Route<Handler>] = &[
    route("GET", "/status", Handler::Status),
    route("GET", "/network", Handler::Network),
    route("POST", "/network/preview", Handler::Preview),
    route("POST", "/network/apply", Handler::Apply),
    route("POST", "/network/confirm", Handler::Confirm),
    route("POST", "/network/test", Handler::Test),
    route("GET", "/logs", Handler::Logs),
    route("POST", "/adoption/reset", Handler::Reset),
    route("GET", "/manager", Handler::Registration),
    route("POST", "/manager/probe", Handler::ProbeManager),
    route("PUT", "/manager", Handler::ChooseManager),
    route("DELETE", "/manager", Handler::ForgetManager),
    route("GET", "/state", Handler::State),
    route("POST", "/state/create", Handler::CreateState),
];

const fn route(method: &'static str, path: &'static str, handler: Handler) -> Route<Handler> {
    Route {
        method,
        path,
        handler,
    }
}

/// The HTTP answer for a backend error.
pub fn error_response(e: &ApiError) -> Response {
    match e {
        ApiError::Invalid(errors) => Response::json(
            422,
            &Invalid {
                errors: errors.clone(),
            },
        ),
        ApiError::Conflict(m) => Response::error(409, m),
        ApiError::Unavailable(m) | ApiError::Unreachable(_, m) => Response::error(503, m),
        ApiError::Failed(m) => Response::error(500, m),
    }
}

fn answer<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => Response::json(200, &value),
        Err(e) => error_response(&e),
    }
}

/// `after=N` from the query; absent means from the oldest record.
pub fn parse_after(query: Option<&str>) -> Result<Option<u64>, String> {
    for pair in query.unwrap_or_default().split('&') {
        if let Some(value) = pair.strip_prefix("after=") {
            return value
                .parse()
                .map(Some)
                .map_err(|_| format!("after={value:?} is not a sequence number"));
        }
    }
    Ok(None)
}

/// Answers one request with `backend`.
pub fn handle(backend: &dyn ConsoleBackend, request: &Request) -> Response {
    let handler = match http::route(ROUTES, request) {
        Ok(h) => *h,
        Err(response) => return response,
    };
    match handler {
        Handler::Status => answer(backend.status()),
        Handler::Network => answer(backend.network()),
        Handler::Preview => match request.json::<NetworkForm>() {
            Ok(form) => answer(backend.preview(&form)),
            Err(r) => r,
        },
        Handler::Apply => match request.json::<NetworkForm>() {
            Ok(form) => answer(backend.apply(&form)),
            Err(r) => r,
        },
        Handler::Confirm => answer(backend.confirm().map(|()| keel_api::reply::EmptyReply {})),
        Handler::Test => match request.json::<TestRequest>() {
            Ok(test) => answer(backend.test(&test)),
            Err(r) => r,
        },
        Handler::Logs => match parse_after(request.query.as_deref()) {
            Ok(after) => answer(backend.logs(after).map(|mut page| {
                page.entries.truncate(MAX_LOG_PAGE);
                page
            })),
            Err(m) => Response::error(400, &m),
        },
        Handler::Registration => answer(backend.registration()),
        Handler::ProbeManager => match request.json::<ManagerProbe>() {
            Ok(probe) => answer(backend.probe_manager(&probe)),
            Err(r) => r,
        },
        Handler::ChooseManager => match request.json::<ManagerChoice>() {
            Ok(choice) => answer(backend.choose_manager(&choice)),
            Err(r) => r,
        },
        Handler::ForgetManager => answer(backend.forget_manager()),
        Handler::State => answer(backend.state()),
        Handler::CreateState => match request.json::<CreateStateRequest>() {
            Ok(create) => answer(backend.create_state(&create)),
            Err(r) => r,
        },
        Handler::Reset => match request.json::<ResetRequest>() {
            Ok(ResetRequest { confirm: true }) => answer(backend.reset_adoption()),
            Ok(_) => Response::error(400, "Resetting the adoption needs {\"confirm\": true}"),
            Err(r) => r,
        },
    }
}

/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain old data; getsockopt fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Binds `path` (replacing a stale socket), mode 0600. Split from `serve` so callers can bind
/// before they report readiness.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |e| ServeError::Bind(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves `backend` on `listener` forever, one thread per connection. Only root (the socket is
/// 0600, and the peer's uid is checked) and this process's own user are answered.
pub fn serve_on(listener: UnixListener, backend: Arc<dyn ConsoleBackend>) {
    let pool = Pool::new(PoolLimits {
        pending: MAX_CONNECTIONS,
        per_peer: MAX_CONNECTIONS,
        authenticated: 0,
    });
    let protection = Protection {
        head_timeout: IO_TIMEOUT,
        io_timeout: IO_TIMEOUT,
        ..Protection::default()
    };
    // SAFETY: getuid has no preconditions.
    let own_uid = unsafe { libc::getuid() };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let allowed = peer_uid(&stream).is_ok_and(|uid| uid == 0 || uid == own_uid);
        let Some(slot) = pool.try_admit().filter(|_| allowed) else {
            let _ = http::write_response(&mut stream, &Response::error(503, "Busy or not allowed"));
            continue;
        };
        let backend = Arc::clone(&backend);
        // If the thread cannot start, the closure (and the slot in it) is dropped with the error.
        let _ = std::thread::Builder::new()
            .name("console-api".into())
            .spawn(move || {
                let _slot = slot;
                let Ok(mut stream) = Guarded::new(stream, protection) else {
                    return;
                };
                let _ = http::serve_one(&mut stream, &Limits::default(), |_, request| {
                    handle(backend.as_ref(), request)
                });
            });
    }
}

/// Binds `socket_path` and serves `backend` on it forever.
pub fn serve(socket_path: &Path, backend: Arc<dyn ConsoleBackend>) -> Result<(), ServeError> {
    let listener = bind(socket_path)?;
    serve_on(listener, backend);
    Ok(())
}
