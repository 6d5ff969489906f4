//! How the agent starts one keel-vmm: in a jail of its own (`crate::jail`, docs/hardening.md),
//! or, for in-process tests whose stand-in VMMs are shell scripts, as a plain child.
//!
//! Per VM, `<run_dir>/<name>/` belongs to the agent (root, 0700): `vm.json`, `vmm.log`, `pid`.
//! Only its `sock/` subdirectory is the jail's (owned by the VM's uid, bind-mounted writable at
//! `/run/vm`): keel-vmm makes `api.sock` and `console.sock` there, and the agent reaches them
//! from the host. Nothing the agent writes or opens for writing is in a directory the VMM can
//! write, so a compromised VMM cannot plant a symlink for the agent to follow; the sockets are
//! opened with [`connect`], which refuses anything but a socket.

use super::api::VmJail;
use super::taps;
use super::vm_devices::{self, VmDevices};
use super::vms::VmError;
use crate::jail::{CgroupEvents, CgroupLimits, Disk, Expose, JailSpec, JailStdio, Jailed, Jailer};
use keel_api::limits::LimitError;
use keel_api::vmm::{DiskConfig, NicConfig, SerialConfig, VmConfig};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The jail's writable directory under a VM's run directory.
pub const SOCK_DIR: &str = "sock";
/// Where the jailed VMM reads its configuration (a read-only bind of `<dir>/vm.json`).
pub const CONFIG_IN_JAIL: &str = "/vm/vm.json";
/// Jailed VMMs run as uid = gid = `VM_UID_BASE + n`, the lowest `n` no running VM holds: far
/// above any system or login account, and never shared by two running VMs.
pub const VM_UID_BASE: u32 = 100_000;
pub const VM_UID_COUNT: u32 = 65_536;

/// The lowest jail uid that no running VM holds.
pub fn free_uid(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let used: Vec<u32> = used.into_iter().collect();
    (VM_UID_BASE..VM_UID_BASE + VM_UID_COUNT).find(|uid| !used.contains(uid))
}

/// Whether `uid` is one the agent gives jailed VMMs.
pub fn is_vm_uid(uid: u32) -> bool {
    (VM_UID_BASE..VM_UID_BASE + VM_UID_COUNT).contains(&uid)
}

/// Connects to a keel-vmm socket without following a symlink in its place: the path is opened
/// `O_PATH | O_NOFOLLOW`, checked to be a socket, and connected through `/proc/self/fd`, so the
/// socket connected to is the one checked.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket", path.display()),
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// What one keel-vmm run needs (host paths).
#[derive(Debug, Clone)]
pub struct VmRun<'a> {
    pub name: &'a str,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Disks and NICs, with host paths (`vm_devices::vmm_config`).
    pub devices: &'a VmDevices,
    /// The VM's run directory, `<run_dir>/<name>`.
    pub dir: &'a Path,
    /// The jail's uid and gid.
    pub uid: u32,
}

/// A started keel-vmm.
#[derive(Debug)]
pub enum Process {
    Jailed(Jailed),
    Child(Child),
}

impl Process {
    pub fn pid(&self) -> u32 {
        match self {
            Process::Jailed(j) => j.pid(),
            Process::Child(c) => c.id(),
        }
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Process::Jailed(j) => j.wait(),
            Process::Child(c) => c.wait(),
        }
    }

    /// Its exit status if it has exited (reaped then), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Process::Jailed(j) => j.try_wait(),
            Process::Child(c) => c.try_wait(),
        }
    }

    /// Kills and reaps it (a start that failed half-way).
    pub fn kill(&mut self) {
        match self {
            Process::Jailed(j) => {
                let _ = j.signal(libc::SIGKILL);
            }
            Process::Child(c) => {
                let _ = c.kill();
            }
        }
        let _ = self.wait();
    }
}

/// A keel-vmm just started, and where the agent reaches it.
#[derive(Debug)]
pub struct Launched {
    pub process: Process,
    pub api_sock: PathBuf,
    pub console_sock: PathBuf,
    pub jail: Option<VmJail>,
}

/// The sockets of the VM whose run directory is `dir`.
pub fn sockets(dir: &Path) -> (PathBuf, PathBuf) {
    let sock = dir.join(SOCK_DIR);
    (sock.join("api.sock"), sock.join("console.sock"))
}

