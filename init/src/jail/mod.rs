//! The VMM jail: each keel-vmm runs boxed in the way Firecracker's jailer does it, but from a
//! library call instead of a separate binary.
//!
//! ```text
//! let jailer = Jailer::default();                      // /sys/fs/cgroup/keel.slice, /run/keel/jail
//! let spec = JailSpec::for_vmm(id, uid, gid, vmm, kernel, initrd, disks, sockets_dir, mib, vcpus);
//! let config = spec.jail_path(kernel);                 // paths for vm.json, as the VMM sees them
//! let vm = jailer.spawn(&spec, &argv, JailStdio::default())?;   // argv[0] is ignored
//! ... vm.wait()? / jailer.cgroup_events(id)? ...
//! jailer.cleanup(id)?;                                 // after the VMM exited
//! ```
//!
//! `spawn` creates the cgroup `keel.slice/vm-<id>` with the spec's limits, then clones a child
//! into new mount, PID, IPC and UTS namespaces. The child joins the cgroup (and a cgroup
//! namespace), builds a tmpfs root holding only the program, the VM's files, its sockets
//! directory and its device nodes, pivots into it and detaches the host's root, remounts its root
//! read-only, sets rlimits, drops every capability (bounding and ambient sets too), switches to the
//! VM's uid/gid with no supplementary groups, sets no_new_privs, keeps only stdin/stdout/stderr,
//! clears the environment and execs the program as PID 1 of its namespace. The network
//! namespace stays the host's: keel-vmm opens TAP devices there.

pub mod cgroup;
mod child;
pub mod plan;
pub mod probe;
pub mod spec;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub use cgroup::{CgroupEvents, CgroupLimits};
pub use spec::{Disk, Expose, JailSpec, Rlimit};

/// Why a jail could not be built or managed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// VM id {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'
    #[error("VM id {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    BadVmId(String),
    /// A jail never runs as root: uid {0} gid {1}
    #[error("a jail never runs as root: uid {0} gid {1}")]
    RootIds(u32, u32),
    /// Host path {0} is not absolute
    #[error("host path {0} is not absolute")]
    RelativePath(PathBuf),
    /// Jail path {0} must be absolute and made of plain names
    #[error("jail path {0} must be absolute and made of plain names")]
    BadJailPath(PathBuf),
    /// Jail path {0} collides with {1}
    #[error("jail path {0} collides with {1}")]
    JailPathClash(PathBuf, PathBuf),
    /// Resource limit {0:?} would stop the program from running
    #[error("resource limit {0:?} would stop the program from running")]
    ZeroRlimit(Rlimit),
    /// Bad cgroup limit {0} {1}
    #[error("bad cgroup limit {0} {1}")]
    BadLimit(&'static str, String),
    /// More than {0} arguments
    #[error("more than {0} arguments")]
    TooManyArgs(usize),
    /// Cannot write {1:?} to {0}: {2}
    #[error("cannot write {1:?} to {0}: {2}")]
    Cgroup(PathBuf, String, io::Error),
    /// Cannot create {0}: {1}
    #[error("cannot create {0}: {1}")]
    CreateDir(PathBuf, io::Error),
    /// Cannot read {0}: {1}
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, io::Error),
    /// Cannot remove {0}: {1}
    #[error("cannot remove {0}: {1}")]
    Remove(PathBuf, io::Error),
    /// {0} is not a regular file
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// {0} is not a directory
    #[error("{0} is not a directory")]
    NotADir(PathBuf),
    /// {0} is not a character device
    #[error("{0} is not a character device")]
    NotADevice(PathBuf),
    /// Cannot prepare the jail: {0}
    #[error("cannot prepare the jail: {0}")]
    Prepare(io::Error),
    /// The jailed process of {0} neither ran its program nor failed within {1} s; killed
    #[error("the jailed process of {0} neither ran its program nor failed within {1} s; killed")]
    SetupTimeout(String, u64),
    /// Cannot start the jailed process: {0}
    #[error("cannot start the jailed process: {0}")]
    Clone(io::Error),
    /// Jail of VM {0}: cannot {1}: {2}
    #[error("jail of VM {0}: cannot {1}: {2}")]
    Setup(String, String, io::Error),
}

