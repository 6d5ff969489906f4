//! The jail as a list of steps, computed before the fork: the child only runs them, with raw
//! system calls and no allocation (it is the copy of a possibly multi-threaded process).

use std::ffi::CString;
use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::spec::{JailSpec, Rlimit, JAIL_SOCKETS_DIR};
use crate::sys::syscall::cpath;

/// One thing the child does between the fork and the exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Writes "0" to this cgroup.procs descriptor: the child joins the VM's group.
    JoinCgroup(RawFd),
    /// unshare(2) with these flags.
    Unshare(libc::c_int),
    /// A new session: no controlling terminal shared with the caller.
    Setsid,
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir(CString),
    /// Creates an empty file to bind a file onto.
    Touch(CString),
    Mknod(CString, libc::dev_t),
    Chown(CString, u32, u32),
    /// pivot_root into this directory and detach the old root.
    PivotRoot(CString),
    Hostname(CString),
    Rlimit(libc::__rlimit_resource_t, u64),
    /// dup2 of these descriptors onto 0, 1, 2.
    Stdio([RawFd; 3]),
    /// Default dispositions and an empty signal mask: nothing the caller blocked or ignored
    /// (PID 1 blocks its signals, Rust ignores SIGPIPE) carries over into the program.
    ResetSignals,
    /// Drops capabilities 0..=N from the bounding set and clears the ambient set.
    DropBoundingSet(u32),
    /// setgroups([]), setresgid, setresuid.
    SetIds(u32, u32),
    /// Empties the effective, permitted and inheritable sets.
    ClearCapabilities,
    NoNewPrivs,
    /// Marks every descriptor from 3 up close-on-exec.
    CloseFds,
    Exec(CString, Vec<CString>),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::JoinCgroup(_) => write!(f, "join the VM's cgroup"),
            Step::Unshare(flags) => write!(f, "unshare namespaces {flags:#x}"),
            Step::Setsid => write!(f, "start a session"),
            Step::Mount { source, target, .. } => match source {
                Some(source) => write!(f, "mount {} on {}", s(source), s(target)),
                None => write!(f, "change mount flags of {}", s(target)),
            },
            Step::Mkdir(p) => write!(f, "create directory {}", s(p)),
            Step::Touch(p) => write!(f, "create {}", s(p)),
            Step::Mknod(p, _) => write!(f, "create device node {}", s(p)),
            Step::Chown(p, uid, gid) => write!(f, "chown {} to {uid}:{gid}", s(p)),
            Step::PivotRoot(p) => write!(f, "pivot_root into {}", s(p)),
            Step::Hostname(h) => write!(f, "set host name {}", s(h)),
            Step::Rlimit(r, v) => write!(f, "set rlimit {r} to {v}"),
            Step::Stdio(_) => write!(f, "set up standard descriptors"),
            Step::ResetSignals => write!(f, "reset signals"),
            Step::DropBoundingSet(_) => write!(f, "drop the capability bounding set"),
            Step::SetIds(uid, gid) => write!(f, "switch to uid {uid} gid {gid}"),
            Step::ClearCapabilities => write!(f, "clear capabilities"),
            Step::NoNewPrivs => write!(f, "set no_new_privs"),
            Step::CloseFds => write!(f, "close inherited descriptors"),
            Step::Exec(p, _) => write!(f, "exec {}", s(p)),
        }
    }
}

/// Host facts the plan needs, gathered by the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Empty directory the jail's tmpfs is mounted on.
    pub root: PathBuf,
    pub cgroup_procs: RawFd,
    /// Device number of each of the spec's devices, in order.
    pub device_numbers: Vec<libc::dev_t>,
    pub stdio: [RawFd; 3],
    pub cap_last_cap: u32,
}

const TMPFS_ROOT: libc::c_ulong = libc::MS_NOSUID;
/// Bound files: never setuid or device nodes; only the program is executable.
const BIND_FLAGS: libc::c_ulong =
    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;

fn c(path: &Path) -> Result<CString, std::io::Error> {
    cpath(path)
}