/// What the status reports about VM `name`'s jail: its uid and cgroup limits.
pub fn jail_info(jailer: &Jailer, name: &str, uid: u32, limits: &CgroupLimits) -> VmJail {
    VmJail {
        uid,
        cgroup: jailer.cgroup_dir(name).display().to_string(),
        memory_max: limits.memory_max,
        cpu_weight: limits.cpu_weight,
        pids_max: limits.pids_max,
        events: CgroupEvents::default(),
    }
}

/// The disks of `devices`, as the jail binds them.
fn disks_of(devices: &VmDevices) -> Vec<Disk> {
    devices
        .disks
        .iter()
        .map(|d| Disk {
            path: d.path.clone(),
            read_only: d.read_only,
        })
        .collect()
}

/// The jail of a VM run: only its kernel, initrd, disks, configuration and sockets; /dev/kvm, a
/// random source, and /dev/net/tun when it has NICs.
pub fn jail_spec(vmm: &Path, run: &VmRun) -> JailSpec {
    let mut spec = JailSpec::for_vmm(
        run.name,
        run.uid,
        run.uid,
        vmm,
        run.kernel,
        run.initrd,
        &disks_of(run.devices),
        &run.dir.join(SOCK_DIR),
        run.memory_mib,
        run.vcpus.into(),
    );
    if run.devices.nics.is_empty() {
        spec.devices.retain(|d| d != Path::new("/dev/net/tun"));
    }
    spec
}

/// The taps of VM `name`'s `nics` NICs, in order.
pub fn tap_names(name: &str, nics: usize) -> Vec<String> {
    (0..nics).map(|i| vm_devices::tap_name(name, i)).collect()
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VmError + 'a {
    move |e| VmError::Io(op, path.to_path_buf(), e)
}

/// keel-vmm's configuration, naming files as `map` says the VMM sees them. A `jailed` VMM gets
/// its taps made and bridged by the agent, so its NICs name no bridge.
fn config(run: &VmRun, map: &dyn Fn(&Path) -> PathBuf, jailed: bool) -> Result<VmConfig, VmError> {
    let (_, console_sock) = sockets(run.dir);
    // Checked at define; a definition stored by an older agent could still hold more.
    let memory_mib = u32::try_from(run.memory_mib)
        .map_err(|_| VmError::Invalid(LimitError::MemoryTooLarge(run.memory_mib).to_string()))?;
    Ok(VmConfig {
        vcpus: run.vcpus,
        memory_mib,
        kernel: map(run.kernel),
        initrd: run.initrd.map(map),
        cmdline: run.cmdline.to_owned(),
        serial: SerialConfig::Socket {
            path: map(&console_sock),
        },
        disks: run
            .devices
            .disks
            .iter()
            .map(|d| DiskConfig {
                path: map(&d.path),
                ..d.clone()
            })
            .collect(),
        nics: run
            .devices
            .nics
            .iter()
            .map(|n| NicConfig {
                tap: Some(n.tap.clone()),
                mac: n.mac,
                bridge: (!jailed).then(|| n.bridge.clone()),
            })
            .collect(),
        rng: true,
    })
}

/// The line the agent writes to `vmm.log` before each run, so that what a run logged can be told
/// from what earlier runs did.
pub const RUN_MARK: &str = "keel-agent: keel-vmm starting";

/// What `vmm.log` says of how its last run ended, for a keel-vmm that is not the agent's child
/// (taken back after an agent restart, so no wait status): the exit status keel-vmm logged when
/// it stopped the VM, and the run's last line.
pub fn logged_exit(log: &str) -> (Option<i32>, Option<String>) {
    let run = log.rsplit_once(RUN_MARK).map_or(log, |(_, after)| after);
    let status = run.lines().rev().find_map(|line| {
        let (_, code) = line
            .strip_prefix("keel-vmm: VM stopped: ")?
            .rsplit_once("(exit status ")?;
        code.strip_suffix(')')?.parse().ok()
    });
    let last = run
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(String::from);
    (status, last)
}

