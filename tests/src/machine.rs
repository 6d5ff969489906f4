//! A running QEMU: serial console on its stdio pipes, QMP on a unix socket, TCP ports forwarded
//! through the user network. QEMU is killed when the `Qemu` is dropped.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::console::{Capture, Line, WaitFailure};
use crate::error::Error;
use crate::paths;
use crate::ports::{self, Forward};
use crate::qemu::QemuBuilder;
use crate::qmp::{Qmp, QmpError};

/// How long QEMU may take to open its QMP socket.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running QEMU. Dropping it kills QEMU.
pub struct Qemu {
    child: Child,
    stdin: ChildStdin,
    console: Capture,
    stderr: Capture,
    /// Index of the first console line the next wait looks at.
    cursor: usize,
    qmp: Option<Qmp>,
    forwards: Vec<Forward>,
    _run_dir: RunDir,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Qemu {
    /// Starts QEMU as `builder` describes and connects to its QMP socket.
    pub fn start(builder: QemuBuilder) -> Result<Qemu, Error> {
        let run_dir = new_run_dir()?;
        let qmp_socket = run_dir.0.join("qmp.sock");
        let forwards = match builder.nic_model {
            Some(_) => ports::allocate(&builder.guest_ports)?,
            None => Vec::new(),
        };
        let args = builder.command_args(&qmp_socket, &forwards);
        if builder.firmware == crate::qemu::Firmware::Ovmf {
            let vars = crate::qemu::ovmf_vars_path(&qmp_socket);
            std::fs::copy(crate::qemu::OVMF_VARS, &vars).map_err(|source| Error::Create {
                path: vars.clone(),
                source,
            })?;
        }

        let log_path = paths::log_dir().join(format!("{}.log", file_name(&builder.name)));
        let log = create_log(&log_path, &builder.program, &args)?;

        let mut command = Command::new(&builder.program);
        command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
        // is async-signal-safe. It makes the kernel kill QEMU if the test process dies without
        // running Drop (a killed test run, a timeout in CI).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: builder.program.to_string_lossy().into_owned(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Not reachable with Stdio::piped(); kill rather than leak the process.
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Spawn {
                program: builder.program.to_string_lossy().into_owned(),
                source: std::io::Error::other("stdio pipes missing"),
            });
        };
        let (console, _) = Capture::spawn(stdout, started, Some(Arc::clone(&log)), "");
        let (stderr, _) = Capture::spawn(stderr, started, Some(log), "qemu: ");
        let mut qemu = Qemu {
            child,
            stdin,
            console,
            stderr,
            cursor: 0,
            qmp: None,
            forwards,
            _run_dir: run_dir,
            log_path,
            status: None,
        };
        qemu.qmp = Some(qemu.connect_qmp(&qmp_socket)?);
        Ok(qemu)
    }

    fn connect_qmp(&mut self, socket: &Path) -> Result<Qmp, Error> {
        let deadline = Instant::now() + QMP_CONNECT_TIMEOUT;
        loop {
            if let Some(status) = self.poll_exit()? {
                self.stderr.wait_closed(Duration::from_secs(2));
                return Err(Error::EarlyExit {
                    status: status.to_string(),
                    stderr: self.stderr_text(),
                });
            }
            match Qmp::connect(socket, Duration::from_millis(200)) {
                Ok(qmp) => return Ok(qmp),
                Err(QmpError::Connect { .. }) if Instant::now() < deadline => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for the next console line containing `needle` and returns it. Each wait starts after
    /// the line the previous wait matched, so successive waits also check the order of lines.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<Line, Error> {
        self.wait_for_line_matching(
            &format!("containing {needle:?}"),
            |l| l.contains(needle),
            timeout,
        )
    }

    /// Like `wait_for_line` with a predicate; `description` names it in the error.
    pub fn wait_for_line_matching(
        &mut self,
        description: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<Line, Error> {
        match self.console.wait_from(self.cursor, &matches, timeout) {
            Ok((index, line)) => {
                self.cursor = index + 1;
                Ok(line)
            }
            Err(WaitFailure::TimedOut) => Err(Error::Timeout {
                wanted: description.to_owned(),
                timeout,
                context: self.console.context(),
            }),
            Err(WaitFailure::Closed) => {
                // The console closes when QEMU exits; give the exit a moment to be reaped.
                let status = match self.wait_exit(Duration::from_secs(2)) {
                    Ok(status) => format!("QEMU exited with {status}"),
                    Err(_) => "QEMU still running".to_owned(),
                };
                Err(Error::ConsoleClosed {
                    wanted: description.to_owned(),
                    status: self.with_stderr(status),
                    context: self.console.context(),
                })
            }
        }
    }

    /// Every complete console line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console.lines()
    }

    /// The unterminated end of the console output, such as a prompt.
    pub fn partial_line(&self) -> String {
        self.console.partial()
    }

    /// Types `text` on the serial console.
    pub fn send(&mut self, text: &str) -> Result<(), Error> {
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(Error::ConsoleWrite)
    }

    /// Types `text` and Enter (a carriage return, as a terminal sends).
    pub fn send_line(&mut self, text: &str) -> Result<(), Error> {
        self.send(&format!("{text}\r"))
    }

    /// The host port on 127.0.0.1 forwarded to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|f| f.guest == guest_port)
            .map(|f| f.host)
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> Result<&mut Qmp, Error> {
        self.qmp.as_mut().ok_or(Error::Qmp(QmpError::Closed))
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn power_off(&mut self) -> Result<(), Error> {
        Ok(self.qmp()?.system_powerdown()?)
    }

    /// Waits until QEMU exits and its console output is fully read; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                self.console.wait_closed(Duration::from_secs(5));
                self.stderr.wait_closed(Duration::from_secs(5));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::ExitTimeout {
                    timeout,
                    context: self.console.context(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console log file of this run.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// QEMU's own messages (stderr) so far.
    pub fn stderr_lines(&self) -> Vec<Line> {
        self.stderr.lines()
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(Error::Wait)?;
        }
        Ok(self.status)
    }

    /// QEMU's stderr for error messages, without the warnings about CPUID bits TCG cannot
    /// emulate that the EPYC model causes on every start (they stay in the log).
    fn stderr_text(&self) -> String {
        self.stderr
            .lines()
            .iter()
            .map(|l| l.text.as_str())
            .filter(|l| !l.contains("TCG doesn't support requested feature"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn with_stderr(&self, status: String) -> String {
        let stderr = self.stderr_text();
        if stderr.is_empty() {
            status
        } else {
            format!("{status}; QEMU stderr: {stderr}")
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Already-exited QEMU makes kill fail harmlessly; wait reaps it either way.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private directory for the QMP socket, removed on drop. Unix socket paths are limited to 108
/// bytes, so it lives in the temporary directory rather than under a possibly deep target directory.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new_run_dir() -> Result<RunDir, Error> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "keel-qemu-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Create {
        path: dir.clone(),
        source,
    })?;
    Ok(RunDir(dir))
}

fn create_log(
    path: &Path,
    program: &OsString,
    args: &[OsString],
) -> Result<Arc<Mutex<File>>, Error> {
    let create_error = |source| Error::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create_error)?;
    }
    let mut file = File::create(path).map_err(create_error)?;
    let command: Vec<String> = std::iter::once(program)
        .chain(args)
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect();
    writeln!(file, "# {}", command.join(" ")).map_err(create_error)?;
    Ok(Arc::new(Mutex::new(file)))
}

/// `arg` as a POSIX shell word, so the logged command line can be pasted into a shell.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `name` reduced to characters that are safe in a file name.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::qemu::Boot;

    #[test]
    fn shell_quote_table() {
        for (arg, want) in [
            ("-append", "-append"),
            ("console=ttyS0 panic=-1", "'console=ttyS0 panic=-1'"),
            ("", "''"),
            ("it's", r"'it'\''s'"),
            ("EPYC,+svm,+npt", "EPYC,+svm,+npt"),
        ] {
            assert_eq!(shell_quote(arg), want);
        }
    }

    #[test]
    fn file_name_table() {
        for (name, want) in [
            ("boot", "boot"),
            ("a::b c/d", "a__b_c_d"),
            ("x-1.2_y", "x-1.2_y"),
        ] {
            assert_eq!(file_name(name), want);
        }
    }

    #[test]
    fn missing_qemu_binary_is_a_clear_error() {
        let boot = Boot::Kernel {
            kernel: "/o/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        };
        let mut builder = QemuBuilder::new("missing-qemu", boot);
        builder.program = "/nonexistent/qemu-system-x86_64".into();
        let err = builder.spawn().err().unwrap().to_string();
        assert!(
            err.starts_with("Cannot start /nonexistent/qemu-system-x86_64: "),
            "{err}"
        );
    }
}