/// `path` (absolute, inside the jail) seen from the host before pivot_root.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Every directory from the top down to `dir` (absolute, inside the jail), e.g. /a, /a/b.
fn ancestors_top_down(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = dir
        .ancestors()
        .filter(|d| *d != Path::new("/") && !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

fn bind(host: &Path, target: &Path) -> Result<Step, std::io::Error> {
    Ok(Step::Mount {
        source: Some(c(host)?),
        target: c(target)?,
        fstype: None,
        flags: libc::MS_BIND,
        data: None,
    })
}

fn remount(target: &Path, flags: libc::c_ulong) -> Result<Step, std::io::Error> {
    Ok(Step::Mount {
        source: None,
        target: c(target)?,
        fstype: None,
        flags,
        data: None,
    })
}

/// The steps that turn the forked child into the jailed `argv` (argv[0] is replaced by the
/// program's path inside the jail).
pub fn plan(spec: &JailSpec, host: &Host, argv: &[String]) -> Result<Vec<Step>, std::io::Error> {
    let root = &host.root;
    let program = spec.program_in_jail();
    let mut steps = vec![
        Step::JoinCgroup(host.cgroup_procs),
        Step::Unshare(libc::CLONE_NEWCGROUP),
        Step::Setsid,
        // Nothing done from here on propagates back to the host's mounts.
        Step::Mount {
            source: None,
            target: c(Path::new("/"))?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        },
        Step::Mount {
            source: Some(CString::from(c"tmpfs")),
            target: c(root)?,
            fstype: Some(CString::from(c"tmpfs")),
            flags: TMPFS_ROOT,
            data: Some(CString::from(c"mode=0755,size=1m,nr_inodes=1024")),
        },
    ];
    let mut made: Vec<PathBuf> = Vec::new();
    let mut mkdirs = |dir: &Path, steps: &mut Vec<Step>| -> Result<(), std::io::Error> {
        for d in ancestors_top_down(dir) {
            if !made.contains(&d) {
                steps.push(Step::Mkdir(c(&under(root, &d))?));
                made.push(d);
            }
        }
        Ok(())
    };
    let files = std::iter::once((&spec.program, &program, true, true)).chain(
        spec.files
            .iter()
            .map(|f| (&f.host, &f.jail, f.read_only, f.executable)),
    );
    for (host_path, jail, read_only, exec) in files {
        if let Some(parent) = jail.parent() {
            mkdirs(parent, &mut steps)?;
        }
        let target = under(root, jail);
        steps.push(Step::Touch(c(&target)?));
        steps.push(bind(host_path, &target)?);
        let mut flags = BIND_FLAGS;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        if !exec {
            flags |= libc::MS_NOEXEC;
        }
        steps.push(remount(&target, flags)?);
    }
    let sockets = Path::new(JAIL_SOCKETS_DIR);
    mkdirs(sockets, &mut steps)?;
    steps.push(bind(&spec.sockets_dir, &under(root, sockets))?);
    steps.push(remount(
        &under(root, sockets),
        BIND_FLAGS | libc::MS_NOEXEC,
    )?);
    for (device, &number) in spec.devices.iter().zip(&host.device_numbers) {
        if let Some(parent) = device.parent() {
            mkdirs(parent, &mut steps)?;
        }
        let node = c(&under(root, device))?;
        steps.push(Step::Mknod(node.clone(), number));
        steps.push(Step::Chown(node, spec.uid, spec.gid));
    }
    if spec.proc {
        mkdirs(Path::new("/proc"), &mut steps)?;
    }
    steps.push(Step::PivotRoot(c(root)?));
    if spec.proc {
        steps.push(Step::Mount {
            source: Some(CString::from(c"proc")),
            target: CString::from(c"/proc"),
            fstype: Some(CString::from(c"proc")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });
    }
    // The jail's own root is read-only too: the sockets directory is its only writable place.
    steps.push(remount(
        Path::new("/"),
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | TMPFS_ROOT,
    )?);
    steps.push(Step::Hostname(CString::new(spec.vm_id.as_str())?));
    steps.extend(
        spec.rlimits
            .iter()
            .map(|r: &Rlimit| Step::Rlimit(r.resource(), r.value())),
    );
    steps.push(Step::Stdio(host.stdio));
    steps.push(Step::ResetSignals);
    steps.push(Step::DropBoundingSet(host.cap_last_cap));
    steps.push(Step::SetIds(spec.uid, spec.gid));
    steps.push(Step::ClearCapabilities);
    steps.push(Step::NoNewPrivs);
    steps.push(Step::CloseFds);
    let mut args = vec![c(&program)?];
    for arg in argv.iter().skip(1) {
        args.push(CString::new(arg.as_str())?);
    }
    steps.push(Step::Exec(c(&program)?, args));
    Ok(steps)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jail::spec::Disk;

    fn plan_text() -> Vec<String> {
        let spec = JailSpec::for_vmm(
            "a",
            1000,
            1001,
            Path::new("/usr/bin/keel-vmm"),
            Path::new("/k/vmlinuz"),
            None,
            &[Disk {
                path: "/d/root.raw".into(),
                read_only: false,
            }],
            Path::new("/run/keel/vms/a"),
            128,
            1,
        );
        let host = Host {
            root: "/run/keel/jail/a".into(),
            cgroup_procs: 9,
            device_numbers: vec![1, 2, 3],
            stdio: [5, 6, 7],
            cap_last_cap: 40,
        };
        let argv = [
            "keel-vmm".to_string(),
            "--config".into(),
            "/run/vm/vm.json".into(),
        ];
        plan(&spec, &host, &argv)
            .unwrap()
            .iter()
            .map(|s| match s {
                Step::Mount { flags, .. } => format!("{s} {flags:#x}"),
                Step::Exec(_, args) => format!("{s} {args:?}"),
                _ => s.to_string(),
            })
            .collect()
    }

    #[test]
    fn the_plan_builds_a_minimal_root_then_drops_everything() {
        let ro_noexec = BIND_FLAGS | libc::MS_RDONLY | libc::MS_NOEXEC;
        let want = [
            "join the VM's cgroup".to_string(),
            format!("unshare namespaces {:#x}", libc::CLONE_NEWCGROUP),
            "start a session".into(),
            format!(
                "change mount flags of / {:#x}",
                libc::MS_REC | libc::MS_PRIVATE
            ),
            format!("mount tmpfs on /run/keel/jail/a {:#x}", libc::MS_NOSUID),
            "create directory /run/keel/jail/a/bin".into(),
            "create /run/keel/jail/a/bin/keel-vmm".into(),
            format!(
                "mount /usr/bin/keel-vmm on /run/keel/jail/a/bin/keel-vmm {:#x}",
                libc::MS_BIND
            ),
            format!(
                "change mount flags of /run/keel/jail/a/bin/keel-vmm {:#x}",
                BIND_FLAGS | libc::MS_RDONLY
            ),
            "create directory /run/keel/jail/a/vm".into(),
            "create /run/keel/jail/a/vm/kernel".into(),
            format!(
                "mount /k/vmlinuz on /run/keel/jail/a/vm/kernel {:#x}",
                libc::MS_BIND
            ),
            format!("change mount flags of /run/keel/jail/a/vm/kernel {ro_noexec:#x}"),
            "create /run/keel/jail/a/vm/disk0".into(),
            format!(
                "mount /d/root.raw on /run/keel/jail/a/vm/disk0 {:#x}",
                libc::MS_BIND
            ),
            format!(
                "change mount flags of /run/keel/jail/a/vm/disk0 {:#x}",
                BIND_FLAGS | libc::MS_NOEXEC
            ),
            "create directory /run/keel/jail/a/run".into(),
            "create directory /run/keel/jail/a/run/vm".into(),
            format!(
                "mount /run/keel/vms/a on /run/keel/jail/a/run/vm {:#x}",
                libc::MS_BIND
            ),
            format!(
                "change mount flags of /run/keel/jail/a/run/vm {:#x}",
                BIND_FLAGS | libc::MS_NOEXEC
            ),
            "create directory /run/keel/jail/a/dev".into(),
            "create device node /run/keel/jail/a/dev/kvm".into(),
            "chown /run/keel/jail/a/dev/kvm to 1000:1001".into(),
            "create directory /run/keel/jail/a/dev/net".into(),
            "create device node /run/keel/jail/a/dev/net/tun".into(),
            "chown /run/keel/jail/a/dev/net/tun to 1000:1001".into(),
            "create device node /run/keel/jail/a/dev/urandom".into(),
            "chown /run/keel/jail/a/dev/urandom to 1000:1001".into(),
            "pivot_root into /run/keel/jail/a".into(),
            format!(
                "change mount flags of / {:#x}",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID
            ),
            "set host name a".into(),
            format!("set rlimit {} to 2048", libc::RLIMIT_NOFILE),
            format!("set rlimit {} to {}", libc::RLIMIT_FSIZE, 64u64 << 20),
            format!("set rlimit {} to 17", libc::RLIMIT_NPROC),
            format!("set rlimit {} to 0", libc::RLIMIT_CORE),
            "set up standard descriptors".into(),
            "reset signals".into(),
            "drop the capability bounding set".into(),
            "switch to uid 1000 gid 1001".into(),
            "clear capabilities".into(),
            "set no_new_privs".into(),
            "close inherited descriptors".into(),
            "exec /bin/keel-vmm [\"/bin/keel-vmm\", \"--config\", \"/run/vm/vm.json\"]".into(),
        ];
        assert_eq!(plan_text(), want);
    }

    #[test]
    fn ancestors_come_top_down() {
        assert_eq!(
            ancestors_top_down(Path::new("/a/b/c")),
            vec![PathBuf::from("/a"), "/a/b".into(), "/a/b/c".into()]
        );
        assert!(ancestors_top_down(Path::new("/")).is_empty());
    }
}
