//! Orderly shutdown: stop services, kill the rest, sync, unmount, power off or reboot.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::supervisor::Supervisor;
use crate::sys::mounts;
use keel_logger::NO_ECHO;
use log::{info, warn};

/// How long services get to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// `KEY_POWER` from linux/input-event-codes.h.
const KEY_POWER: u16 = 116;
const EV_KEY: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::PowerOff => "power off",
            Action::Reboot => "reboot",
        }
    }
}

/// The shutdown a signal to PID 1 asks for (systemd's conventions).
pub fn action_for(signal: i32) -> Option<Action> {
    if signal == libc::SIGUSR2 || signal == libc::SIGPWR || signal == libc::SIGRTMIN() + 4 {
        Some(Action::PowerOff)
    } else if signal == libc::SIGTERM || signal == libc::SIGINT {
        Some(Action::Reboot)
    } else {
        None
    }
}

/// The signals PID 1 blocks and takes with sigtimedwait.
pub fn handled_signals() -> Vec<i32> {
    vec![
        libc::SIGCHLD,
        libc::SIGUSR2,
        libc::SIGPWR,
        libc::SIGRTMIN() + 4,
        libc::SIGTERM,
        libc::SIGINT,
    ]
}

/// Waits for one of the blocked signals in `set`, at most `timeout`.
pub fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: set and ts are valid for reading; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// True if a buffer of `struct input_event`s (24 bytes each on x86_64) holds a KEY_POWER press.
pub fn power_pressed(events: &[u8]) -> bool {
    events.chunks_exact(24).any(|e| {
        let kind = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// `EVIOCGNAME(len)`.
fn eviocgname(len: usize) -> libc::c_ulong {
    (2 << 30) | ((len as libc::c_ulong) << 16) | (0x45 << 8) | 0x06
}

fn device_name(file: &File) -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::ioctl(file.as_raw_fd(), eviocgname(buf.len()), buf.as_mut_ptr()) };
    let n = usize::try_from(n).ok()?;
    let bytes = &buf[..n.min(buf.len())];
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Starts a thread per "Power Button" input device; a KEY_POWER press sends SIGPWR to PID 1.
/// Returns the device names watched.
pub fn watch_power_buttons() -> Vec<String> {
    let mut watched = Vec::new();
    let Ok(entries) = std::fs::read_dir("/dev/input") else {
        return watched;
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("event"))
        })
        .collect();
    paths.sort();
    for path in paths {
        let Ok(file) = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        let Some(name) = device_name(&file) else {
            continue;
        };
        if !name.contains("Power Button") {
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name(String::from("power-button"))
            .spawn(move || watch(file));
        if spawned.is_ok() {
            watched.push(format!("{} ({name})", path.display()));
        }
    }
    watched
}

fn watch(mut file: File) {
    let mut buf = [0u8; 24 * 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if power_pressed(&buf[..n]) => {
                // SAFETY: kill has no memory effects; the signal is blocked and taken by PID 1's
                // sigtimedwait.
                unsafe { libc::kill(libc::getpid(), libc::SIGPWR) };
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int for waitpid to fill.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Everything after the decision to shut down. Never returns.
pub fn run(action: Action, supervisor: &mut Supervisor, signals: &libc::sigset_t) -> ! {
    info!("keel: shutting down ({})", action.describe());
    supervisor.stop_all();
    let deadline = Instant::now() + GRACE;
    while supervisor.running() > 0 {
        let now = Instant::now();
        if now >= deadline {
            warn!(
                "keel: {} service(s) still running after {} s, killing",
                supervisor.running(),
                GRACE.as_secs()
            );
            break;
        }
        // Other shutdown requests arriving now are consumed and ignored: one is under way.
        wait_signal(signals, deadline - now);
        supervisor.reap();
    }
    // SAFETY: kill(-1) signals every process except PID 1 itself; no memory effects.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let settle = Instant::now() + Duration::from_secs(2);
    loop {
        reap_all();
        let mut status = 0;
        // SAFETY: status is a valid int; WNOHANG only reports whether children remain.
        let left = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if left < 0 || Instant::now() >= settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in mounts::unmount_plan(&mounts::parse_mounts(&table)) {
        if let Err(e) = mounts::unmount_or_readonly(&target) {
            warn!("keel: cannot unmount or remount read-only {target}: {e}");
        }
    }
    if let Err(e) = mounts::remount_readonly("/") {
        // A squashfs root is read-only already; anything else is worth saying.
        if e.raw_os_error() != Some(libc::EROFS) {
            // To the log only, as it was: the consoles have the shutdown's lines.
            warn!(target: NO_ECHO, "keel: remounting / read-only: {e}");
        }
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let (line, cmd) = match action {
        Action::PowerOff => ("keel: powering off", libc::RB_POWER_OFF),
        Action::Reboot => ("keel: rebooting", libc::RB_AUTOBOOT),
    };
    info!("{line}");
    // SAFETY: reboot only returns on failure; everything is synced.
    unsafe { libc::reboot(cmd) };
    super::stay_up(&format!(
        "keel: reboot() failed: {}",
        std::io::Error::last_os_error()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn power_key_press() {
        let syn = event(0, 0, 0);
        let cases = [
            ([event(1, 116, 1), syn.clone()].concat(), true),
            ([syn.clone(), event(1, 116, 1)].concat(), true),
            ([event(1, 116, 0), syn.clone()].concat(), false),
            ([event(1, 115, 1), syn.clone()].concat(), false),
            (event(4, 116, 1), false),
            (event(1, 116, 1)[..20].to_vec(), false),
        ];
        for (buf, want) in cases {
            assert_eq!(power_pressed(&buf), want, "{buf:?}");
        }
    }

    #[test]
    fn signals_to_actions() {
        let cases = [
            (libc::SIGUSR2, Some(Action::PowerOff)),
            (libc::SIGPWR, Some(Action::PowerOff)),
            (libc::SIGRTMIN() + 4, Some(Action::PowerOff)),
            (libc::SIGTERM, Some(Action::Reboot)),
            (libc::SIGINT, Some(Action::Reboot)),
            (libc::SIGCHLD, None),
            (libc::SIGHUP, None),
        ];
        for (sig, want) in cases {
            assert_eq!(action_for(sig), want, "signal {sig}");
        }
    }

    #[test]
    fn eviocgname_matches_the_kernel_header() {
        // EVIOCGNAME(256) as computed by the C macro.
        assert_eq!(eviocgname(256), 0x8100_4506);
    }
}