/// Writes `vm.json`, opens `vmm.log` and starts keel-vmm: jailed when `jailer` is given (the
/// agent on a host), else as a plain child in a process group of its own.
pub fn launch(jailer: Option<&Jailer>, vmm: &Path, run: &VmRun) -> Result<Launched, VmError> {
    let dir = run.dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create", dir))?;
    let (api_sock, console_sock) = sockets(dir);
    for stale in [&api_sock, &console_sock] {
        let _ = fs::remove_file(stale);
    }
    let spec = jailer.map(|_| jail_spec(vmm, run));
    let map = |p: &Path| {
        spec.as_ref()
            .and_then(|s| s.jail_path(p))
            .unwrap_or_else(|| p.to_path_buf())
    };
    let config_path = dir.join("vm.json");
    write_config(&config_path, &config(run, &map, spec.is_some())?)?;
    let log_path = dir.join("vmm.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io_err("open", &log_path))?;
    (&log)
        .write_all(format!("{RUN_MARK}\n").as_bytes())
        .map_err(io_err("write", &log_path))?;
    let log2 = log.try_clone().map_err(io_err("open", &log_path))?;
    let config_arg = if spec.is_some() {
        PathBuf::from(CONFIG_IN_JAIL)
    } else {
        config_path.clone()
    };
    let argv = [
        "keel-vmm".to_string(),
        "--config".into(),
        config_arg.display().to_string(),
        "--api-sock".into(),
        map(&api_sock).display().to_string(),
    ];
    let (process, jail) = match (jailer, spec) {
        (Some(jailer), Some(mut spec)) => {
            spec.files.push(Expose {
                host: config_path,
                jail: CONFIG_IN_JAIL.into(),
                read_only: true,
                executable: false,
            });
            give_files(run)?;
            // A group, mount point or taps left by a run the agent lost track of.
            jailer.cleanup(run.name)?;
            let taps = make_taps(run)?;
            let stdio = JailStdio {
                stdin: None,
                stdout: Some(OwnedFd::from(log)),
                stderr: Some(OwnedFd::from(log2)),
            };
            let jailed = match jailer.spawn(&spec, &argv, stdio) {
                Ok(jailed) => jailed,
                Err(e) => {
                    taps.iter().for_each(|t| taps::remove(t));
                    return Err(e.into());
                }
            };
            let info = jail_info(jailer, run.name, run.uid, &spec.cgroup);
            (Process::Jailed(jailed), Some(info))
        }
        _ => (spawn_child(vmm, &argv, dir, log, log2)?, None),
    };
    Ok(Launched {
        process,
        api_sock,
        console_sock,
        jail,
    })
}

fn write_config(path: &Path, config: &VmConfig) -> Result<(), VmError> {
    let json = serde_json::to_vec(config)
        .map_err(|e| VmError::Io("encode", path.to_path_buf(), io::Error::other(e)))?;
    // Readable by the jailed VMM through its read-only bind mount; it holds no secret.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err("write", path))?;
    io::Write::write_all(&mut file, &json)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o644)))
        .map_err(io_err("write", path))
}

/// Makes the VM's files usable by its uid through the jail's bind mounts: kernel, initrd and
/// read-only disks readable (0644), writable disks owned by the VM (0600).
fn give_files(run: &VmRun) -> Result<(), VmError> {
    readable_by_all(run.kernel)?;
    if let Some(initrd) = run.initrd {
        readable_by_all(initrd)?;
    }
    for disk in &disks_of(run.devices) {
        if disk.read_only {
            readable_by_all(&disk.path)?;
        } else {
            std::os::unix::fs::chown(&disk.path, Some(run.uid), Some(run.uid))
                .and_then(|()| fs::set_permissions(&disk.path, fs::Permissions::from_mode(0o600)))
                .map_err(io_err("give to the VM", &disk.path))?;
        }
    }
    Ok(())
}

/// Loads tun and makes the VM's taps (none without NICs); on failure none is left.
fn make_taps(run: &VmRun) -> Result<Vec<String>, VmError> {
    let nics = &run.devices.nics;
    if nics.is_empty() {
        return Ok(Vec::new());
    }
    vm_devices::ensure_tun().map_err(taps::TapError::Module)?;
    let mut made: Vec<String> = Vec::new();
    for nic in nics {
        let created = taps::create(
            &nic.tap,
            taps::host_side_mac(nic.mac),
            run.uid,
            run.uid,
            &nic.bridge,
        );
        if let Err(e) = created {
            made.iter().for_each(|t| taps::remove(t));
            return Err(e.into());
        }
        made.push(nic.tap.clone());
    }
    Ok(made)
}

