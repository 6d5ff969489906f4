//! What a jail holds: the VM's identity, the files and device nodes it may reach, its limits; and
//! where each host path appears inside the jail.

use std::path::{Component, Path, PathBuf};

use super::cgroup::CgroupLimits;
use super::JailError;

/// Where the jailed program sees its sockets directory.
pub const JAIL_SOCKETS_DIR: &str = "/run/vm";
/// Where the jailed program sees its kernel, initrd and disks.
pub const JAIL_VM_DIR: &str = "/vm";
/// Where the jailed program itself is bound.
pub const JAIL_BIN_DIR: &str = "/bin";

/// The device nodes keel-vmm needs: KVM, TAP devices, and a random source.
pub const VMM_DEVICES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/urandom"];

/// A host file made visible inside the jail (bind-mounted onto `jail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub host: PathBuf,
    /// Absolute path inside the jail.
    pub jail: PathBuf,
    pub read_only: bool,
    /// Mapped executable (a dynamically linked program's libraries); VM files never are.
    pub executable: bool,
}

/// A disk image for the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A resource limit set (soft = hard) in the jailed process before it execs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// Open file descriptors.
    NoFile(u64),
    /// Largest file the process may write (bytes).
    FileSize(u64),
    /// Processes and threads of the jail's uid.
    Processes(u64),
    /// Core dump size (bytes); 0 keeps guest memory out of core files.
    Core(u64),
}

impl Rlimit {
    pub fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            Rlimit::NoFile(_) => libc::RLIMIT_NOFILE,
            Rlimit::FileSize(_) => libc::RLIMIT_FSIZE,
            Rlimit::Processes(_) => libc::RLIMIT_NPROC,
            Rlimit::Core(_) => libc::RLIMIT_CORE,
        }
    }

    pub fn value(self) -> u64 {
        match self {
            Rlimit::NoFile(v) | Rlimit::FileSize(v) | Rlimit::Processes(v) | Rlimit::Core(v) => v,
        }
    }
}

/// Everything `Jailer::spawn` needs to box one process in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// Names the cgroup (`vm-<id>`) and the jail root; `[A-Za-z0-9_-]`, 1 to 64 characters.
    pub vm_id: String,
    /// The unprivileged ids the process runs as (never 0; one pair per VM).
    pub uid: u32,
    pub gid: u32,
    /// The program to exec (host path); bound read-only at `/bin/<file name>`.
    pub program: PathBuf,
    /// Host files bound into the jail.
    pub files: Vec<Expose>,
    /// Host directory bound writable at `/run/vm` (created owned by uid:gid, mode 0700): the API
    /// and console sockets live here, reachable from the host.
    pub sockets_dir: PathBuf,
    /// Character devices recreated in the jail (same path, owned by uid:gid, mode 0600).
    pub devices: Vec<PathBuf>,
    pub rlimits: Vec<Rlimit>,
    pub cgroup: CgroupLimits,
    /// Mount a /proc of the jail's own PID namespace (nosuid, nodev, noexec).
    pub proc: bool,
}

/// File size limit when no writable disk is larger: room for a console log.
const MIN_FILE_SIZE: u64 = 64 << 20;
/// Descriptors keel-vmm may hold: its disks, sockets, eventfds and KVM fds fit easily.
const VMM_NOFILE: u64 = 2048;

