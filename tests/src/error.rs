//! The harness's one error type. Its `Debug` prints the `Display` text so that a test returning
//! `Result<(), Error>` shows the readable message, console context included, when it fails.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::console::Line;
use crate::qmp::QmpError;

#[derive(thiserror::Error)]
pub enum Error {
    /// The Keel image is incomplete: {path} is missing (out dir {dir}); run `make image` first
    #[error("The Keel image is incomplete: {path} is missing (out dir {dir}); run `make image` first", path = .path.display(), dir = .dir.display())]
    MissingImage { path: PathBuf, dir: PathBuf },

    /// Cannot read {path}: {source}
    #[error("Cannot read {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Cannot parse {path}: {reason}
    #[error("Cannot parse {path}: {reason}", path = .path.display())]
    Parse { path: PathBuf, reason: String },

    /// Cannot create {path}: {source}
    #[error("Cannot create {path}: {source}", path = .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Cannot start {program}: {source}
    #[error("Cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    /// QEMU exited ({status}) before it was ready; its stderr: {stderr}
    #[error("QEMU exited ({status}) before it was ready; its stderr:\n{stderr}")]
    EarlyExit { status: String, stderr: String },

    /// Cannot find a free TCP port on 127.0.0.1: {0}
    #[error("Cannot find a free TCP port on 127.0.0.1: {0}")]
    Port(std::io::Error),

    /// Timed out after {timeout:?} waiting for a console line {wanted}; last {n} console lines: {context}
    #[error("Timed out after {timeout:?} waiting for a console line {wanted}; last {n} console lines:\n{context}", n = .context.len(), context = render(.context))]
    Timeout {
        wanted: String,
        timeout: Duration,
        context: Vec<Line>,
    },

    /// The console closed ({status}) before a line {wanted} appeared; last {n} console lines: {context}
    #[error("The console closed ({status}) before a line {wanted} appeared; last {n} console lines:\n{context}", n = .context.len(), context = render(.context))]
    ConsoleClosed {
        wanted: String,
        status: String,
        context: Vec<Line>,
    },

    /// QEMU did not exit within {timeout:?}; last {n} console lines: {context}
    #[error("QEMU did not exit within {timeout:?}; last {n} console lines:\n{context}", n = .context.len(), context = render(.context))]
    ExitTimeout {
        timeout: Duration,
        context: Vec<Line>,
    },

    /// Cannot write to the serial console: {0}
    #[error("Cannot write to the serial console: {0}")]
    ConsoleWrite(std::io::Error),

    /// Cannot wait for QEMU: {0}
    #[error("Cannot wait for QEMU: {0}")]
    Wait(std::io::Error),

    /// QMP: {0}
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),

    /// `cargo metadata` failed: {0}
    #[error("`cargo metadata` failed: {0}")]
    Metadata(String),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One console line per output line, timestamped like the log file.
fn render(lines: &[Line]) -> String {
    lines
        .iter()
        .map(Line::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_lists_context_lines_and_debug_matches_display() {
        let err = Error::Timeout {
            wanted: "containing \"login\"".into(),
            timeout: Duration::from_secs(2),
            context: vec![
                Line {
                    at: Duration::from_millis(1500),
                    text: "first".into(),
                },
                Line {
                    at: Duration::from_millis(2250),
                    text: "second".into(),
                },
            ],
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "Timed out after 2s waiting for a console line containing \"login\"; \
             last 2 console lines:\n[    1.500] first\n[    2.250] second"
        );
        assert_eq!(format!("{err:?}"), text);
    }
}