/// Store images are 0600; the jailed VMM reads kernel and initrd through a bind mount, so they
/// become 0644 (the store's directories keep them from anyone else on the host).
fn readable_by_all(path: &Path) -> Result<(), VmError> {
    let meta = fs::metadata(path).map_err(io_err("read", path))?;
    if meta.permissions().mode() & 0o004 == 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", path))?;
    }
    Ok(())
}

fn spawn_child(
    vmm: &Path,
    argv: &[String],
    dir: &Path,
    log: File,
    log2: File,
) -> Result<Process, VmError> {
    let sock = dir.join(SOCK_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&sock)
        .map_err(io_err("create", &sock))?;
    let child = Command::new(vmm)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: signals for the agent's group (a restart) do not reach it.
        .process_group(0)
        .spawn()
        .map_err(io_err("start", vmm))?;
    Ok(Process::Child(child))
}

/// After a jailed run ended: its final limit counters, then its cgroup, mount point and `taps`
/// removed. Problems are logged, not fatal: the next start cleans up again.
pub fn finish(jailer: &Jailer, name: &str, taps: &[String]) -> Option<CgroupEvents> {
    taps.iter().for_each(|t| taps::remove(t));
    let events = jailer
        .cgroup_events(name)
        .map_err(|e| log::warn!("keel-agent: VM {name}: {e}"))
        .ok();
    if let Err(e) = jailer.cleanup(name) {
        log::warn!("keel-agent: VM {name}: {e}");
    }
    events
}

/// A log line naming the limits a VM hit since `before`, if any.
pub fn limit_report(name: &str, before: &CgroupEvents, now: &CgroupEvents) -> Option<String> {
    let counters = [
        ("memory.max reached", before.memory_max, now.memory_max),
        ("OOM", before.oom, now.oom),
        ("OOM kills", before.oom_kill, now.oom_kill),
        ("pids.max refusals", before.pids_max, now.pids_max),
    ];
    let hit: Vec<String> = counters
        .iter()
        .filter(|(_, b, n)| n > b)
        .map(|(what, _, n)| format!("{what} {n}"))
        .collect();
    (!hit.is_empty()).then(|| format!("keel-agent: VM {name} hit its limits: {}", hit.join(", ")))
}

