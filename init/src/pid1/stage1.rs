//! Stage 1: from the initramfs to the read-only root image, then exec /sbin/init.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::modules::{self, ModuleError};
use super::output;
use crate::sys::mounts::{self, MountError};
use crate::sys::syscall::{check, cpath};

pub const ROOT_IMAGE: &str = "/root.squashfs";
const NEWROOT: &str = "/newroot";
const EARLY_ORDER: &str = "/early/modules.order";
const EARLY_DIR: &str = "/early/modules";

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
/// ramfs and tmpfs magics (statfs f_type): the only roots stage 1 empties.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    /// {0}
    #[error("{0}")]
    Mount(#[from] MountError),
    /// Early modules: {0}
    #[error("early modules: {0}")]
    Module(#[from] ModuleError),
    /// Cannot open {0}: {1}
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, std::io::Error),
    /// LOOP_CTL_GET_FREE on /dev/loop-control failed: {0}
    #[error("LOOP_CTL_GET_FREE on /dev/loop-control failed: {0}")]
    LoopFree(std::io::Error),
    /// Cannot attach {0} to {1}: {2}
    #[error("cannot attach {0} to {1}: {2}")]
    Attach(String, PathBuf, std::io::Error),
    /// Cannot switch to the new root {0}: {1}
    #[error("cannot switch to the new root {0}: {1}")]
    SwitchRoot(&'static str, std::io::Error),
    /// Cannot exec {0}: {1}
    #[error("cannot exec {0}: {1}")]
    Exec(&'static str, std::io::Error),
}

fn open(path: &Path, write: bool) -> Result<File, Stage1Error> {
    File::options()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Stage1Error::Open(path.to_path_buf(), e))
}

/// Attaches `image` read-only to a free loop device and returns the device path.
fn attach_loop(image: &Path) -> Result<PathBuf, Stage1Error> {
    let control = open(Path::new("/dev/loop-control"), true)?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
    let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })
        .map_err(Stage1Error::LoopFree)?;
    let device = PathBuf::from(format!("/dev/loop{n}"));
    // devtmpfs creates the node as the device registers; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !device.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dev = open(&device, false)?;
    let backing = open(image, false)?;
    let attach_err = |e| Stage1Error::Attach(image.display().to_string(), device.clone(), e);
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let name = image.as_os_str().as_encoded_bytes();
    let len = name.len().min(63);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    let fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| attach_err(std::io::Error::from_raw_os_error(libc::EBADF)))?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: config is a valid loop_config that the kernel only reads during the call.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
    if ret == 0 {
        return Ok(device);
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(attach_err(err));
    }
    // Kernels before 5.8 have no LOOP_CONFIGURE.
    // SAFETY: LOOP_SET_FD takes the backing fd by value.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) })
        .map_err(attach_err)?;
    // SAFETY: config.info is a valid loop_info64 that the kernel only reads.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &config.info) })
        .map_err(attach_err)?;
    Ok(device)
}

/// Deletes everything under `dir` that lives on device `dev`, except `keep`; does not cross into
/// other mounts. Returns the bytes of file data removed. Errors are skipped: this only frees
/// memory.
pub fn remove_contents(dir: &Path, dev: u64, keep: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            freed += remove_contents(&path, dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else if std::fs::remove_file(&path).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

fn root_is_ram() -> bool {
    // SAFETY: statfs is plain old data; zero is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid C string and st is writable.
    let ok = unsafe { libc::statfs(c"/".as_ptr(), &mut st) } == 0;
    ok && matches!(st.f_type, RAMFS_MAGIC | TMPFS_MAGIC)
}

/// Runs stage 1. Returns only on failure (after exec succeeds nothing returns).
pub fn run() -> Stage1Error {
    match switch() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn switch() -> Result<std::convert::Infallible, Stage1Error> {
    let root = Path::new("/");
    for spec in &mounts::API {
        mounts::ensure(spec, root)?;
    }
    output::ensure_std_fds();
    output::open();
    output::quiet_kernel_echo(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    modules::load_early(Path::new(EARLY_ORDER), Path::new(EARLY_DIR))?;
    let device = attach_loop(Path::new(ROOT_IMAGE))?;
    let newroot = Path::new(NEWROOT);
    if !newroot.is_dir() {
        std::fs::create_dir_all(newroot)
            .map_err(|e| MountError::MountPoint(newroot.to_path_buf(), e))?;
    }
    mounts::mount_readonly(&device, newroot, "squashfs")?;
    for spec in &mounts::SCRATCH {
        mounts::ensure(spec, newroot)?;
    }
    for spec in &mounts::API {
        mounts::move_mount(&root.join(spec.target), &newroot.join(spec.target))?;
    }
    if root_is_ram() {
        if let Ok(meta) = std::fs::metadata(root) {
            let freed = remove_contents(root, meta.dev(), newroot);
            log::info!("keel: stage 1: freed {} KiB of initramfs", freed / 1024);
        }
    }
    let newroot_c = cpath(newroot).map_err(|e| Stage1Error::SwitchRoot("chdir", e))?;
    // SAFETY: newroot_c is a valid C string.
    check(unsafe { libc::chdir(newroot_c.as_ptr()) })
        .map_err(|e| Stage1Error::SwitchRoot("chdir", e))?;
    mounts::move_mount(Path::new("."), root)?;
    // SAFETY: "." is a valid C string.
    check(unsafe { libc::chroot(c".".as_ptr()) })
        .map_err(|e| Stage1Error::SwitchRoot("chroot", e))?;
    // SAFETY: "/" is a valid C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) })
        .map_err(|e| Stage1Error::SwitchRoot("chdir /", e))?;
    let init = c"/sbin/init";
    let argv0 = CString::from(c"init");
    let argv = [argv0.as_ptr(), std::ptr::null()];
    // SAFETY: init and argv are valid NUL-terminated; argv is null-terminated; the environment
    // pointer comes from libc.
    unsafe { libc::execv(init.as_ptr(), argv.as_ptr()) };
    Err(Stage1Error::Exec(
        "/sbin/init",
        std::io::Error::last_os_error(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn removes_contents_but_keeps_the_new_root() {
        let top = std::env::temp_dir().join(format!("keel-stage1-{}", std::process::id()));
        let keep = top.join("newroot");
        std::fs::create_dir_all(top.join("early/modules")).unwrap();
        std::fs::create_dir_all(keep.join("usr")).unwrap();
        std::fs::write(top.join("early/modules/loop.ko"), "x").unwrap();
        std::fs::write(top.join("init"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", top.join("link")).unwrap();
        let dev = std::fs::metadata(&top).unwrap().dev();
        // Two one-byte files and a symlink whose target is four bytes.
        assert_eq!(remove_contents(&top, dev, &keep), 6);
        let left: Vec<String> = std::fs::read_dir(&top)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["newroot"]);
        assert!(keep.join("usr").is_dir());
        assert!(
            Path::new("/etc").is_dir(),
            "symlinks are removed, not followed"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }
}
