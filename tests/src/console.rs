//! Serial console capture: a reader thread splits QEMU's output into timestamped lines, keeps all
//! of them in memory, appends each to the test's log file and wakes whoever waits for a line.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How many lines of context a failed wait reports.
pub const CONTEXT_LINES: usize = 50;

/// One complete console line, without its line terminator.
#[derive(Clone, PartialEq, Eq)]
pub struct Line {
    /// Time since QEMU was started.
    pub at: Duration,
    pub text: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>9.3}] {}", self.at.as_secs_f64(), self.text)
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Splits a byte stream into lines. `\n` ends a line; carriage returns before it (`\r\n`, and the
/// `\r\r\n` a doubled ONLCR produces) are dropped. Bytes after the last `\n` wait for more input.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes and returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(to_text(&self.partial));
                self.partial.clear();
            } else {
                self.partial.push(byte);
            }
        }
        lines
    }

    /// The unterminated tail seen so far (a prompt, typically).
    pub fn partial(&self) -> String {
        to_text(&self.partial)
    }

    /// Ends the stream: the unterminated tail, if any, becomes the last line.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = to_text(&self.partial);
        self.partial.clear();
        Some(line)
    }
}

/// Console bytes are not guaranteed UTF-8 (a guest may print anything), so decode lossily.
fn to_text(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\r')
        .map_or(0, |last| last + 1);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[derive(Default)]
struct State {
    lines: Vec<Line>,
    partial: String,
    closed: bool,
}

/// The lines read so far from one output stream, shared with its reader thread.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<(Mutex<State>, Condvar)>,
}

/// Where a wait stopped, when no line matched.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitFailure {
    TimedOut,
    Closed,
}