/// Where the jails live on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    /// The cgroup v2 directory holding one `vm-<id>` group per VM.
    pub slice: PathBuf,
    /// Directory holding one empty mount point per VM (the jail's tmpfs exists only in the
    /// jail's own mount namespace).
    pub roots: PathBuf,
}

impl Default for Jailer {
    fn default() -> Jailer {
        Jailer {
            slice: PathBuf::from("/sys/fs/cgroup/keel.slice"),
            roots: PathBuf::from("/run/keel/jail"),
        }
    }
}

/// The jailed process's standard descriptors; `None` is /dev/null.
#[derive(Debug, Default)]
pub struct JailStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A running jailed process: PID 1 of its own PID namespace, a child of the caller. Dropping it
/// neither kills nor reaps the process: `wait` (or reap the PID in a SIGCHLD loop) and then
/// `Jailer::cleanup`.
#[derive(Debug)]
pub struct Jailed {
    pid: libc::pid_t,
    pidfd: OwnedFd,
}

impl Jailed {
    /// Its PID in the caller's namespace.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// A pidfd: readable when the process exits (for poll/epoll), immune to PID reuse.
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    /// Sends `signal` through the pidfd.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd is an open pidfd; a null siginfo means a plain kill().
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn waitpid(&self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: status is a valid int for waitpid to fill.
            let ret = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            match ret {
                0 => return Ok(None),
                r if r > 0 => return Ok(Some(ExitStatus::from_raw(status))),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&self) -> io::Result<ExitStatus> {
        self.waitpid(0)
            .and_then(|s| s.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock)))
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }
}

fn regular_file(path: &Path) -> Result<(), JailError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(JailError::NotAFile(path.to_path_buf())),
        Err(e) => Err(JailError::Read(path.to_path_buf(), e)),
    }
}

fn device_number(path: &Path) -> Result<libc::dev_t, JailError> {
    match fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() => Ok(m.rdev()),
        Ok(_) => Err(JailError::NotADevice(path.to_path_buf())),
        Err(e) => Err(JailError::Read(path.to_path_buf(), e)),
    }
}

fn cap_last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The sockets directory: created if missing, owned by the VM's ids, private to them.
fn prepare_sockets_dir(spec: &JailSpec) -> Result<(), JailError> {
    let dir = &spec.sockets_dir;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(JailError::CreateDir(dir.clone(), e)),
    }
    if !dir.is_dir() {
        return Err(JailError::NotADir(dir.clone()));
    }
    std::os::unix::fs::chown(dir, Some(spec.uid), Some(spec.gid))
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| JailError::CreateDir(dir.clone(), e))
}

fn devnull(fd: Option<OwnedFd>, write: bool) -> Result<OwnedFd, JailError> {
    match fd {
        Some(fd) => Ok(fd),
        None => OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| JailError::Read("/dev/null".into(), e)),
    }
}

impl Jailer {
    /// The empty directory VM `vm_id`'s jail root is mounted on.
    pub fn root_dir(&self, vm_id: &str) -> PathBuf {
        self.roots.join(vm_id)
    }

    /// The VM's cgroup directory.
    pub fn cgroup_dir(&self, vm_id: &str) -> PathBuf {
        cgroup::group_dir(&self.slice, vm_id)
    }

