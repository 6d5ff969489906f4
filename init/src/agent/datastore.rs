//! Where the image store lives: an ext4 filesystem labelled `KEEL-DATA` on a local disk when
//! there is one, otherwise a size-bounded tmpfs (images then live in RAM and die with a reboot).
//!
//! The label is read straight from each block device's ext superblock, so no udev or blkid is
//! needed. The persistent state partition (a later issue) will share this lookup.

use super::api::StoreKind;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The filesystem label of the data disk.
pub const LABEL: &str = "KEEL-DATA";

/// The ext2/3/4 volume label in a superblock (the 1024 bytes at offset 1024 of the device).
pub fn ext_label(superblock: &[u8]) -> Option<String> {
    let magic = superblock.get(0x38..0x3a)?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let raw = superblock.get(0x78..0x88)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).ok().map(String::from)
}

fn label_of(device: &Path) -> Option<String> {
    let mut file = File::open(device).ok()?;
    file.seek(SeekFrom::Start(1024)).ok()?;
    let mut sb = [0u8; 1024];
    file.read_exact(&mut sb).ok()?;
    ext_label(&sb)
}

/// The block device (disk or partition) whose ext filesystem is labelled `label`.
pub fn find_labelled(label: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| PathBuf::from("/dev").join(n))
        .find(|dev| label_of(dev).as_deref() == Some(label))
}

fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, fs, dat) = (c(source)?, c(fstype)?, c(data)?);
    let tgt = c(&target.to_string_lossy())?;
    // SAFETY: every pointer is a NUL-terminated string living across the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC,
            dat.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a mounted store's filesystem type means.
pub fn kind_of(fstype: &str) -> StoreKind {
    if fstype == "tmpfs" || fstype == "ramfs" {
        StoreKind::Ram
    } else {
        StoreKind::Disk
    }
}

/// Mounts the data store on `dir`: the KEEL-DATA disk if present, else a tmpfs of `ram_mib`.
/// Returns what backs it and a line for the console.
pub fn prepare(dir: &Path, ram_mib: u64) -> io::Result<(StoreKind, String)> {
    std::fs::create_dir_all(dir)?;
    if crate::sys::mounts::is_mount_point(dir) {
        // Mounted by an earlier run of the agent: what backs it is in the mount table.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let target = dir.to_string_lossy();
        let fstype = crate::sys::mounts::parse_mounts(&mounts)
            .into_iter()
            .rev()
            .find(|m| m.target == target)
            .map(|m| m.fstype)
            .unwrap_or_default();
        let kind = kind_of(&fstype);
        let line = format!("data store: {} ({fstype}, already mounted)", dir.display());
        return Ok((kind, line));
    }
    if let Some(device) = find_labelled(LABEL) {
        let source = device.to_string_lossy().into_owned();
        match mount(&source, dir, "ext4", "") {
            Ok(()) => {
                return Ok((
                    StoreKind::Disk,
                    format!("data store: {source} ({LABEL}) on {}", dir.display()),
                ))
            }
            Err(e) => log::warn!("keel-agent: cannot mount {source} ({LABEL}): {e}; using RAM"),
        }
    }
    mount(
        "keel-data",
        dir,
        "tmpfs",
        &format!("size={ram_mib}m,mode=0700"),
    )?;
    Ok((
        StoreKind::Ram,
        format!(
            "data store: RAM, {ram_mib} MiB on {} (no {LABEL} disk)",
            dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let mut sb = vec![0u8; 1024];
        assert_eq!(ext_label(&sb), None);
        sb[0x38] = 0x53;
        sb[0x39] = 0xef;
        sb[0x78..0x78 + LABEL.len()].copy_from_slice(LABEL.as_bytes());
        assert_eq!(ext_label(&sb).as_deref(), Some(LABEL));
        sb[0x78..0x88].copy_from_slice(b"0123456789abcdef");
        assert_eq!(ext_label(&sb).as_deref(), Some("0123456789abcdef"));
        assert_eq!(ext_label(&sb[..0x40]), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("tmpfs"), StoreKind::Ram);
        assert_eq!(kind_of("ext4"), StoreKind::Disk);
    }
}