impl Capture {
    /// Starts a thread reading `source` until end of file. Each line is timestamped relative to
    /// `start` and, when `log` is given, appended to it as `[secs] <prefix><text>`.
    pub fn spawn<R: Read + Send + 'static>(
        source: R,
        start: Instant,
        log: Option<Arc<Mutex<File>>>,
        prefix: &'static str,
    ) -> (Capture, JoinHandle<()>) {
        let capture = Capture {
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
        };
        let reader = capture.clone();
        let handle = thread::spawn(move || reader.read_all(source, start, log, prefix));
        (capture, handle)
    }

    fn read_all<R: Read>(
        &self,
        mut source: R,
        start: Instant,
        log: Option<Arc<Mutex<File>>>,
        prefix: &str,
    ) {
        let mut splitter = LineSplitter::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A read error on a pipe means QEMU is gone; treat it as end of output.
                Err(_) => break,
            };
            let at = start.elapsed();
            let lines = splitter.push(&buf[..n]);
            self.publish(lines, splitter.partial(), at, log.as_ref(), prefix);
        }
        let tail = splitter.finish().into_iter().collect();
        self.publish(tail, String::new(), start.elapsed(), log.as_ref(), prefix);
        self.lock().closed = true;
        self.shared.1.notify_all();
    }

    fn publish(
        &self,
        texts: Vec<String>,
        partial: String,
        at: Duration,
        log: Option<&Arc<Mutex<File>>>,
        prefix: &str,
    ) {
        let lines: Vec<Line> = texts.into_iter().map(|text| Line { at, text }).collect();
        if let Some(log) = log {
            let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
            for line in &lines {
                // The log is a convenience copy; the lines stay in memory if the disk is full.
                let _ = writeln!(
                    file,
                    "[{:>9.3}] {prefix}{}",
                    line.at.as_secs_f64(),
                    line.text
                );
            }
        }
        let mut state = self.lock();
        state.lines.extend(lines);
        state.partial = partial;
        drop(state);
        self.shared.1.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// All complete lines so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lock().lines.clone()
    }

    /// The unterminated tail of the output (for example a prompt).
    pub fn partial(&self) -> String {
        self.lock().partial.clone()
    }

    /// Whether the stream reached end of file.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The last `CONTEXT_LINES` lines.
    pub fn context(&self) -> Vec<Line> {
        let state = self.lock();
        let from = state.lines.len().saturating_sub(CONTEXT_LINES);
        state.lines[from..].to_vec()
    }

    /// Waits until a line at index `from` or later satisfies `matches`; returns its index and the
    /// line. Fails when `timeout` passes or the stream closes first.
    pub fn wait_from(
        &self,
        from: usize,
        matches: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<(usize, Line), WaitFailure> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        let mut state = self.lock();
        loop {
            if let Some(offset) = state
                .lines
                .get(next..)
                .and_then(|new| new.iter().position(|l| matches(&l.text)))
            {
                let index = next + offset;
                return Ok((index, state.lines[index].clone()));
            }
            next = next.max(state.lines.len());
            if state.closed {
                return Err(WaitFailure::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFailure::TimedOut);
            }
            state = self
                .shared
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for end of file, up to `timeout`; returns whether it was reached.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitter_table() {
        /// Chunks fed in order, expected complete lines, expected partial tail.
        type Case<'a> = (&'a [&'a [u8]], &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            (&[b"a\r\nb\r\n"], &["a", "b"], ""),
            (&[b"a\nb\n"], &["a", "b"], ""),
            (&[b"a\r\r\n"], &["a"], ""),
            (&[b"hel", b"lo\r", b"\nwor"], &["hello"], "wor"),
            (&[b"\r\n\n"], &["", ""], ""),
            (&[b"login: "], &[], "login: "),
            (&[b"mid\rline\n"], &["mid\rline"], ""),
            (&[b"bad \xff byte\n"], &["bad \u{fffd} byte"], ""),
        ];
        for (chunks, want_lines, want_partial) in cases {
            let mut splitter = LineSplitter::default();
            let mut lines = Vec::new();
            for chunk in *chunks {
                lines.extend(splitter.push(chunk));
            }
            assert_eq!(lines, *want_lines, "chunks {chunks:?}");
            assert_eq!(splitter.partial(), *want_partial, "chunks {chunks:?}");
        }
    }

    #[test]
    fn finish_flushes_the_unterminated_tail_once() {
        let mut splitter = LineSplitter::default();
        assert!(splitter.push(b"one\ntwo\r").len() == 1);
        assert_eq!(splitter.finish().as_deref(), Some("two"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn capture_reads_to_eof_keeps_every_line_and_logs_them() {
        let path = std::env::temp_dir().join(format!("keel-console-test-{}", std::process::id()));
        let log = Arc::new(Mutex::new(File::create(&path).unwrap()));
        let input: &[u8] = b"first\r\nsecond\r\nno newline";
        let (capture, reader) = Capture::spawn(input, Instant::now(), Some(log), "> ");
        reader.join().unwrap();
        let texts: Vec<String> = capture.lines().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["first", "second", "no newline"]);
        assert!(capture.is_closed());
        let logged = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let logged: Vec<&str> = logged.lines().map(|l| &l[12..]).collect();
        assert_eq!(logged, ["> first", "> second", "> no newline"]);
    }

    #[test]
    fn wait_from_skips_earlier_lines_and_reports_closed() {
        let (capture, reader) = Capture::spawn(&b"x 1\ny\nx 2\n"[..], Instant::now(), None, "");
        reader.join().unwrap();
        let is_x = |l: &str| l.starts_with('x');
        let (first, line) = capture.wait_from(0, &is_x, Duration::ZERO).unwrap();
        assert_eq!((first, line.text.as_str()), (0, "x 1"));
        let (second, line) = capture.wait_from(first + 1, &is_x, Duration::ZERO).unwrap();
        assert_eq!((second, line.text.as_str()), (2, "x 2"));
        let missing = capture.wait_from(second + 1, &is_x, Duration::from_secs(5));
        assert_eq!(missing, Err(WaitFailure::Closed));
    }

    #[test]
    fn wait_from_times_out_while_the_stream_stays_open() {
        let (mut writer, reader_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let (capture, reader) = Capture::spawn(reader_end, Instant::now(), None, "");
        writer.write_all(b"early\n").unwrap();
        let early = |l: &str| l == "early";
        capture
            .wait_from(0, &early, Duration::from_secs(5))
            .unwrap();
        let started = Instant::now();
        let never = |l: &str| l == "never";
        let result = capture.wait_from(0, &never, Duration::from_millis(200));
        assert_eq!(result, Err(WaitFailure::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(capture.context()[0].text, "early");
        drop(writer);
        assert!(capture.wait_closed(Duration::from_secs(5)));
        reader.join().unwrap();
    }
}
