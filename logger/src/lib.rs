//! Keel's one backend for the `log` facade: every Keel process and the rust-vmm crates it links
//! log through `log::{error, warn, info, debug}`, and this logger writes the records out.
//!
//! - **/dev/kmsg** ([`Logger::kmsg`]) for PID 1, the agent and the console: one kmsg record per
//!   line, `<N>` carrying a real syslog priority (facility user or daemon, severity from the
//!   level), so `dmesg`, the console's Logs screen and `GET /v1/host/logs` show each line's level.
//!   The text is the message itself (Keel's messages name their speaker: `keel: …`,
//!   `keel-agent: …`); another crate's records are prefixed with their target.
//! - **stderr** ([`Logger::stderr`]) for keel-vmm, whose stderr is the VM's `vmm.log`: Keel's own
//!   records as `keel-vmm: <message>` (the documented lines the agent and the tests read), other
//!   crates' with level and target: `keel-vmm: ERROR virtio_queue::queue: <message>`. Those are
//!   rate-limited, because a guest can make rust-vmm log at will (a bad queue address per register
//!   write): a burst, then a few per second, then one line counting what was dropped.
//!
//! A record can also be echoed to a function (PID 1 and the agent pass the one writing to every
//! console) when its level is at most the echo level: `keel.debug` raises that level to debug.
//! Records with the target [`NO_ECHO`] are never echoed (service output PID 1 forwards, which
//! reaches the consoles in its own form).
//!
//! Each record is formatted into one buffer and written with one `write(2)`, so lines from
//! different threads never interleave, and nothing but `write` and `clock_gettime` is needed
//! (keel-vmm logs from seccomp-filtered threads).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

pub use log::{Level, LevelFilter};

/// The target of records that go to the log only, never to the echo function.
pub const NO_ECHO: &str = "keel::no-echo";

/// The kernel refuses longer /dev/kmsg writes (`LOG_LINE_MAX`, less room for the prefix).
pub const KMSG_RECORD_MAX: usize = 976;

/// The syslog facility of /dev/kmsg records (RFC 5424 numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    /// PID 1 and the console: user-level messages (1).
    User = 1,
    /// The agent, a system daemon (3).
    Daemon = 3,
}

/// The syslog severity of a level: err 3, warning 4, info 6, debug 7 (trace too).
pub fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The `<N>` value of a kmsg record: facility × 8 + severity.
pub fn priority(facility: Facility, level: Level) -> u8 {
    (facility as u8) * 8 + severity(level)
}

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Kmsg(Facility),
    Stderr { tag: &'static str },
}

/// A token bucket: `burst` records, refilled at `per_sec`.
#[derive(Debug)]
struct Bucket {
    burst: u32,
    per_sec: u32,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

impl Bucket {
    fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            burst,
            per_sec,
            tokens: f64::from(burst),
            last: None,
            dropped: 0,
        }
    }

    /// Whether a record arriving at `now` may be written; when it may after some were dropped,
    /// also how many were.
    fn take(&mut self, now: Instant) -> (bool, u64) {
        if let Some(last) = self.last {
            let refill =
                now.saturating_duration_since(last).as_secs_f64() * f64::from(self.per_sec);
            self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return (false, 0);
        }
        self.tokens -= 1.0;
        (true, std::mem::take(&mut self.dropped))
    }
}

/// /dev/kmsg, opened at the first record and again after a failed write (PID 1 logs before
/// /dev is mounted; those records are lost, as with any logger without a device).
struct KmsgDevice {
    path: &'static str,
    file: Option<File>,
}

impl Write for KmsgDevice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            let file = File::options()
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(self.path)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        file.write(buf).inspect_err(|_| self.file = None)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink shared with a test: everything written is appended to the buffer.
#[derive(Debug, Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// What was written so far, as text.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where echoed lines go (PID 1's and the agent's: every console).
pub type Echo = fn(&str);