    /// Starts `argv[1..]` as the spec's program inside a new jail (see the module doc). Returns
    /// once the program has been exec'd; a failure of any step is an error naming it, and
    /// leaves no cgroup or jail directory behind.
    pub fn spawn(
        &self,
        spec: &JailSpec,
        argv: &[String],
        stdio: JailStdio,
    ) -> Result<Jailed, JailError> {
        spec.validate()?;
        if argv.len() > child::MAX_ARGS {
            return Err(JailError::TooManyArgs(child::MAX_ARGS));
        }
        regular_file(&spec.program)?;
        for file in &spec.files {
            regular_file(&file.host)?;
        }
        let device_numbers = spec
            .devices
            .iter()
            .map(|d| device_number(d))
            .collect::<Result<Vec<_>, _>>()?;
        prepare_sockets_dir(spec)?;
        let stdio = [
            devnull(stdio.stdin, false)?,
            devnull(stdio.stdout, true)?,
            devnull(stdio.stderr, true)?,
        ];
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.roots)
            .map_err(|e| JailError::CreateDir(self.roots.clone(), e))?;
        let root = self.root_dir(&spec.vm_id);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .map_err(|e| JailError::CreateDir(root.clone(), e))?;
        let group = match cgroup::create(&self.slice, &spec.vm_id, &spec.cgroup) {
            Ok(group) => group,
            Err(e) => {
                let _ = fs::remove_dir(&root);
                return Err(e);
            }
        };
        let result = self.start(spec, argv, &stdio, &group, device_numbers);
        if result.is_err() {
            let _ = self.cleanup(&spec.vm_id);
        }
        result
    }

    fn start(
        &self,
        spec: &JailSpec,
        argv: &[String],
        stdio: &[OwnedFd; 3],
        group: &Path,
        device_numbers: Vec<libc::dev_t>,
    ) -> Result<Jailed, JailError> {
        let procs_path = group.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| JailError::Read(procs_path, e))?;
        let host = plan::Host {
            root: self.root_dir(&spec.vm_id),
            cgroup_procs: procs.as_raw_fd(),
            device_numbers,
            stdio: [
                stdio[0].as_raw_fd(),
                stdio[1].as_raw_fd(),
                stdio[2].as_raw_fd(),
            ],
            cap_last_cap: cap_last_cap(),
        };
        let steps = plan::plan(spec, &host, argv).map_err(JailError::Prepare)?;
        let (mut report, report_writer) = error_pipe()?;
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_PIDFD;
        let mut pidfd: libc::c_int = -1;
        // SAFETY: a fork-like clone (no new stack: the child continues on a copy of this one). The
        // child only runs `child::run_plan`, which makes raw system calls on memory prepared
        // above and never returns. SIGCHLD makes it an ordinary waitable child.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                std::ptr::null_mut::<libc::c_void>(),
                &mut pidfd as *mut libc::c_int,
                std::ptr::null_mut::<libc::c_void>(),
                0 as libc::c_ulong,
            )
        };
        if pid == 0 {
            child::run_plan(&steps, report_writer.as_raw_fd());
        }
        if pid < 0 {
            return Err(JailError::Clone(io::Error::last_os_error()));
        }
        drop(report_writer);
        // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let jailed = Jailed {
            pid: pid as libc::pid_t,
            pidfd,
        };
        // A child stuck in a system call of its plan must not leave the VM starting forever.
        if !readable_within(&report, SETUP_TIMEOUT) {
            let _ = jailed.signal(libc::SIGKILL);
            let _ = jailed.wait();
            return Err(JailError::SetupTimeout(
                spec.vm_id.clone(),
                SETUP_TIMEOUT.as_secs(),
            ));
        }
        let mut bytes = [0u8; 8];
        match report.read_exact(&mut bytes) {
            // EOF: the pipe closed on exec, the program runs.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(jailed),
            Err(e) => {
                let _ = jailed.signal(libc::SIGKILL);
                let _ = jailed.wait();
                Err(JailError::Prepare(e))
            }
            Ok(()) => {
                let _ = jailed.wait();
                let (index, errno) = child::decode_report(&bytes);
                let what = steps
                    .get(index)
                    .map_or_else(|| "run the plan".to_string(), ToString::to_string);
                Err(JailError::Setup(
                    spec.vm_id.clone(),
                    what,
                    io::Error::from_raw_os_error(errno),
                ))
            }
        }
    }

    /// How often VM `vm_id` hit its memory and pids limits.
    pub fn cgroup_events(&self, vm_id: &str) -> Result<CgroupEvents, JailError> {
        cgroup::events(&self.slice, vm_id)
    }

    /// Removes VM `vm_id`'s cgroup (killing anything left in it) and its jail mount point. Call
    /// after the jailed process has exited and been waited for. Missing pieces are fine.
    pub fn cleanup(&self, vm_id: &str) -> Result<(), JailError> {
        cgroup::remove(&self.slice, vm_id)?;
        let root = self.root_dir(vm_id);
        match fs::remove_dir(&root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(JailError::Remove(root, e)),
        }
    }
}

/// How long a jailed child may take from clone to exec (or to reporting its failure).
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Whether `file` has something to read (data or end of file) within `timeout`.
fn readable_within(file: &File, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: pfd is one valid pollfd for a descriptor `file` keeps open during the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return true,
            0 => return false,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            // poll itself failed: let the read report what is wrong.
            _ => return true,
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn error_pipe() -> Result<(File, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::Prepare(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
