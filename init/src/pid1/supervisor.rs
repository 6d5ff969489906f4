//! Starts services, restarts them with exponential back-off, and forwards their output.
//!
//! Time is passed in by the caller so the restart logic is tested with real processes but without
//! waiting; the caller reaps children and reports each exit with `child_exited`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::services::{Restart, ServiceSpec};

/// First restart delay; doubles up to `MAX_BACKOFF`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A service that ran this long before exiting starts over at `INITIAL_BACKOFF`.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Output lines longer than this are split.
const MAX_LINE: usize = 4096;

/// Where supervisor messages and service output go.
pub trait Sink: Send + Sync + 'static {
    /// A supervisor message ("keel: service x started (pid 12)") and its level.
    fn event(&self, level: log::Level, line: &str);
    /// One line a service wrote to stdout or stderr.
    fn output(&self, service: &str, to_console: bool, line: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet.
    Idle,
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited; start again at `until`.
    Waiting {
        until: Instant,
    },
    /// Exited and not to be restarted.
    Done,
}

struct Service {
    spec: ServiceSpec,
    state: State,
    backoff: Duration,
}

pub struct Supervisor {
    services: Vec<Service>,
    sink: Arc<dyn Sink>,
    stopping: bool,
}

/// "exited with status 3" / "killed by signal 9" for a waitpid status.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("changed state (wait status {status:#x})")
    }
}

/// Appends `new` to `pending` and returns the complete lines (without "\n" or "\r\n"); text
/// without a newline stays pending unless it reaches `max` bytes.
pub fn split_lines(pending: &mut Vec<u8>, new: &[u8], max: usize) -> Vec<String> {
    pending.extend_from_slice(new);
    let mut lines = Vec::new();
    loop {
        let cut = match pending.iter().position(|&b| b == b'\n') {
            Some(i) if i < max => Some((i, i + 1)),
            _ if pending.len() >= max => Some((max, max)),
            _ => None,
        };
        let Some((end, next)) = cut else {
            break;
        };
        let mut line = &pending[..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        lines.push(String::from_utf8_lossy(line).into_owned());
        pending.drain(..next);
    }
    lines
}

/// Reads a service's combined stdout/stderr until every writer closed it.
fn forward_output(pipe: OwnedFd, name: String, to_console: bool, sink: Arc<dyn Sink>) {
    let mut file = File::from(pipe);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for line in split_lines(&mut pending, &buf[..n], MAX_LINE) {
            sink.output(&name, to_console, &line);
        }
    }
    if !pending.is_empty() {
        sink.output(&name, to_console, &String::from_utf8_lossy(&pending));
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `spec` in its own process group, stdin from /dev/null, stdout and stderr into one pipe
/// read by a forwarding thread. Returns the pid.
fn spawn(spec: &ServiceSpec, sink: &Arc<dyn Sink>) -> std::io::Result<i32> {
    if let Some(tty) = &spec.tty {
        return spawn_on_tty(spec, tty);
    }
    let (read_end, write_end) = pipe()?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone()?))
        .stderr(Stdio::from(write_end))
        .process_group(0);
    unblock_signals(&mut cmd);
    let child = cmd.spawn()?;
    // Close our copies of the write end so the reader sees EOF when the service exits.
    drop(cmd);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The caller reaps with waitpid(-1); the Child handle is not used for waiting.
    drop(child);
    let (name, console, sink) = (spec.name.clone(), spec.console, Arc::clone(sink));
    std::thread::Builder::new()
        .name(format!("out-{}", spec.name))
        .spawn(move || forward_output(read_end, name, console, sink))?;
    Ok(pid)
}

/// Clears the signal mask in the child: PID 1 blocks the signals it takes with sigtimedwait
/// (SIGTERM among them), and a blocked mask survives exec, so a service would never see the
/// SIGTERM that stops it.
fn unblock_signals(cmd: &mut Command) {
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and only touch the local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// TERM for a terminal: the Linux VT, or a serial line of unknown kind (VT220 is what most
/// serial consoles and BMC serial-over-LAN viewers emulate).
pub fn term_for(tty: &str) -> &'static str {
    if tty.starts_with("ttyS") || tty.starts_with("ttyAMA") || tty.starts_with("hvc") {
        "vt220"
    } else if tty.starts_with("tty") {
        "linux"
    } else {
        "vt100"
    }
}