impl JailSpec {
    /// The jail of one keel-vmm: kernel at `/vm/kernel`, initrd at `/vm/initrd`, disks at
    /// `/vm/disk<N>`, sockets under `/run/vm`, the VMM devices, limits sized from the VM.
    #[allow(clippy::too_many_arguments)]
    pub fn for_vmm(
        vm_id: &str,
        uid: u32,
        gid: u32,
        vmm: &Path,
        kernel: &Path,
        initrd: Option<&Path>,
        disks: &[Disk],
        sockets_dir: &Path,
        memory_mib: u64,
        vcpus: u32,
    ) -> JailSpec {
        let vm = Path::new(JAIL_VM_DIR);
        let mut files = vec![Expose {
            host: kernel.to_path_buf(),
            jail: vm.join("kernel"),
            read_only: true,
            executable: false,
        }];
        files.extend(initrd.map(|initrd| Expose {
            host: initrd.to_path_buf(),
            jail: vm.join("initrd"),
            read_only: true,
            executable: false,
        }));
        files.extend(disks.iter().enumerate().map(|(i, disk)| Expose {
            host: disk.path.clone(),
            jail: vm.join(format!("disk{i}")),
            read_only: disk.read_only,
            executable: false,
        }));
        let cgroup = CgroupLimits::for_vm(memory_mib, vcpus);
        let largest_disk = disks
            .iter()
            .filter(|d| !d.read_only)
            .filter_map(|d| std::fs::metadata(&d.path).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        JailSpec {
            vm_id: vm_id.to_string(),
            uid,
            gid,
            program: vmm.to_path_buf(),
            files,
            sockets_dir: sockets_dir.to_path_buf(),
            devices: VMM_DEVICES.iter().map(PathBuf::from).collect(),
            rlimits: vec![
                Rlimit::NoFile(VMM_NOFILE),
                Rlimit::FileSize(largest_disk.max(MIN_FILE_SIZE)),
                Rlimit::Processes(cgroup.pids_max.unwrap_or(u64::MAX)),
                Rlimit::Core(0),
            ],
            cgroup,
            proc: false,
        }
    }

    /// Where the program is bound inside the jail.
    pub fn program_in_jail(&self) -> PathBuf {
        let name = self
            .program
            .file_name()
            .map_or_else(|| "program".into(), |n| n.to_os_string());
        Path::new(JAIL_BIN_DIR).join(name)
    }

    /// The path inside the jail at which `host` is visible: an exposed file, the program, a device,
    /// or anything under the sockets directory. `None` when the jail does not hold it. The agent
    /// writes vm.json with these paths.
    pub fn jail_path(&self, host: &Path) -> Option<PathBuf> {
        if host == self.program {
            return Some(self.program_in_jail());
        }
        if let Some(file) = self.files.iter().find(|f| f.host == host) {
            return Some(file.jail.clone());
        }
        if self.devices.iter().any(|d| d == host) {
            return Some(host.to_path_buf());
        }
        let rest = host.strip_prefix(&self.sockets_dir).ok()?;
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        Some(Path::new(JAIL_SOCKETS_DIR).join(rest))
    }

    /// Refuses a spec that would give a jail root's powers, collide, or escape its root.
    pub fn validate(&self) -> Result<(), JailError> {
        let id_ok = (1..=64).contains(&self.vm_id.len())
            && self
                .vm_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(JailError::BadVmId(self.vm_id.clone()));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(JailError::RootIds(self.uid, self.gid));
        }
        let mut taken = vec![self.program_in_jail(), PathBuf::from(JAIL_SOCKETS_DIR)];
        if self.proc {
            taken.push(PathBuf::from("/proc"));
        }
        for host in std::iter::once(&self.program)
            .chain(self.files.iter().map(|f| &f.host))
            .chain(std::iter::once(&self.sockets_dir))
            .chain(&self.devices)
        {
            if !host.is_absolute() {
                return Err(JailError::RelativePath(host.clone()));
            }
        }
        for jail in self
            .files
            .iter()
            .map(|f| &f.jail)
            .chain(self.devices.iter())
        {
            if !is_clean_absolute(jail) || jail == Path::new("/") {
                return Err(JailError::BadJailPath(jail.clone()));
            }
            // Neither the same path twice nor a file under another file's path.
            if let Some(other) = taken
                .iter()
                .find(|t| t.starts_with(jail) || jail.starts_with(t))
            {
                return Err(JailError::JailPathClash(jail.clone(), other.clone()));
            }
            taken.push(jail.clone());
        }
        if let Some(limit) = self
            .rlimits
            .iter()
            .find(|r| r.value() == 0 && !matches!(r, Rlimit::Core(_)))
        {
            return Err(JailError::ZeroRlimit(*limit));
        }
        self.cgroup.validate()
    }
}