/// The uid a process runs as (real uid, from /proc).
pub fn process_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::vm_devices::{DiskDevice, NicDevice};
    use super::*;
    use crate::sys::atomic::testdir::TestDir;
    use std::os::unix::net::UnixListener;

    #[test]
    fn uids_are_the_lowest_free_in_the_range() {
        let cases: [(&[u32], Option<u32>); 4] = [
            (&[], Some(VM_UID_BASE)),
            (&[VM_UID_BASE], Some(VM_UID_BASE + 1)),
            (&[VM_UID_BASE + 1, 5], Some(VM_UID_BASE)),
            (&[VM_UID_BASE, VM_UID_BASE + 1], Some(VM_UID_BASE + 2)),
        ];
        for (used, want) in cases {
            assert_eq!(free_uid(used.iter().copied()), want, "{used:?}");
        }
        assert_eq!(free_uid(VM_UID_BASE..VM_UID_BASE + VM_UID_COUNT), None);
        assert!(is_vm_uid(VM_UID_BASE) && !is_vm_uid(0) && !is_vm_uid(VM_UID_BASE - 1));
    }

    #[test]
    fn connect_refuses_a_symlink_in_place_of_the_socket() {
        let dir = TestDir::new("launch-connect");
        let real = dir.path().join("real.sock");
        let _listener = UnixListener::bind(&real).unwrap();
        let link = dir.path().join("api.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(connect(&real).is_ok());
        assert!(connect(&link).is_err(), "followed a symlink");
        let err = connect(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert!(connect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_last_run_in_vmm_log_tells_how_it_ended() {
        let earlier = format!("{RUN_MARK}\nkeel-vmm: VM stopped: GuestPowerOff (exit status 0)\n");
        let cases: Vec<(String, Option<i32>, Option<&str>)> = vec![
            (String::new(), None, None),
            (
                format!("{earlier}{RUN_MARK}\nkeel-vmm: VM stopped: GuestReboot (exit status 3)\n"),
                Some(3),
                Some("keel-vmm: VM stopped: GuestReboot (exit status 3)"),
            ),
            // Killed: no status of its own, and the earlier run's does not count.
            (
                format!("{earlier}{RUN_MARK}\nkeel-vmm: boot time: 12 us\n\n"),
                None,
                Some("keel-vmm: boot time: 12 us"),
            ),
            (
                format!("{RUN_MARK}\nkeel-vmm: VM stopped: X (exit status x)\n"),
                None,
                Some("keel-vmm: VM stopped: X (exit status x)"),
            ),
        ];
        for (log, status, last) in cases {
            assert_eq!(
                logged_exit(&log),
                (status, last.map(String::from)),
                "{log:?}"
            );
        }
    }

    #[test]
    fn the_jail_holds_the_vm_files_and_the_config_names_them_inside() {
        let devices = VmDevices {
            disks: vec![
                DiskDevice {
                    path: "/data/copies/g1/disk0.img".into(),
                    read_only: false,
                    serial: None,
                    direct: false,
                },
                DiskDevice {
                    path: "/data/disk/seed".into(),
                    read_only: true,
                    serial: Some("seed".into()),
                    direct: false,
                },
            ],
            nics: vec![NicDevice {
                tap: "kt01234567n0".into(),
                mac: "52:54:00:12:34:56".parse().unwrap(),
                bridge: "keelbr0".into(),
            }],
        };
        let run = VmRun {
            name: "g1",
            vcpus: 2,
            memory_mib: 256,
            kernel: Path::new("/data/kernel/vmlinuz"),
            initrd: Some(Path::new("/data/initrd/initrd.img")),
            cmdline: "console=ttyS0",
            devices: &devices,
            dir: Path::new("/run/keel/vms/g1"),
            uid: VM_UID_BASE + 3,
        };
        let spec = jail_spec(Path::new("/usr/bin/keel-vmm"), &run);
        spec.validate().unwrap();
        assert_eq!(spec.uid, VM_UID_BASE + 3);
        assert_eq!(spec.sockets_dir, PathBuf::from("/run/keel/vms/g1/sock"));
        assert_eq!(
            spec.devices,
            vec![
                PathBuf::from("/dev/kvm"),
                "/dev/net/tun".into(),
                "/dev/urandom".into()
            ]
        );
        let without = VmDevices::default();
        let no_nics = VmRun {
            devices: &without,
            ..run.clone()
        };
        assert!(!jail_spec(Path::new("/usr/bin/keel-vmm"), &no_nics)
            .devices
            .contains(&PathBuf::from("/dev/net/tun")));
        assert_eq!(spec.cgroup.memory_max, Some((256 + 64 + 4) << 20));
        let map = |p: &Path| spec.jail_path(p).unwrap_or_else(|| p.to_path_buf());
        let config = serde_json::to_value(config(&run, &map, true).unwrap()).unwrap();
        assert_eq!(
            config["disks"],
            serde_json::json!([
                {"path": "/vm/disk0", "read_only": false},
                {"path": "/vm/disk1", "read_only": true, "serial": "seed"}
            ])
        );
        assert_eq!(
            config["nics"],
            serde_json::json!([{"tap": "kt01234567n0", "mac": "52:54:00:12:34:56"}])
        );
        assert_eq!(config["rng"], true);
        assert_eq!(config["kernel"], "/vm/kernel");
        assert_eq!(config["initrd"], "/vm/initrd");
        assert_eq!(config["serial"]["path"], "/run/vm/console.sock");
        assert_eq!(config["memory_mib"], 256);
        let direct = config_of_direct(&run);
        assert_eq!(
            direct["serial"]["path"],
            "/run/keel/vms/g1/sock/console.sock"
        );
        assert_eq!(direct["disks"][0]["path"], "/data/copies/g1/disk0.img");
        assert_eq!(direct["nics"][0]["bridge"], "keelbr0");
    }

    fn config_of_direct(run: &VmRun) -> serde_json::Value {
        serde_json::to_value(config(run, &|p: &Path| p.to_path_buf(), false).unwrap()).unwrap()
    }

    #[test]
    fn limit_reports_name_what_grew() {
        let before = CgroupEvents::default();
        let now = CgroupEvents {
            memory_max: 4,
            oom_kill: 1,
            ..CgroupEvents::default()
        };
        assert_eq!(
            limit_report("g1", &before, &now).unwrap(),
            "keel-agent: VM g1 hit its limits: memory.max reached 4, OOM kills 1"
        );
        assert_eq!(limit_report("g1", &now, &now), None);
        assert_eq!(process_uid(std::process::id()), Some(my_uid()));
    }

    fn my_uid() -> u32 {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    }
}
