//! The local control socket: PID 1 owns the network service; other processes (the agent, the
//! console) reach it over `/run/keel/net.sock`, root only. One JSON request per connection, one
//! JSON reply: `{"op":"status"}`, `{"op":"preview","change":{…}}`,
//! `{"op":"apply","change":{…},"options":{"confirm_within_secs":60,"manager":"h:p"}}`,
//! `{"op":"confirm"}` → `{"ok":…}` or `{"error":"…","kind":"invalid"|"conflict"|"failed"}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::NetConfig;
use super::service::{ApplyOptions, NetError, NetService, Refusal};

/// The socket's path.
pub const SOCKET: &str = "/run/keel/net.sock";
/// Requests larger than this are refused (a configuration is a few KiB).
const MAX_REQUEST: u64 = 1 << 20;
/// A client that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for an apply (plan, netlink) on a slow machine.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Preview {
        change: NetConfig,
    },
    Apply {
        change: NetConfig,
        #[serde(default)]
        options: ApplyOptions,
    },
    Confirm {},
}

/// `ok` on success; otherwise `error` and what kind of refusal it is.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<Refusal>,
}

impl Reply {
    fn refused(kind: Refusal, error: String) -> Self {
        Self {
            error: Some(error),
            kind: Some(kind),
            ..Self::default()
        }
    }
}

fn handle(service: &NetService, request: Request) -> Result<serde_json::Value, NetError> {
    let value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| NetError::Remote(e.to_string()))
    };
    match request {
        Request::Status {} => value(serde_json::to_value(service.status()?)),
        Request::Preview { change } => value(serde_json::to_value(service.preview(&change)?)),
        Request::Apply { change, options } => {
            value(serde_json::to_value(service.apply(&change, &options)?))
        }
        Request::Confirm {} => service.confirm().map(|()| serde_json::Value::Null),
    }
}

fn serve_one(service: &NetService, stream: UnixStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?.take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => match handle(service, request) {
            Ok(v) => Reply {
                ok: Some(v),
                ..Reply::default()
            },
            Err(e) => Reply::refused(e.refusal(), e.to_string()),
        },
        Err(e) => Reply::refused(Refusal::Invalid, format!("bad request: {e}")),
    };
    let mut text = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    (&stream).write_all(&text)
}

/// Serves `service` on `path` from a thread.
pub fn serve(service: NetService, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("net-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_one(&service, stream);
            }
        })?;
    Ok(())
}

/// Sends `request` to the network service at `path` and returns its answer.
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value, NetError> {
    let not_running = |e: std::io::Error| NetError::NotRunning(format!("{}: {e}", path.display()));
    let mut stream = UnixStream::connect(path).map_err(not_running)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(not_running)?;
    let mut text = serde_json::to_vec(request).map_err(|e| NetError::Remote(e.to_string()))?;
    text.push(b'\n');
    stream.write_all(&text).map_err(not_running)?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST * 4))
        .read_line(&mut line)
        .map_err(not_running)?;
    match serde_json::from_str::<Reply>(&line) {
        Ok(Reply {
            error: Some(e),
            kind,
            ..
        }) => Err(NetError::Refused(kind.unwrap_or(Refusal::Failed), e)),
        Ok(Reply { ok, .. }) => Ok(ok.unwrap_or(serde_json::Value::Null)),
        Err(e) => Err(NetError::Remote(format!(
            "bad reply from {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict_json() {
        let cases = [
            (r#"{"op":"status"}"#, Some(Request::Status {})),
            (r#"{"op":"confirm"}"#, Some(Request::Confirm {})),
            (
                r#"{"op":"apply","change":{"hostname":"h"}}"#,
                Some(Request::Apply {
                    change: NetConfig {
                        hostname: Some("h".into()),
                        ..NetConfig::default()
                    },
                    options: ApplyOptions::default(),
                }),
            ),
            (
                r#"{"op":"apply","change":{},"options":{"confirm_within_secs":5,"manager":"m:1"}}"#,
                Some(Request::Apply {
                    change: NetConfig::default(),
                    options: ApplyOptions {
                        confirm_within_secs: 5,
                        manager: Some("m:1".into()),
                    },
                }),
            ),
            (r#"{"op":"status","x":1}"#, None),
            (r#"{"op":"reboot"}"#, None),
            (r#"{"op":"preview","change":{"hostnme":"h"}}"#, None),
        ];
        for (text, want) in cases {
            assert_eq!(serde_json::from_str::<Request>(text).ok(), want, "{text}");
        }
    }
}
