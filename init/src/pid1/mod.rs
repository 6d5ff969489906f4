//! PID 1. Stage 1 runs from the initramfs (recognised by /root.squashfs), stage 2 from the real
//! root. Neither ever exits: on a fatal problem PID 1 says what on the console and stays up.

pub mod banner;
pub mod cmdline;
pub mod hardening;
pub mod kvm;
pub mod modules;
pub mod output;
pub mod services;
pub mod shutdown;
pub mod stage1;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{mounts, syscall};
use keel_logger::{Facility, NO_ECHO};
use log::{debug, error, info, warn};
use output::say;
use supervisor::{Sink, Supervisor};

const SERVICES_DIR: &str = "/etc/keel/services";

/// The keel version printed in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Entry point for argv[0] == "init".
pub fn run() -> ! {
    output::init_logging(Facility::User, say);
    std::panic::set_hook(Box::new(|info| {
        stay_up(&format!("keel: PID 1 internal error: {info}"))
    }));
    let signals = block_signals();
    if Path::new(stage1::ROOT_IMAGE).exists() {
        let err = stage1::run();
        stay_up(&format!("keel: stage 1 failed: {err}"));
    }
    stage2(&signals)
}

/// The signal set PID 1 handles, blocked in every thread so sigtimedwait takes them.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data and sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in shutdown::handled_signals() {
        // SAFETY: set is a valid sigset_t and sig a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

fn block_signals() -> libc::sigset_t {
    let set = signal_set();
    // SAFETY: set is a valid sigset_t; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    set
}

/// Says `why` and never returns: keeps reaping children and still honours power-off and reboot
/// signals (without the orderly part, which is what failed).
pub fn stay_up(why: &str) -> ! {
    error!("{why}");
    error!("keel: PID 1 stays up; power off or reboot to leave");
    let set = block_signals();
    loop {
        let sig = shutdown::wait_signal(&set, Duration::from_secs(60));
        loop {
            let mut status = 0;
            // SAFETY: status is a valid int for waitpid to fill.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        if let Some(action) = sig.and_then(shutdown::action_for) {
            // SAFETY: sync has no preconditions.
            unsafe { libc::sync() };
            let cmd = match action {
                shutdown::Action::PowerOff => libc::RB_POWER_OFF,
                shutdown::Action::Reboot => libc::RB_AUTOBOOT,
            };
            // SAFETY: reboot only returns on failure; data is synced.
            unsafe { libc::reboot(cmd) };
        }
    }
}

/// Supervisor messages go to the consoles and the kernel log; service output to the kernel log
/// (info) and, for "console": true services, to the consoles.
struct ConsoleSink;

impl Sink for ConsoleSink {
    fn event(&self, level: log::Level, line: &str) {
        log::log!(level, "{line}");
    }
    fn output(&self, service: &str, to_console: bool, line: &str) {
        info!(target: NO_ECHO, "keel[{service}]: {line}");
        if to_console {
            say(&format!("[{service}] {line}"));
        }
    }
}

pub(crate) fn set_hostname(name: &str) {
    // SAFETY: the pointer and length describe name's bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        warn!(
            "keel: cannot set host name {name}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Cold plug (twice: drivers loaded in the first pass add devices, e.g. input devices) and the
/// KVM module for this CPU. Returns the loader for later on-demand loads (network drivers).
fn load_drivers(release: &str) -> Option<modules::Loader> {
    let dir = PathBuf::from("/lib/modules").join(release);
    let index = match modules::ModuleIndex::read(&dir) {
        Ok(index) => index,
        Err(e) => {
            error!("keel: modules: {e}");
            return None;
        }
    };
    let mut loader = modules::Loader::new(dir, index);
    let mut failures = Vec::new();
    for _pass in 0..2 {
        failures.extend(loader.coldplug(Path::new("/sys/devices")));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match kvm::vendor_module(&cpuinfo) {
        Some(module) => failures.extend(loader.load(module).err()),
        None => warn!("keel: kvm: unknown CPU vendor, no KVM module loaded"),
    }
    for module in crate::firewall::MODULES {
        failures.extend(loader.load(module).err());
    }
    for failure in failures {
        let line = format!("keel: modules: {failure}");
        // A driver declining a device it matched by alias is routine; the log keeps it.
        let routine = match &failure {
            modules::ModuleError::Load(_, e) => {
                matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO))
            }
            modules::ModuleError::Unknown(_) => true,
            modules::ModuleError::Read(..) => false,
        };
        if routine {
            debug!("{line}");
        } else {
            warn!("{line}");
        }
    }
    debug!("keel: modules loaded: {}", loader.loaded.join(" "));
    Some(loader)
}

