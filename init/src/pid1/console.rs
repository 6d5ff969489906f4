//! Writing lines to every active console and to the kernel log.
//!
//! Until `open()` has run (stage 1 before /dev exists) lines go to stderr, which the kernel points
//! at /dev/console when it starts PID 1.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

/// The open console devices; a line is written to each under the lock so lines never interleave.
static CONSOLES: OnceLock<Mutex<Vec<File>>> = OnceLock::new();
/// /dev/kmsg, shared by the service output forwarders.
static KMSG: OnceLock<Mutex<Option<File>>> = OnceLock::new();

const ACTIVE: &str = "/sys/class/tty/console/active";

/// Device names from /sys/class/tty/console/active ("tty0 ttyS0\n"), keeping only plain names.
pub fn parse_active(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|name| !name.contains('/') && *name != "." && *name != ".." && !name.is_empty())
        .map(String::from)
        .collect()
}

fn open_device(path: &str) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()
}

/// Opens every active console (falling back to /dev/console) and /dev/kmsg. Call again after the
/// root changed: the previous handles are kept only if nothing new can be opened.
pub fn open() {
    let names = std::fs::read_to_string(ACTIVE)
        .map(|t| parse_active(&t))
        .unwrap_or_default();
    let mut files: Vec<File> = names
        .iter()
        .filter_map(|n| open_device(&format!("/dev/{n}")))
        .collect();
    if files.is_empty() {
        files.extend(open_device("/dev/console"));
    }
    if !files.is_empty() {
        let slot = CONSOLES.get_or_init(|| Mutex::new(Vec::new()));
        if let Ok(mut guard) = slot.lock() {
            *guard = files;
        }
    }
    let kmsg = open_device("/dev/kmsg");
    let slot = KMSG.get_or_init(|| Mutex::new(None));
    if let Ok(mut guard) = slot.lock() {
        *guard = kmsg;
    }
}

/// Points stdin, stdout and stderr at /dev/console if they are closed (the kernel leaves them
/// closed when the initramfs has no /dev/console), so nothing else lands on fds 0-2.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: the path is a valid C string.
        let console =
            unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if console < 0 {
            return;
        }
        if console != fd {
            // SAFETY: both are valid descriptors; dup2 replaces the closed fd.
            unsafe {
                libc::dup2(console, fd);
                libc::close(console);
            }
        }
    }
}

/// Writes one line to every console (stderr before `open()`).
pub fn say(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    if let Some(slot) = CONSOLES.get() {
        if let Ok(mut files) = slot.lock() {
            if !files.is_empty() {
                for file in files.iter_mut() {
                    // A console that fails to take a line cannot be told about it.
                    let _ = file.write_all(&bytes);
                }
                return;
            }
        }
    }
    let _ = std::io::stderr().write_all(&bytes);
}

/// Writes one record to the kernel log (dropped if /dev/kmsg is not open).
pub fn kmsg(line: &str) {
    if let Some(slot) = KMSG.get() {
        if let Ok(mut guard) = slot.lock() {
            if let Some(file) = guard.as_mut() {
                // One write() is one kmsg record. Facility user, level debug: below the default
                // console log level, so the kernel does not echo to the console what PID 1
                // already wrote there itself.
                // The newline ends the record: without it the kernel holds the text open for a
                // continuation and readers of /dev/kmsg do not see it until the next message.
                let _ = file.write_all(format!("<15>{line}\n").as_bytes());
            }
        }
    }
}

/// Writes a line to the consoles and the kernel log.
pub fn log(line: &str) {
    say(line);
    kmsg(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_names() {
        let cases: [(&str, &[&str]); 5] = [
            ("tty0 ttyS0\n", &["tty0", "ttyS0"]),
            ("ttyS0\n", &["ttyS0"]),
            ("", &[]),
            ("  hvc0   tty1 ", &["hvc0", "tty1"]),
            ("../etc/passwd ttyS1", &["ttyS1"]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_active(text), want, "{text:?}");
        }
    }
}
