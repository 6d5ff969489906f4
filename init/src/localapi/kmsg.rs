//! The kernel log from /dev/kmsg: the kernel's messages and Keel's own (PID 1 and the services
//! write theirs there with a user-space facility).
//!
//! Each read() of /dev/kmsg returns one record, `<prio>,<seq>,<usecs>,<flags>[,…];<text>\n`
//! followed by optional ` KEY=value` continuation lines. A reader that falls behind the ring
//! buffer gets EPIPE once and continues with the oldest record still there.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::types::{LogEntry, LogSource};

pub const DEVICE: &str = "/dev/kmsg";
/// How many records the log keeps in memory.
pub const KEEP: usize = 4000;
/// The kernel refuses reads into smaller buffers than a whole record (at most 8 KiB).
const RECORD_MAX: usize = 8192;

/// Parses one /dev/kmsg record; `None` when it is not one.
pub fn parse_record(record: &str) -> Option<LogEntry> {
    let (head, rest) = record.split_once(';')?;
    let mut fields = head.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let micros: u64 = fields.next()?.parse().ok()?;
    let message = rest.split('\n').next().unwrap_or_default();
    let source = if prio >> 3 == 0 {
        LogSource::Kernel
    } else {
        LogSource::Keel
    };
    Some(LogEntry {
        seq,
        level: (prio & 7) as u8,
        micros,
        source,
        message: message.to_string(),
    })
}

/// Reads records until none is left (EAGAIN).
fn read_records(file: &mut File, out: &mut Vec<LogEntry>) -> io::Result<()> {
    let mut buf = vec![0u8; RECORD_MAX];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend(parse_record(&String::from_utf8_lossy(&buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Overwritten before we read them; the next read returns the oldest left.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An open /dev/kmsg and the last `keep` records read from it.
pub struct KmsgLog {
    path: PathBuf,
    file: Option<File>,
    keep: usize,
    entries: VecDeque<LogEntry>,
}

impl KmsgLog {
    pub fn new(path: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            path: path.into(),
            file: None,
            keep,
            entries: VecDeque::new(),
        }
    }

    /// Reads every record not read yet.
    pub fn refresh(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&self.path)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut fresh = Vec::new();
        let outcome = read_records(file, &mut fresh);
        fresh.into_iter().for_each(|e| self.push(e));
        outcome
    }

    fn push(&mut self, entry: LogEntry) {
        if self.entries.len() == self.keep {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Records with a sequence number above `after` (all of them for `None`), oldest first.
    pub fn after(&self, after: Option<u64>) -> Vec<LogEntry> {
        let start = after.map_or(0, |a| self.entries.partition_point(|e| e.seq <= a));
        self.entries.range(start..).cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records() {
        let entry = |seq, level, micros, source, message: &str| {
            Some(LogEntry {
                seq,
                level,
                micros,
                source,
                message: message.into(),
            })
        };
        let cases = [
            (
                "6,339,5140900,-;NET: Registered protocol family 10\n",
                entry(
                    339,
                    6,
                    5140900,
                    LogSource::Kernel,
                    "NET: Registered protocol family 10",
                ),
            ),
            (
                "15,1020,6460000,-;keel: boot complete in 6460 ms\n",
                entry(
                    1020,
                    7,
                    6460000,
                    LogSource::Keel,
                    "keel: boot complete in 6460 ms",
                ),
            ),
            (
                "3,7,100,c,caller=T1;e1000: eth0 NIC Link is Down\n SUBSYSTEM=net\n DEVICE=n2\n",
                entry(7, 3, 100, LogSource::Kernel, "e1000: eth0 NIC Link is Down"),
            ),
            (
                "4,8,9,-;semi;colons;kept\n",
                entry(8, 4, 9, LogSource::Kernel, "semi;colons;kept"),
            ),
            ("6,1,2,-;", entry(1, 6, 2, LogSource::Kernel, "")),
            ("no semicolon", None),
            ("x,1,2,-;bad prio", None),
            ("6,-1,2,-;bad seq", None),
            ("6,1;too few fields", None),
            ("", None),
        ];
        for (record, want) in cases {
            assert_eq!(parse_record(record), want, "{record:?}");
        }
    }

    #[test]
    fn reads_the_real_kernel_log_including_own_lines() {
        // Needs root (to write a record); this machine runs tests as root, CI too.
        let Ok(mut writer) = File::options().write(true).open(DEVICE) else {
            return;
        };
        let marker = format!("keel-kmsg-test-{}", std::process::id());
        writer
            .write_all(format!("<14>{marker}\n").as_bytes())
            .unwrap();
        let mut log = KmsgLog::new(DEVICE, 100_000);
        let mut all = Vec::new();
        for _ in 0..50 {
            log.refresh().unwrap();
            all = log.after(None);
            if all.iter().any(|e| e.message == marker) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mine = all.iter().find(|e| e.message == marker);
        let tail = &all[all.len().saturating_sub(3)..];
        let mine = mine.unwrap_or_else(|| panic!("{marker} not in {tail:?}"));
        assert_eq!((mine.level, mine.source), (6, LogSource::Keel));
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(log.after(Some(mine.seq)).iter().all(|e| e.seq > mine.seq));
        // Nothing new arrives twice.
        let before = log.after(None).len();
        log.refresh().unwrap();
        assert!(log.after(None).len() >= before);
        assert!(KmsgLog::new("/nonexistent/kmsg", 1).refresh().is_err());
    }

    #[test]
    fn keeps_only_the_newest() {
        let mut log = KmsgLog::new(DEVICE, 3);
        for seq in 1..=5 {
            log.push(parse_record(&format!("6,{seq},0,-;m{seq}")).unwrap());
        }
        let seqs: Vec<u64> = log.after(None).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(log.after(Some(4)).len(), 1);
        assert_eq!(log.after(Some(0)).len(), 3);
        assert!(log.after(Some(9)).is_empty());
        let mut first = KmsgLog::new(DEVICE, 3);
        first.push(parse_record("6,0,0,-;Linux version x").unwrap());
        assert_eq!(first.after(None).len(), 1, "record 0 is not lost");
    }
}