/// Absolute, and made of plain names only (no `.`, `..`).
fn is_clean_absolute(path: &Path) -> bool {
    let mut components = path.components();
    components.next() == Some(Component::RootDir)
        && components.all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec::for_vmm(
            "vm-a",
            1000,
            1000,
            Path::new("/usr/bin/keel-vmm"),
            Path::new("/var/lib/keel/k/vmlinuz"),
            Some(Path::new("/var/lib/keel/k/initrd.img")),
            &[
                Disk {
                    path: "/var/lib/keel/d/root.raw".into(),
                    read_only: false,
                },
                Disk {
                    path: "/var/lib/keel/d/seed.iso".into(),
                    read_only: true,
                },
            ],
            Path::new("/run/keel/vms/a"),
            512,
            2,
        )
    }

    #[test]
    fn host_paths_map_into_the_jail() {
        let spec = spec();
        let cases: &[(&str, Option<&str>)] = &[
            ("/usr/bin/keel-vmm", Some("/bin/keel-vmm")),
            ("/var/lib/keel/k/vmlinuz", Some("/vm/kernel")),
            ("/var/lib/keel/k/initrd.img", Some("/vm/initrd")),
            ("/var/lib/keel/d/root.raw", Some("/vm/disk0")),
            ("/var/lib/keel/d/seed.iso", Some("/vm/disk1")),
            ("/dev/kvm", Some("/dev/kvm")),
            ("/run/keel/vms/a/api.sock", Some("/run/vm/api.sock")),
            ("/run/keel/vms/a", Some("/run/vm")),
            ("/run/keel/vms/a/../b/api.sock", None),
            ("/run/keel/vms/b/api.sock", None),
            ("/etc/passwd", None),
            ("/dev/mem", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                spec.jail_path(Path::new(host)),
                want.map(PathBuf::from),
                "{host}"
            );
        }
    }

    #[test]
    fn vmm_spec_is_valid_and_sized_from_the_vm() {
        let spec = spec();
        spec.validate().unwrap();
        assert!(spec.files[3].read_only);
        assert!(!spec.files[2].read_only);
        assert!(spec.rlimits.contains(&Rlimit::NoFile(VMM_NOFILE)));
        assert!(spec.rlimits.contains(&Rlimit::FileSize(MIN_FILE_SIZE)));
        assert!(spec.rlimits.contains(&Rlimit::Core(0)));
        assert_eq!(spec.cgroup, CgroupLimits::for_vm(512, 2));
    }

    #[test]
    fn bad_specs_are_refused_naming_the_value() {
        type Edit = fn(&mut JailSpec);
        let cases: &[(Edit, &str)] = &[
            (|s| s.vm_id = String::new(), "VM id \"\""),
            (|s| s.vm_id = "../x".into(), "VM id \"../x\""),
            (|s| s.vm_id = "a".repeat(65), "VM id"),
            (|s| s.uid = 0, "uid 0"),
            (|s| s.gid = 0, "gid 0"),
            (|s| s.files[0].host = "vmlinuz".into(), "vmlinuz"),
            (|s| s.files[0].jail = "/vm/../etc/x".into(), "/vm/../etc/x"),
            (|s| s.files[0].jail = "vm/kernel".into(), "vm/kernel"),
            (|s| s.files[1].jail = "/vm/kernel".into(), "/vm/kernel"),
            (|s| s.files[1].jail = "/vm/kernel/x".into(), "/vm/kernel/x"),
            (|s| s.files[1].jail = "/run/vm/x".into(), "/run/vm/x"),
            (
                |s| s.files[1].jail = "/bin/keel-vmm".into(),
                "/bin/keel-vmm",
            ),
            (|s| s.devices.push("dev/kvm".into()), "dev/kvm"),
            (|s| s.sockets_dir = "run".into(), "run"),
            (|s| s.rlimits.push(Rlimit::NoFile(0)), "NoFile(0)"),
            (|s| s.cgroup.pids_max = Some(0), "pids.max"),
        ];
        for (edit, needle) in cases {
            let mut spec = spec();
            edit(&mut spec);
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
    }
}
