//! Mounting, moving and (at shutdown) unmounting file systems.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::syscall::{check, cpath};

/// A mount PID 1 makes.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    pub source: &'static str,
    /// Path relative to the root the mount is made under (no leading '/').
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The kernel API file systems stage 1 mounts (and stage 2 makes sure of).
pub const API: [MountSpec; 3] = [
    MountSpec {
        source: "proc",
        target: "proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
];

/// The writable RAM file systems over the read-only root image.
pub const SCRATCH: [MountSpec; 3] = [
    MountSpec {
        source: "tmpfs",
        target: "run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
    MountSpec {
        source: "tmpfs",
        target: "tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    MountSpec {
        source: "tmpfs",
        target: "var",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
];

/// What stage 2 adds on top of the API file systems.
pub const STAGE2: [MountSpec; 3] = [
    MountSpec {
        source: "cgroup2",
        target: "sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        // favordynmods: cheaper cgroup migrations when VMs start (Firecracker's host guide).
        data: "nsdelegate,favordynmods",
    },
    MountSpec {
        source: "devpts",
        target: "dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "mode=0620,ptmxmode=0666",
    },
    MountSpec {
        source: "tmpfs",
        target: "dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Cannot create mount point {0}: {1}
    #[error("cannot create mount point {0}: {1}")]
    MountPoint(PathBuf, std::io::Error),
    /// Cannot mount {fstype} {source_name} on {target}: {err}
    #[error("cannot mount {fstype} {source_name} on {target}: {err}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        err: std::io::Error,
    },
    /// Cannot move mount {0} to {1}: {2}
    #[error("cannot move mount {0} to {1}: {2}")]
    Move(PathBuf, PathBuf, std::io::Error),
}

/// True if `path` is the root of a mount (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(me), Ok(up)) => me.dev() != up.dev() || me.ino() == up.ino(),
        _ => false,
    }
}

fn raw_mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let to_c = |s: &str| cpath(Path::new(s));
    let src = to_c(source)?;
    let tgt = cpath(target)?;
    let fs: Option<CString> = fstype.map(to_c).transpose()?;
    let dat = to_c(data)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call (or null for
    // the file system type of a move).
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    })
    .map(|_| ())
}

/// Mounts `spec` under `root`, creating the mount point if the parent is writable. A target that
/// is already a mount point is left alone.
pub fn ensure(spec: &MountSpec, root: &Path) -> Result<(), MountError> {
    let target = root.join(spec.target);
    if !target.is_dir() {
        std::fs::create_dir_all(&target).map_err(|e| MountError::MountPoint(target.clone(), e))?;
    }
    if is_mount_point(&target) {
        return Ok(());
    }
    raw_mount(
        spec.source,
        &target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    )
    .map_err(|err| MountError::Mount {
        fstype: spec.fstype.to_string(),
        source_name: spec.source.to_string(),
        target,
        err,
    })
}

/// Mounts a block device read-only.
pub fn mount_readonly(device: &Path, target: &Path, fstype: &str) -> Result<(), MountError> {
    let source = device.to_string_lossy();
    raw_mount(&source, target, Some(fstype), libc::MS_RDONLY, "").map_err(|err| MountError::Mount {
        fstype: fstype.to_string(),
        source_name: source.into_owned(),
        target: target.to_path_buf(),
        err,
    })
}

/// Mounts a block device with the given flags and options (the state partition).
pub fn mount_device(
    device: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), MountError> {
    let source = device.to_string_lossy();
    raw_mount(&source, target, Some(fstype), flags, data).map_err(|err| MountError::Mount {
        fstype: fstype.to_string(),
        source_name: source.into_owned(),
        target: target.to_path_buf(),
        err,
    })
}

/// `mount --move from to`.
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    raw_mount(&from.to_string_lossy(), to, None, libc::MS_MOVE, "")
        .map_err(|e| MountError::Move(from.to_path_buf(), to.to_path_buf(), e))
}

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: String,
    pub fstype: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel uses in /proc/self/mounts.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mounts.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _source = f.next()?;
            let target = unescape(f.next()?);
            let fstype = f.next()?.to_string();
            Some(MountEntry { target, fstype })
        })
        .collect()
}

/// Kernel API file systems hold no data; they stay mounted until the end.
const KEEP_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "efivarfs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "rootfs",
];

/// Mount points to unmount at shutdown, newest first; the root is remounted read-only instead.
pub fn unmount_plan(mounts: &[MountEntry]) -> Vec<String> {
    mounts
        .iter()
        .rev()
        .filter(|m| m.target != "/" && !KEEP_FSTYPES.contains(&m.fstype.as_str()))
        .map(|m| m.target.clone())
        .collect()
}

/// Unmounts `target`, or remounts it read-only if it is busy. Returns what was done.
pub fn unmount_or_readonly(target: &str) -> Result<&'static str, std::io::Error> {
    let path = cpath(Path::new(target))?;
    // SAFETY: path is a valid NUL-terminated string.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok("unmounted");
    }
    remount_readonly(target).map(|_| "remounted read-only")
}

/// Remounts a mount point read-only.
pub fn remount_readonly(target: &str) -> std::io::Result<()> {
    raw_mount(
        "",
        Path::new(target),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY,
        "",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_plans_unmounts() {
        let text = "none / squashfs ro 0 0\n\
                    proc /proc proc rw 0 0\n\
                    sysfs /sys sysfs rw 0 0\n\
                    devtmpfs /dev devtmpfs rw 0 0\n\
                    tmpfs /run tmpfs rw 0 0\n\
                    tmpfs /tmp tmpfs rw 0 0\n\
                    cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
                    tmpfs /var tmpfs rw 0 0\n\
                    tmpfs /var/lib/my\\040vm tmpfs rw 0 0\n\
                    broken-line\n";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 9);
        assert_eq!(mounts[8].target, "/var/lib/my vm");
        assert_eq!(
            unmount_plan(&mounts),
            ["/var/lib/my vm", "/var", "/tmp", "/run"]
        );
    }

    #[test]
    fn unescapes() {
        let cases = [
            ("/a\\040b", "/a b"),
            ("/a\\011b", "/a\tb"),
            ("/plain", "/plain"),
            ("/bad\\09", "/bad\\09"),
            ("/end\\", "/end\\"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input), want, "{input:?}");
        }
    }

    #[test]
    fn mount_points() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = std::env::temp_dir().join(format!("keel-mnt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir));
        std::fs::remove_dir(&dir).unwrap();
    }
}