/// The logger: built with [`Logger::kmsg`] or [`Logger::stderr`], then [`Logger::install`]ed.
pub struct Logger {
    style: Style,
    /// Targets starting with this (the crate name, `keel_init`) are Keel's own.
    own: &'static str,
    level: LevelFilter,
    echo: Option<(LevelFilter, Echo)>,
    /// The rate limit of other crates' records; `None`: unlimited.
    foreign_limit: Option<Mutex<Bucket>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Logger {
    /// Records to /dev/kmsg with `facility`, every level down to debug; `own` is the crate
    /// whose records are Keel's own (`env!("CARGO_CRATE_NAME")`).
    pub fn kmsg(own: &'static str, facility: Facility) -> Self {
        Self::new(
            Style::Kmsg(facility),
            own,
            Box::new(KmsgDevice {
                path: "/dev/kmsg",
                file: None,
            }),
        )
    }

    /// Records to stderr as `tag: message` (own) or `tag: LEVEL target: message` (others,
    /// rate-limited), info and above.
    pub fn stderr(tag: &'static str, own: &'static str) -> Self {
        let mut logger = Self::new(Style::Stderr { tag }, own, Box::new(io::stderr()));
        logger.level = LevelFilter::Info;
        logger.foreign_limit = Some(Mutex::new(Bucket::new(100, 10)));
        logger
    }

    fn new(style: Style, own: &'static str, out: Box<dyn Write + Send>) -> Self {
        Self {
            style,
            own,
            level: LevelFilter::Debug,
            echo: None,
            foreign_limit: None,
            out: Mutex::new(out),
        }
    }

    /// Drops records below `level`.
    pub fn level(mut self, level: LevelFilter) -> Self {
        self.level = level;
        self
    }

    /// Also passes the text of records at `level` or above to `echo`.
    pub fn echo(mut self, level: LevelFilter, echo: Echo) -> Self {
        self.echo = Some((level, echo));
        self
    }

    /// Rate-limits other crates' records: `burst`, then `per_sec`.
    pub fn limit_foreign(mut self, burst: u32, per_sec: u32) -> Self {
        self.foreign_limit = Some(Mutex::new(Bucket::new(burst, per_sec)));
        self
    }

    /// Writes to `out` instead (tests).
    pub fn output(mut self, out: impl Write + Send + 'static) -> Self {
        self.out = Mutex::new(Box::new(out));
        self
    }

    /// Makes this the process's logger. Fails if one is installed already (the first stays).
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        let max = self.level;
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(max);
        Ok(())
    }

    fn is_own(&self, target: &str) -> bool {
        target == NO_ECHO
            || target
                .strip_prefix(self.own)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    }

    /// The record's text without level: the message, or `target: message` for another crate's.
    fn text(&self, target: &str, message: &str) -> String {
        if self.is_own(target) {
            message.to_string()
        } else {
            format!("{target}: {message}")
        }
    }

    /// The bytes to write for one record, one element per write(2).
    fn format(&self, level: Level, target: &str, message: &str) -> Vec<Vec<u8>> {
        match self.style {
            Style::Kmsg(facility) => {
                let prefix = format!("<{}>", priority(facility, level));
                let text = self.text(target, message);
                text.split('\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let mut record = prefix.clone();
                        record.push_str(truncate(line, KMSG_RECORD_MAX - prefix.len() - 1));
                        // Without the newline the kernel holds the record open for a
                        // continuation and readers do not see it until the next one.
                        record.push('\n');
                        record.into_bytes()
                    })
                    .collect()
            }
            Style::Stderr { tag } => {
                let line = if self.is_own(target) {
                    format!("{tag}: {message}\n")
                } else {
                    format!("{tag}: {level} {target}: {message}\n")
                };
                vec![line.into_bytes()]
            }
        }
    }

    fn write(&self, level: Level, target: &str, message: &str) {
        let mut records = Vec::new();
        if let (false, Some(limit)) = (self.is_own(target), &self.foreign_limit) {
            let mut bucket = limit.lock().unwrap_or_else(PoisonError::into_inner);
            let (allowed, dropped) = bucket.take(Instant::now());
            if !allowed {
                return;
            }
            if dropped > 0 {
                let note = format!("{dropped} records of other crates dropped (rate limit)");
                records.extend(self.format(Level::Warn, self.own, &note));
            }
        }
        records.extend(self.format(level, target, message));
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            // A log that cannot be written has nowhere to report it.
            let _ = out.write_all(&record);
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let target = record.target();
        self.write(record.level(), target, &message);
        if let Some((level, echo)) = self.echo {
            if record.level() <= level && target != NO_ECHO {
                let text = self.text(target, &message);
                text.split('\n').for_each(echo);
            }
        }
    }

    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.flush();
    }
}

