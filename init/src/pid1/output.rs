//! Writing lines to every active console, and the logger of the processes that share them.
//!
//! Until `open()` has run (stage 1 before /dev exists) lines go to stderr, which the kernel points
//! at /dev/console when it starts PID 1.
//!
//! PID 1, the agent and the console log through `log::{error, warn, info, debug}`
//! ([`init_logging`]): every record goes to /dev/kmsg with its syslog priority, and PID 1 and the
//! agent also write records at info and above (debug with `keel.debug`) to every console. The
//! kernel itself echoes only records below its console log level, which PID 1 sets
//! ([`quiet_kernel_echo`]) so that Keel's records are not written twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

use keel_logger::{debug_or, Echo, Facility, LevelFilter, Logger};

/// The open console devices; a line is written to each under the lock so lines never interleave.
static CONSOLES: OnceLock<Mutex<Vec<File>>> = OnceLock::new();

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

/// Opens every active console (falling back to /dev/console). Call again after the
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

/// Installs this process's logger: /dev/kmsg with `facility`, every level; records at info and
/// above (debug with `keel.debug` on the kernel command line) also go to `echo`.
pub fn init_logging(facility: Facility, echo: Echo) {
    let debug = std::fs::read_to_string("/proc/cmdline")
        .map(|text| super::cmdline::parse(&text).params.debug)
        .unwrap_or(false);
    // A second call keeps the first logger, which is as good.
    let _ = Logger::kmsg(env!("CARGO_CRATE_NAME"), facility)
        .echo(debug_or(debug, LevelFilter::Info), echo)
        .install();
}

/// The kernel's console log level that keeps it from echoing Keel's records (err and below,
/// severity 3 and up) to the consoles PID 1 and the agent write them to themselves: the kernel
/// still prints its critical messages (crit, alert, emerg: oopses and panics) there.
pub const CONSOLE_LOGLEVEL: &str = "3";

/// Sets the kernel's console log level to [`CONSOLE_LOGLEVEL`] unless the kernel command line
/// chose one (`loglevel=`, `debug`, `ignore_loglevel`; `quiet` asks for less, which this is).
pub fn quiet_kernel_echo(cmdline: &str) {
    let chosen = super::cmdline::tokenize(cmdline)
        .iter()
        .any(|(name, _)| ["loglevel", "debug", "ignore_loglevel"].contains(&name.as_str()));
    if chosen {
        return;
    }
    if let Err(e) = set_console_loglevel("/proc/sys/kernel/printk") {
        log::warn!("keel: cannot set the console log level: {e}");
    }
}

/// Rewrites the first field of `kernel.printk` (console, default, minimum, boot-default levels).
fn set_console_loglevel(path: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut fields: Vec<&str> = text.split_whitespace().collect();
    if let Some(first) = fields.first_mut() {
        *first = CONSOLE_LOGLEVEL;
    }
    std::fs::write(path, format!("{}\n", fields.join(" ")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn console_loglevel_keeps_the_other_fields() {
        let dir = std::env::temp_dir().join(format!("keel-printk-{}", std::process::id()));
        std::fs::write(&dir, "7\t4\t1\t7\n").unwrap();
        set_console_loglevel(dir.to_str().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&dir).unwrap(), "3 4 1 7\n");
        std::fs::remove_file(&dir).unwrap();
    }
}