fn stage2(signals: &libc::sigset_t) -> ! {
    let root = Path::new("/");
    let problems: Vec<String> = mounts::API
        .iter()
        .chain(mounts::STAGE2.iter())
        .filter_map(|spec| mounts::ensure(spec, root).err())
        .map(|e| format!("keel: {e}"))
        .collect();
    output::ensure_std_fds();
    output::open();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    output::quiet_kernel_echo(&cmdline);
    problems.iter().for_each(|p| error!("{p}"));
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    // SAFETY: reboot(RB_DISABLE_CAD) only changes a kernel flag.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
    // Service output goes to /dev/kmsg line by line; the default rate limit would drop it.
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");

    let parsed = cmdline::parse(&cmdline);
    parsed.warnings.iter().for_each(|w| warn!("{w}"));
    let params = parsed.params;
    set_hostname(params.hostname.as_deref().unwrap_or("keel"));

    let release = syscall::kernel_release();
    let loader = load_drivers(&release);
    for failure in hardening::apply(&hardening::SETTINGS, Path::new("/proc/sys")) {
        warn!("keel: hardening: {failure}");
    }
    match crate::firewall::apply() {
        Ok(()) => debug!("keel: firewall: inet keel loaded (default deny)"),
        Err(e) => error!("keel: firewall: {e}"),
    }

    info!("{}", banner::headline(VERSION, &release, syscall::uptime()));
    info!("{}", kvm::status_line());
    info!("{}", banner::root_fs_line());
    let buttons = shutdown::watch_power_buttons();
    if buttons.is_empty() {
        warn!("keel: no power button found; power off with a signal");
    } else {
        debug!("keel: watching power button {}", buttons.join(", "));
    }

    let (_state, state_lines) = crate::state::init(&release);
    state_lines.iter().for_each(|l| info!("{l}"));

    // Host networking (docs/network.md): layers, validation, netlink, DHCP keepers.
    let net_log: crate::net::Log = Arc::new(|level, line: &str| log::log!(level, "{line}"));
    if let Err(e) = crate::net::boot(&cmdline, net_log, loader) {
        error!("keel: network: {e}");
    }

    let (mut specs, errors) = services::load_dir(Path::new(SERVICES_DIR));
    errors
        .iter()
        .for_each(|e| warn!("keel: skipping service: {e}"));
    let active = std::fs::read_to_string("/sys/class/tty/console/active")
        .map(|t| output::parse_active(&t))
        .unwrap_or_default();
    specs.retain(|s| s.wanted(&active));
    let mut supervisor = Supervisor::new(specs, Arc::new(ConsoleSink));
    supervisor.start_all(Instant::now());
    let ms = syscall::uptime().map_or(0, banner::millis);
    info!("keel: boot complete in {ms} ms");

    let action = main_loop(&mut supervisor, signals);
    shutdown::run(action, &mut supervisor, signals)
}

/// Reaps, restarts and waits for signals until a shutdown is requested.
fn main_loop(supervisor: &mut Supervisor, signals: &libc::sigset_t) -> shutdown::Action {
    loop {
        let now = Instant::now();
        supervisor.poll_timers(now);
        let timeout = supervisor
            .next_deadline()
            .map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(now)
            });
        match shutdown::wait_signal(signals, timeout) {
            Some(libc::SIGCHLD) => supervisor.reap(),
            Some(sig) => {
                if let Some(action) = shutdown::action_for(sig) {
                    return action;
                }
            }
            None => {}
        }
    }
}
