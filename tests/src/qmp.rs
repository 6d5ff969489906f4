//! A tiny QMP client: one command at a time over QEMU's unix socket. QMP speaks one JSON object per
//! line: a greeting, then for each command either `return` or `error`, with asynchronous `event`s
//! interleaved anywhere; events are kept so a test can look at them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// How long one command may take to be answered. QMP answers from QEMU's main loop, which stays
/// responsive even when TCG is slow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Cannot connect to the QMP socket {path}: {source}
    #[error("Cannot connect to the QMP socket {path}: {source}", path = .path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },

    /// QMP I/O failed: {0}
    #[error("QMP I/O failed: {0}")]
    Io(#[from] std::io::Error),

    /// QMP sent a line that is not a JSON object {line:?}: {reason}
    #[error("QMP sent a line that is not a JSON object {line:?}: {reason}")]
    Json { line: String, reason: String },

    /// QMP sent {0} where a greeting was expected
    #[error("QMP sent {0} where a greeting was expected")]
    NoGreeting(String),

    /// QEMU closed the QMP connection
    #[error("QEMU closed the QMP connection")]
    Closed,

    /// QMP command {command} failed: {class}: {desc}
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One asynchronous QMP event, such as `POWERDOWN` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// A message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting(Value),
    Return(Value),
    Error { class: String, desc: String },
    Event(Event),
}

/// Classifies one line received from QEMU.
pub fn parse_message(line: &str) -> Result<Message, QmpError> {
    let bad = |reason: &str| QmpError::Json {
        line: line.to_owned(),
        reason: reason.to_owned(),
    };
    let value: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(bad("not an object"));
    };
    if let Some(greeting) = object.remove("QMP") {
        return Ok(Message::Greeting(greeting));
    }
    if let Some(value) = object.remove("return") {
        return Ok(Message::Return(value));
    }
    if let Some(error) = object.remove("error") {
        let field = |name: &str| {
            error
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        return Ok(Message::Error {
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(Value::String(name)) = object.remove("event") {
        let data = object.remove("data").unwrap_or(Value::Null);
        return Ok(Message::Event(Event { name, data }));
    }
    Err(bad("neither greeting, return, error nor event"))
}

/// The wire form of a command: one JSON object and a newline.
pub fn encode_command(command: &str, arguments: Option<&Map<String, Value>>) -> String {
    let mut message = json!({ "execute": command });
    if let (Some(arguments), Value::Object(object)) = (arguments, &mut message) {
        object.insert("arguments".into(), Value::Object(arguments.clone()));
    }
    format!("{message}\n")
}

/// A connected, capability-negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Event>,
}

impl Qmp {
    /// Connects to `path`, retrying until QEMU has created the socket or `timeout` passes, then
    /// leaves capability negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source: e,
                    })
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        match qmp.read_message()? {
            Message::Greeting(_) => {}
            other => return Err(QmpError::NoGreeting(format!("{other:?}"))),
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Message, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        parse_message(line.trim_end())
    }

    /// Runs `command` and returns its `return` value; events arriving meanwhile are kept.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<&Map<String, Value>>,
    ) -> Result<Value, QmpError> {
        self.writer
            .write_all(encode_command(command, arguments).as_bytes())?;
        loop {
            match self.read_message()? {
                Message::Return(value) => return Ok(value),
                Message::Error { class, desc } => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                Message::Event(event) => self.events.push(event),
                Message::Greeting(_) => {}
            }
        }
    }

    /// Events received so far, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Sets the link state of the NIC or netdev `name`.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        let mut arguments = Map::new();
        arguments.insert("name".into(), name.into());
        arguments.insert("up".into(), up.into());
        self.execute("set_link", Some(&arguments)).map(drop)
    }

    /// Stops QEMU at once. QEMU may close the socket before answering; that counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parse_message_table() {
        let cases = [
            (
                r#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#,
                Message::Greeting(json!({"version": {}, "capabilities": ["oob"]})),
            ),
            (r#"{"return": {}}"#, Message::Return(json!({}))),
            (
                r#"{"return": {"status": "running"}, "id": 1}"#,
                Message::Return(json!({"status": "running"})),
            ),
            (
                r#"{"error": {"class": "CommandNotFound", "desc": "no such"}}"#,
                Message::Error {
                    class: "CommandNotFound".into(),
                    desc: "no such".into(),
                },
            ),
            (
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#,
                Message::Event(Event {
                    name: "POWERDOWN".into(),
                    data: Value::Null,
                }),
            ),
            (
                r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#,
                Message::Event(Event {
                    name: "SHUTDOWN".into(),
                    data: json!({"guest": true, "reason": "guest-shutdown"}),
                }),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_message(line).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn parse_message_rejects_non_qmp_lines_naming_them() {
        for line in ["", "not json", "[1]", r#"{"hello": 1}"#] {
            let err = parse_message(line).unwrap_err();
            assert!(matches!(err, QmpError::Json { .. }), "{line}: {err}");
            assert!(err.to_string().contains(&format!("{line:?}")), "{err}");
        }
    }

    #[test]
    fn encode_command_with_and_without_arguments() {
        assert_eq!(encode_command("quit", None), "{\"execute\":\"quit\"}\n");
        let mut args = Map::new();
        args.insert("name".into(), "net0".into());
        args.insert("up".into(), false.into());
        let line = encode_command("set_link", Some(&args));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({"execute": "set_link", "arguments": {"name": "net0", "up": false}})
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    /// A scripted QEMU on a real socket: checks the handshake, event collection and errors.
    #[test]
    fn session_against_a_scripted_server() {
        let dir = std::env::temp_dir().join(format!("keel-qmp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut received = Vec::new();
            let mut expect = |reply: &str| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                received.push(line);
                out.write_all(reply.as_bytes()).unwrap();
            };
            expect("{\"return\": {}}\n");
            expect("{\"event\": \"POWERDOWN\"}\n{\"return\": {}}\n");
            expect("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no nic\"}}\n");
            received
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        qmp.system_powerdown().unwrap();
        let err = qmp.set_link("nic9", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command set_link failed: GenericError: no nic"
        );
        assert_eq!(qmp.events()[0].name, "POWERDOWN");
        let received = server.join().unwrap();
        assert_eq!(received[0], "{\"execute\":\"qmp_capabilities\"}\n");
        assert_eq!(received[1], "{\"execute\":\"system_powerdown\"}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
