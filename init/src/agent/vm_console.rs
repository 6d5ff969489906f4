//! A VM's serial console as the agent keeps it: the recent output in a bounded ring, and live
//! followers that get every new chunk. keel-vmm serves the console on a unix socket to one client
//! at a time; the agent is that client, so any number of managers can read through the API.
//!
//! The output also goes to `console.log` in the VM's run directory (in RAM, like the VM), so that
//! an agent that restarts and takes a running VM back still shows what it printed before.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of history kept per VM.
pub const HISTORY: usize = 64 * 1024;
/// Chunks a follower may fall behind before it is dropped (a stalled reader never blocks the VM).
const FOLLOWER_BACKLOG: usize = 256;
/// The history file in a VM's run directory.
pub const LOG_FILE: &str = "console.log";
/// The history file is rewritten with the ring's bytes when it grows past this.
const LOG_MAX: u64 = 4 * HISTORY as u64;

/// The file the history is appended to.
struct LogFile {
    path: PathBuf,
    /// Opened at the first output (the run directory is made when the VM starts).
    file: Option<File>,
    len: u64,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
    }

    /// Appends `bytes`; past `LOG_MAX`, starts the file over from `ring`. Errors (a full or
    /// missing run directory) lose history, never output to followers.
    fn append(&mut self, bytes: &[u8], ring: &VecDeque<u8>) {
        if self.file.is_none() {
            self.file = Self::open(&self.path).ok();
            self.len = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.write_all(bytes).is_err() {
            self.file = None;
            return;
        }
        self.len += bytes.len() as u64;
        if self.len > LOG_MAX {
            let (front, back) = ring.as_slices();
            let tmp = self.path.with_extension("log.tmp");
            let rewritten =
                fs::write(&tmp, [front, back].concat()).and_then(|()| fs::rename(&tmp, &self.path));
            self.file = None;
            if rewritten.is_err() {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<u8>,
    followers: Vec<SyncSender<Arc<[u8]>>>,
    log: Option<LogFile>,
}

/// One VM's console output.
#[derive(Default)]
pub struct VmConsole {
    inner: Mutex<Inner>,
}

impl VmConsole {
    /// A console whose history is also kept in `path`, starting from what it holds (a VM taken
    /// back after an agent restart).
    pub fn with_log(path: PathBuf) -> Self {
        let console = Self::default();
        if let Ok(bytes) = fs::read(&path) {
            let start = bytes.len().saturating_sub(HISTORY);
            console.lock().ring.extend(&bytes[start..]);
        }
        console.lock().log = Some(LogFile {
            path,
            file: None,
            len: 0,
        });
        console
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds output: to the ring (oldest bytes go first) and to every follower.
    pub fn push(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let keep = bytes.len().min(HISTORY);
        let tail = &bytes[bytes.len() - keep..];
        let overflow = (inner.ring.len() + keep).saturating_sub(HISTORY);
        inner.ring.drain(..overflow);
        inner.ring.extend(tail);
        let Inner { ring, log, .. } = &mut *inner;
        if let Some(log) = log {
            log.append(bytes, ring);
        }
        let chunk: Arc<[u8]> = Arc::from(bytes);
        inner
            .followers
            .retain(|f| match f.try_send(Arc::clone(&chunk)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            });
    }

    /// The recent output.
    pub fn history(&self) -> Vec<u8> {
        self.lock().ring.iter().copied().collect()
    }

    /// The recent output and a receiver of everything after it; the receiver ends when the
    /// console closes (the VM stopped) or the follower fell too far behind.
    pub fn follow(&self) -> (Vec<u8>, Receiver<Arc<[u8]>>) {
        let mut inner = self.lock();
        let (tx, rx) = sync_channel(FOLLOWER_BACKLOG);
        inner.followers.push(tx);
        (inner.ring.iter().copied().collect(), rx)
    }

    /// Ends every follow stream (the VM stopped).
    pub fn close_followers(&self) {
        self.lock().followers.clear();
    }

    /// Reads keel-vmm's console socket on a thread until it closes, retrying the connection
    /// for `wait` while the VMM is still creating it.
    pub fn attach(self: &Arc<Self>, socket: PathBuf, wait: Duration) {
        let console = Arc::clone(self);
        let _ = thread::Builder::new()
            .name("keel-console".into())
            .spawn(move || {
                let deadline = Instant::now() + wait;
                let mut stream = loop {
                    match UnixStream::connect(&socket) {
                        Ok(stream) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(50));
                        }
                        Err(_) => return,
                    }
                };
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => console.push(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                console.close_followers();
            });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let c = VmConsole::default();
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.history(), b"hello world");
        let big = vec![b'x'; HISTORY + 10];
        c.push(b"abc");
        c.push(&big);
        assert_eq!(c.history().len(), HISTORY);
        c.push(b"end");
        let h = c.history();
        assert_eq!(h.len(), HISTORY);
        assert!(h.ends_with(b"xxend"));
    }

    #[test]
    fn the_history_outlives_the_console_in_its_log_file() {
        let dir = crate::sys::atomic::testdir::TestDir::new("console-log");
        let path = dir.path().join(LOG_FILE);
        let c = VmConsole::with_log(path.clone());
        c.push(b"booting\n");
        c.push(b"login: ");
        drop(c);
        // An agent that restarts finds it; new output goes after it.
        let again = VmConsole::with_log(path.clone());
        assert_eq!(again.history(), b"booting\nlogin: ");
        // The file is started over from the ring before it grows past LOG_MAX.
        let line = vec![b'y'; 1000];
        for _ in 0..(LOG_MAX as usize / line.len() + 2) {
            again.push(&line);
        }
        again.push(b"last");
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= LOG_MAX + 4, "{len}");
        assert_eq!(VmConsole::with_log(path.clone()).history(), again.history());
        // No run directory (a VM never started): history in memory only.
        let lost = VmConsole::with_log(dir.path().join("gone").join(LOG_FILE));
        lost.push(b"still here");
        assert_eq!(lost.history(), b"still here");
    }

    #[test]
    fn followers_get_new_output_and_end_with_the_console() {
        let c = VmConsole::default();
        c.push(b"old");
        let (history, rx) = c.follow();
        assert_eq!(history, b"old");
        c.push(b"new");
        assert_eq!(&*rx.recv().unwrap(), b"new");
        c.close_followers();
        assert!(rx.recv().is_err());
    }

    #[test]
    fn a_stalled_follower_is_dropped_not_waited_for() {
        let c = VmConsole::default();
        let (_, rx) = c.follow();
        for _ in 0..FOLLOWER_BACKLOG + 5 {
            c.push(b"x");
        }
        assert_eq!(rx.try_iter().count(), FOLLOWER_BACKLOG);
        assert!(rx.recv().is_err());
    }

    #[test]
    fn attach_reads_a_socket_until_it_closes() {
        let dir = crate::sys::atomic::testdir::TestDir::new("console-attach");
        let path = dir.path().join("console.sock");
        let c = Arc::new(VmConsole::default());
        c.attach(path.clone(), Duration::from_secs(5));
        thread::sleep(Duration::from_millis(100));
        let listener = UnixListener::bind(&path).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let (_, rx) = c.follow();
        s.write_all(b"guest says hi\n").unwrap();
        drop(s);
        let got: Vec<u8> = rx.iter().flat_map(|chunk| chunk.to_vec()).collect();
        assert_eq!(got, b"guest says hi\n");
        assert_eq!(c.history(), b"guest says hi\n");
    }
}
