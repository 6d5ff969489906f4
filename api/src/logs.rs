//! The host's log records (/dev/kmsg): what the console's Logs screen shows, what
//! `GET /v1/host/logs` sends (one JSON object per line) and what `keelctl host logs` prints.

use serde::{Deserialize, Serialize};

/// The agent's route: `GET /v1/host/logs?after=SEQ[&follow=true]`.
pub const HOST_LOGS: &str = "/v1/host/logs";

/// The media type of a body of records, one JSON object per line.
pub const JSON_LINES: &str = "application/x-ndjson";

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogSource {
    Kernel,
    Keel,
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// The kernel log sequence number; increases by one per record.
    pub seq: u64,
    /// Syslog level, 0 (emergency) to 7 (debug).
    pub level: u8,
    /// Microseconds since boot.
    pub micros: u64,
    pub source: LogSource,
    pub message: String,
}

/// The name syslog tools give a level (`err`, `warning`, `info`, `debug`, …).
pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

impl LogEntry {
    /// `[  12.345678] err keel-agent: …`: the time since boot as `dmesg` shows it, the level,
    /// the message.
    pub fn line(&self) -> String {
        format!(
            "[{:>5}.{:06}] {} {}",
            self.micros / 1_000_000,
            self.micros % 1_000_000,
            level_name(self.level),
            self.message
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_record_prints_like_dmesg_with_its_level() {
        let entry = LogEntry {
            seq: 7,
            level: 3,
            micros: 12_345_678,
            source: LogSource::Keel,
            message: "keel-agent: VM g1: gone".into(),
        };
        assert_eq!(entry.line(), "[   12.345678] err keel-agent: VM g1: gone");
        let late = LogEntry {
            micros: 123_456_000_001,
            level: 9,
            ..entry.clone()
        };
        assert_eq!(late.line(), "[123456.000001] debug keel-agent: VM g1: gone");
        let names: Vec<&str> = (0..8).map(level_name).collect();
        assert_eq!(
            names,
            ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]
        );
    }

    #[test]
    fn the_wire_form_is_one_flat_object() {
        let json = r#"{"seq":1,"level":6,"micros":2,"source":"kernel","message":"m"}"#;
        let entry: LogEntry = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
        assert!(
            serde_json::from_str::<LogEntry>(&json.replace("\"m\"}", "\"m\",\"x\":1}")).is_err()
        );
    }
}