/// The level `keel.debug` asks for: debug when set, else `normal`.
pub fn debug_or(debug: bool, normal: LevelFilter) -> LevelFilter {
    if debug {
        LevelFilter::Debug
    } else {
        normal
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use log::Log;
    use std::time::Duration;

    const SECOND: Duration = Duration::from_secs(1);

    fn record(logger: &Logger, level: Level, target: &str, message: &str) {
        logger.log(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{message}"))
                .build(),
        );
    }

    #[test]
    fn priorities_are_facility_times_eight_plus_severity() {
        let cases = [
            (Facility::User, Level::Error, 11),
            (Facility::User, Level::Warn, 12),
            (Facility::User, Level::Info, 14),
            (Facility::User, Level::Debug, 15),
            (Facility::User, Level::Trace, 15),
            (Facility::Daemon, Level::Error, 27),
            (Facility::Daemon, Level::Info, 30),
            (Facility::Daemon, Level::Debug, 31),
        ];
        for (facility, level, want) in cases {
            assert_eq!(priority(facility, level), want, "{facility:?} {level}");
        }
    }

    #[test]
    fn kmsg_records_carry_the_priority_one_per_line() {
        let sink = Capture::default();
        let logger = Logger::kmsg("keel_init", Facility::Daemon).output(sink.clone());
        record(
            &logger,
            Level::Info,
            "keel_init::agent",
            "keel-agent: ready",
        );
        record(&logger, Level::Error, "keel_init", "keel-agent: a\nb");
        record(&logger, Level::Warn, "rustls::conn", "odd peer");
        record(&logger, Level::Debug, NO_ECHO, "keel[agent]: out");
        assert_eq!(
            sink.text(),
            "<30>keel-agent: ready\n<27>keel-agent: a\n<27>b\n\
             <28>rustls::conn: odd peer\n<31>keel[agent]: out\n"
        );
    }

    #[test]
    fn kmsg_records_fit_the_kernel_limit() {
        let sink = Capture::default();
        let logger = Logger::kmsg("keel_init", Facility::User).output(sink.clone());
        let long = "é".repeat(1000);
        record(&logger, Level::Info, "keel_init", &long);
        let text = sink.text();
        assert!(text.len() <= KMSG_RECORD_MAX, "{}", text.len());
        assert!(text.starts_with("<14>é") && text.ends_with("é\n"));
    }

    #[test]
    fn stderr_lines_show_level_and_target_of_other_crates() {
        let sink = Capture::default();
        let logger = Logger::stderr("keel-vmm", "keel_vmm").output(sink.clone());
        record(
            &logger,
            Level::Info,
            "keel_vmm::vmm",
            "VM stopped: X (exit status 0)",
        );
        record(&logger, Level::Error, "keel_vmm", "bad");
        record(&logger, Level::Error, "virtio_queue::queue", "bad queue");
        record(&logger, Level::Warn, "keel_vmmx", "not ours");
        assert_eq!(
            sink.text(),
            "keel-vmm: VM stopped: X (exit status 0)\nkeel-vmm: bad\n\
             keel-vmm: ERROR virtio_queue::queue: bad queue\nkeel-vmm: WARN keel_vmmx: not ours\n"
        );
    }

    #[test]
    fn the_level_filter_drops_lower_records() {
        let sink = Capture::default();
        let logger = Logger::stderr("t", "t").output(sink.clone());
        record(&logger, Level::Debug, "t", "hidden");
        record(&logger, Level::Info, "t", "shown");
        assert_eq!(sink.text(), "t: shown\n");
        let logger = logger.level(debug_or(true, LevelFilter::Info));
        record(&logger, Level::Debug, "t", "now shown");
        record(&logger, Level::Trace, "t", "never");
        assert!(sink.text().ends_with("t: now shown\n"));
        assert_eq!(debug_or(false, LevelFilter::Warn), LevelFilter::Warn);
        let quiet = Logger::kmsg("t", Facility::User).level(LevelFilter::Warn);
        let meta = |level| log::Metadata::builder().level(level).build();
        assert!(quiet.enabled(&meta(Level::Error)) && quiet.enabled(&meta(Level::Warn)));
        assert!(!quiet.enabled(&meta(Level::Info)));
    }

    static ECHOED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[test]
    fn echo_takes_records_up_to_its_level_but_not_no_echo_ones() {
        let sink = Capture::default();
        let logger = Logger::kmsg("keel_init", Facility::User)
            .output(sink.clone())
            .echo(LevelFilter::Info, |line| {
                ECHOED.lock().unwrap().push(line.to_string())
            });
        record(
            &logger,
            Level::Info,
            "keel_init::pid1",
            "keel: boot complete",
        );
        record(
            &logger,
            Level::Debug,
            "keel_init::pid1",
            "keel: modules loaded",
        );
        record(&logger, Level::Info, NO_ECHO, "keel[agent]: x");
        record(&logger, Level::Error, "other", "two\nlines");
        assert_eq!(
            *ECHOED.lock().unwrap(),
            ["keel: boot complete", "other: two", "lines"]
        );
        assert_eq!(sink.text().lines().count(), 5, "all go to kmsg");
    }

    #[test]
    fn other_crates_are_rate_limited_and_the_drop_is_counted() {
        let sink = Capture::default();
        let logger = Logger::stderr("keel-vmm", "keel_vmm")
            .output(sink.clone())
            .limit_foreign(3, 1);
        for i in 0..10 {
            record(
                &logger,
                Level::Error,
                "virtio_queue::queue",
                &format!("q{i}"),
            );
            record(&logger, Level::Info, "keel_vmm", &format!("own{i}"));
        }
        let text = sink.text();
        assert_eq!(text.matches("virtio_queue").count(), 3, "{text}");
        assert_eq!(
            text.matches("own").count(),
            10,
            "own records are never limited"
        );
        let mut bucket = Bucket::new(3, 1);
        let t0 = Instant::now();
        for _ in 0..5 {
            bucket.take(t0);
        }
        assert_eq!(
            bucket.take(t0 + 2 * SECOND),
            (true, 2),
            "five taken, three allowed"
        );
        assert_eq!(bucket.take(t0 + 2 * SECOND), (true, 0));
        assert_eq!(bucket.take(t0 + 2 * SECOND), (false, 0));
    }

    #[test]
    fn a_missing_kmsg_device_loses_the_record_quietly() {
        let mut device = KmsgDevice {
            path: "/nonexistent/kmsg",
            file: None,
        };
        assert!(device.write(b"<14>x\n").is_err());
        assert!(device.file.is_none());
    }
}