/// Starts `spec` in a new session with /dev/<tty> as its stdin, stdout and stderr. Its output is
/// the terminal's, so nothing is forwarded.
///
/// The terminal is deliberately not made the session's controlling terminal: when a controlling
/// process exits, the kernel hangs up its (non-pty) terminal for every opener, and PID 1's own
/// handle on the console would go dead with it. A full-screen program needs no job control, and
/// reads the size itself rather than waiting for SIGWINCH.
fn spawn_on_tty(spec: &ServiceSpec, tty: &str) -> std::io::Result<i32> {
    let path = format!("/dev/{tty}");
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env("TERM", term_for(tty))
        .stdin(Stdio::from(device.try_clone()?))
        .stdout(Stdio::from(device.try_clone()?))
        .stderr(Stdio::from(device));
    unblock_signals(&mut cmd);
    // SAFETY: setsid is async-signal-safe; the closure touches no memory of ours. setsid also
    // makes the child a process group leader, which stop_all relies on.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

impl Supervisor {
    pub fn new(specs: Vec<ServiceSpec>, sink: Arc<dyn Sink>) -> Self {
        let services = specs
            .into_iter()
            .map(|spec| Service {
                spec,
                state: State::Idle,
                backoff: INITIAL_BACKOFF,
            })
            .collect();
        Supervisor {
            services,
            sink,
            stopping: false,
        }
    }

    /// Starts every service that has not been started.
    pub fn start_all(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.services[i].state == State::Idle {
                self.start(i, now);
            }
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let result = spawn(&self.services[i].spec, &self.sink);
        let name = self.services[i].spec.name.clone();
        match result {
            Ok(pid) => {
                self.services[i].state = State::Running { pid, since: now };
                self.sink.event(
                    log::Level::Info,
                    &format!("keel: service {name} started (pid {pid})"),
                );
            }
            Err(e) => {
                let argv0 = &self.services[i].spec.argv[0];
                let why = format!("could not start {argv0}: {e}");
                self.schedule(i, now, false, &why);
            }
        }
    }

    /// Decides what happens after service `i` ended (or failed to start) and logs it.
    fn schedule(&mut self, i: usize, now: Instant, success: bool, why: &str) {
        let stopping = self.stopping;
        let svc = &mut self.services[i];
        let name = &svc.spec.name;
        let restart = !stopping
            && match svc.spec.restart {
                Restart::Always => true,
                Restart::OnFailure => !success,
                Restart::Never => false,
            };
        if !restart {
            svc.state = State::Done;
            let level = if success || stopping {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            self.sink
                .event(level, &format!("keel: service {name} {why}"));
            return;
        }
        let delay = svc.backoff;
        svc.backoff = (svc.backoff * 2).min(MAX_BACKOFF);
        svc.state = State::Waiting { until: now + delay };
        self.sink.event(
            log::Level::Warn,
            &format!(
                "keel: service {name} {why}; restarting in {} s",
                delay.as_secs()
            ),
        );
    }

    /// Handles a reaped child. Returns false if `pid` is not one of the services.
    pub fn child_exited(&mut self, pid: i32, status: i32, now: Instant) -> bool {
        let found = self
            .services
            .iter()
            .position(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid));
        let Some(i) = found else {
            return false;
        };
        if let State::Running { since, .. } = self.services[i].state {
            let ran = now.saturating_duration_since(since);
            if ran >= STABLE_AFTER {
                self.services[i].backoff = INITIAL_BACKOFF;
            }
            let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let why = format!(
                "{} after {:.1} s",
                describe_status(status),
                ran.as_secs_f64()
            );
            self.schedule(i, now, success, &why);
        }
        true
    }

    /// Starts the services whose restart time has come.
    pub fn poll_timers(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if matches!(self.services[i].state, State::Waiting { until } if until <= now) {
                self.start(i, now);
            }
        }
    }

    /// The earliest pending restart.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Stops all restarts and sends SIGTERM to every running service's process group.
    pub fn stop_all(&mut self) {
        self.stopping = true;
        for svc in &mut self.services {
            match svc.state {
                State::Running { pid, .. } => {
                    // SAFETY: kill has no memory effects; pid is a process group we created.
                    unsafe { libc::kill(-pid, libc::SIGTERM) };
                }
                State::Waiting { .. } | State::Idle => svc.state = State::Done,
                State::Done => {}
            }
        }
    }

    /// How many services are running.
    pub fn running(&self) -> usize {
        self.services
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count()
    }

    /// The pid of a running service.
    #[cfg(test)]
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .and_then(|s| match s.state {
                State::Running { pid, .. } => Some(pid),
                _ => None,
            })
    }

    /// Reaps every exited child (services and orphans) without blocking. PID 1 only: in tests
    /// this would steal other tests' children.
    pub fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid int for waitpid to fill.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.child_exited(pid, status, Instant::now());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<String>>,
        output: Mutex<Vec<(String, bool, String)>>,
    }

    impl Sink for Recorder {
        fn event(&self, _: log::Level, line: &str) {
            self.events.lock().unwrap().push(line.to_string());
        }
        fn output(&self, service: &str, to_console: bool, line: &str) {
            self.output
                .lock()
                .unwrap()
                .push((service.into(), to_console, line.into()));
        }
    }

    fn spec(name: &str, argv: &[&str], restart: Restart) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            restart,
            console: true,
            tty: None,
            only_if_console: false,
        }
    }

    /// Waits for exactly this child (never -1: tests run in parallel in one process).
    fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: status is a valid int for waitpid to fill.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    fn setup(argv: &[&str], restart: Restart) -> (Supervisor, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let sup = Supervisor::new(vec![spec("svc", argv, restart)], rec.clone());
        (sup, rec)
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets_after_a_stable_run() {
        let (mut sup, rec) = setup(&["/bin/sh", "-c", "exit 3"], Restart::OnFailure);
        let mut now = Instant::now();
        sup.start_all(now);
        for want in [1, 2, 4, 8, 16, 30, 30] {
            let pid = sup.pid_of("svc").unwrap();
            let status = wait(pid);
            assert!(sup.child_exited(pid, status, now));
            assert_eq!(sup.next_deadline(), Some(now + Duration::from_secs(want)));
            // Not restarted before its time...
            sup.poll_timers(now + Duration::from_secs(want) - Duration::from_millis(1));
            assert_eq!(sup.pid_of("svc"), None);
            // ...and restarted on time.
            now += Duration::from_secs(want);
            sup.poll_timers(now);
            assert!(sup.pid_of("svc").is_some());
        }
        // It now "runs" for 10 s before failing again: back to 1 s.
        let pid = sup.pid_of("svc").unwrap();
        let status = wait(pid);
        sup.child_exited(pid, status, now + STABLE_AFTER);
        assert_eq!(
            sup.next_deadline(),
            Some(now + STABLE_AFTER + INITIAL_BACKOFF)
        );
        let events = rec.events.lock().unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.contains("exited with status 3") && e.contains("restarting in 30 s")),
            "{events:?}"
        );
    }

    #[test]
    fn restart_policies() {
        let cases = [
            (&["/bin/true"][..], Restart::OnFailure, false),
            (&["/bin/false"][..], Restart::OnFailure, true),
            (&["/bin/true"][..], Restart::Always, true),
            (&["/bin/false"][..], Restart::Never, false),
            (
                &["/bin/sh", "-c", "kill -9 $$"][..],
                Restart::OnFailure,
                true,
            ),
        ];
        for (argv, restart, restarts) in cases {
            let (mut sup, rec) = setup(argv, restart);
            let now = Instant::now();
            sup.start_all(now);
            let pid = sup.pid_of("svc").unwrap();
            assert!(sup.child_exited(pid, wait(pid), now));
            assert_eq!(
                sup.next_deadline().is_some(),
                restarts,
                "{argv:?} {restart:?}"
            );
            assert!(!sup.child_exited(pid, 0, now), "a pid is handled once");
            let events = rec.events.lock().unwrap();
            assert!(
                events[0].starts_with("keel: service svc started (pid "),
                "{events:?}"
            );
        }
    }

    #[test]
    fn output_is_forwarded_line_by_line() {
        let (mut sup, rec) = setup(
            &["/bin/sh", "-c", "echo hello; echo oops >&2; printf tail"],
            Restart::Never,
        );
        sup.start_all(Instant::now());
        let pid = sup.pid_of("svc").unwrap();
        wait(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while rec.output.lock().unwrap().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines: Vec<String> = rec
            .output
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, l)| l.clone())
            .collect();
        assert_eq!(lines, ["hello", "oops", "tail"]);
        assert!(rec
            .output
            .lock()
            .unwrap()
            .iter()
            .all(|(n, c, _)| n == "svc" && *c));
    }

    #[test]
    fn a_missing_program_is_retried() {
        let (mut sup, rec) = setup(&["/nonexistent/keel-test"], Restart::Always);
        let now = Instant::now();
        sup.start_all(now);
        assert_eq!(sup.pid_of("svc"), None);
        assert_eq!(sup.next_deadline(), Some(now + INITIAL_BACKOFF));
        let events = rec.events.lock().unwrap();
        assert!(
            events[0].contains("could not start /nonexistent/keel-test"),
            "{events:?}"
        );
    }

    #[test]
    fn stop_all_terminates_and_does_not_restart() {
        let (mut sup, rec) = setup(&["/bin/sleep", "30"], Restart::Always);
        let now = Instant::now();
        sup.start_all(now);
        assert_eq!(sup.running(), 1);
        let pid = sup.pid_of("svc").unwrap();
        sup.stop_all();
        let status = wait(pid);
        assert!(sup.child_exited(pid, status, now));
        assert_eq!(sup.running(), 0);
        assert_eq!(sup.next_deadline(), None);
        let events = rec.events.lock().unwrap();
        assert!(
            events.last().unwrap().contains("killed by signal 15"),
            "{events:?}"
        );
    }

    #[test]
    fn a_tty_service_owns_its_terminal() {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        // A pseudo-terminal stands in for tty1 / ttyS0.
        // SAFETY: plain libc calls on fresh descriptors; results checked.
        let (mut master, name) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0);
            assert_eq!((libc::grantpt(m), libc::unlockpt(m)), (0, 0));
            let name = std::ffi::CStr::from_ptr(libc::ptsname(m));
            (File::from_raw_fd(m), name.to_string_lossy().into_owned())
        };
        let tty = name.strip_prefix("/dev/").unwrap().to_string();
        // Field 6 of /proc/<pid>/stat is the session id.
        let script = "echo \"term=$TERM\"; (exec 3</dev/tty) 2>/dev/null || echo no-ctty; \
            [ -t 0 ] && [ -t 2 ] && echo std-tty; \
            [ \"$(cut -d' ' -f6 /proc/$$/stat)\" = $$ ] && echo own-session";
        let mut s = spec("con", &["/bin/sh", "-c", script], Restart::Never);
        s.tty = Some(tty);
        let rec = Arc::new(Recorder::default());
        let mut sup = Supervisor::new(vec![s], rec.clone());
        sup.start_all(Instant::now());
        let pid = sup.pid_of("con").unwrap();
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        // The terminal may hand the output over in pieces: read until the last line or 2 s of
        // silence.
        let mut text = String::new();
        let mut out = vec![0u8; 4096];
        while !text.contains("own-session") {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&master),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 2000) } <= 0 {
                break;
            }
            match master.read(&mut out) {
                Ok(n) if n > 0 => {
                    text.push_str(&String::from_utf8_lossy(&out[..n]).replace('\r', ""))
                }
                _ => break,
            }
        }
        assert!(
            text.contains("term=vt100\nno-ctty\nstd-tty\nown-session"),
            "{text:?}"
        );
        assert!(
            rec.output.lock().unwrap().is_empty(),
            "nothing goes through the pipe"
        );
        let mut missing = spec("gone", &["/bin/true"], Restart::Never);
        missing.tty = Some("nonexistent-tty9".into());
        let mut sup = Supervisor::new(vec![missing], rec.clone());
        sup.start_all(Instant::now());
        let events = rec.events.lock().unwrap();
        assert!(
            events.last().unwrap().contains("/dev/nonexistent-tty9"),
            "{events:?}"
        );
    }

    #[test]
    fn services_do_not_inherit_pid1s_blocked_signals() {
        // PID 1 blocks SIGTERM (it takes it with sigtimedwait); its services must not.
        // SAFETY: set is a valid sigset_t; only this test thread's mask changes.
        let old = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        let (mut sup, _rec) = setup(&["/bin/sleep", "30"], Restart::Never);
        sup.start_all(Instant::now());
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        let pid = sup.pid_of("svc").unwrap();
        sup.stop_all();
        let status = wait(pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
    }

    #[test]
    fn terms() {
        for (tty, want) in [
            ("tty1", "linux"),
            ("ttyS0", "vt220"),
            ("hvc0", "vt220"),
            ("pts/2", "vt100"),
        ] {
            assert_eq!(term_for(tty), want);
        }
    }

    #[test]
    fn lines_are_split() {
        let mut pending = Vec::new();
        assert_eq!(split_lines(&mut pending, b"a\r\nb", 8), ["a"]);
        assert_eq!(split_lines(&mut pending, b"c\n\n", 8), ["bc", ""]);
        assert!(pending.is_empty());
        assert_eq!(
            split_lines(&mut pending, b"0123456789\n", 4),
            ["0123", "4567", "89"]
        );
        assert_eq!(split_lines(&mut pending, b"xyz", 4), Vec::<String>::new());
        assert_eq!(pending, b"xyz");
    }

    #[test]
    fn statuses() {
        let cases = [
            (0, "exited with status 0"),
            (3 << 8, "exited with status 3"),
            (9, "killed by signal 9"),
        ];
        for (status, want) in cases {
            assert_eq!(describe_status(status), want);
        }
    }
}
