//! A VM's disks and NICs: checking them in a definition, making a disk's private copy, and the
//! `disks`/`nics`/`rng` entries of keel-vmm's `vm.json`.

use super::api::{DiskCopy, VmDisk, VmNic, VmSpec};
use super::images::{check_name, Store, StoreError};
use keel_api::limits::check_disk_serial;
use keel_api::net::{IfName, MacAddr, MacError};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Disks and NICs a VM may have (keel-vmm puts at most 31 virtio devices on its PCI bus; one
/// is the entropy device).
pub const MAX_DISKS: usize = 16;
pub const MAX_NICS: usize = 8;
/// The entropy device every VM gets.
const RNG_DEVICES: usize = 1;
const _: () = assert!(MAX_DISKS + MAX_NICS + RNG_DEVICES <= keel_api::limits::MAX_VIRTIO_DEVICES);
/// FICLONE: share the blocks of another file (reflink), `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Why a VM's devices are unacceptable or cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// {0}
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cannot copy disk image {from} to {to}: {source}
    #[error("Cannot copy disk image {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// Checks the disks and NICs of `spec`, naming the bad entry.
pub fn validate(spec: &VmSpec) -> Result<(), DeviceError> {
    let bad = |m: String| Err(DeviceError::Invalid(m));
    if spec.disks.len() > MAX_DISKS {
        return bad(format!(
            "at most {MAX_DISKS} disks, not {}",
            spec.disks.len()
        ));
    }
    if spec.nics.len() > MAX_NICS {
        return bad(format!("at most {MAX_NICS} nics, not {}", spec.nics.len()));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        check_name(&disk.image)
            .map_err(|e| DeviceError::Invalid(format!("disks[{i}].image: {e}")))?;
        if let Some(serial) = &disk.serial {
            check_disk_serial(&format!("disks[{i}].serial"), serial)
                .map_err(|e| DeviceError::Invalid(e.to_string()))?;
        }
        let shared_writable = |d: &VmDisk| d.copy == DiskCopy::Shared && !d.read_only;
        if shared_writable(disk)
            && spec.disks[..i]
                .iter()
                .any(|d| d.image == disk.image && d.copy == DiskCopy::Shared)
        {
            return bad(format!(
                "disks[{i}]: image {:?} is already attached; a writable shared disk is attached once",
                disk.image
            ));
        }
    }
    let mut macs: Vec<MacAddr> = Vec::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        if let Err(e) = IfName::new(nic.bridge.as_str()) {
            return bad(format!("nics[{i}].bridge: {e}"));
        }
        let mac = match mac_of(&spec.name, i, nic) {
            Ok(mac) => mac,
            Err(e) => {
                let given = nic.mac.as_deref().unwrap_or_default();
                return bad(format!(
                    "nics[{i}].mac {given:?}: {e}; a unicast MAC address like 52:54:00:12:34:56"
                ));
            }
        };
        if let Some(first) = macs.iter().position(|m| *m == mac) {
            return bad(format!("nics[{i}].mac {mac}: also used by nics[{first}]"));
        }
        macs.push(mac);
    }
    Ok(())
}

/// FNV-1a, for names and addresses derived from a VM's name (stable across restarts).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The tap device of NIC `index` of VM `vm`: `kt` + 8 hex digits + the index (fits IFNAMSIZ).
pub fn tap_name(vm: &str, index: usize) -> String {
    format!("kt{:08x}n{index}", fnv1a(vm))
}

/// The NIC's MAC address: the configured one (a unicast address), or one derived from the VM's name and the index
/// in QEMU/KVM's locally administered 52:54:00 range.
pub fn mac_of(vm: &str, index: usize, nic: &VmNic) -> Result<MacAddr, MacError> {
    if let Some(mac) = &nic.mac {
        return MacAddr::parse_unicast(mac);
    }
    let h = fnv1a(&format!("{vm}/{index}")).to_be_bytes();
    Ok(MacAddr::new([0x52, 0x54, 0x00, h[1], h[2], h[3]]))
}

/// Where VM `vm` keeps the private copy of its disk `index`.
pub fn copy_path(copies: &Path, vm: &str, index: usize) -> PathBuf {
    copies.join(vm).join(format!("disk{index}.img"))
}

/// Makes the private copies of `spec`'s `copy` disks under `copies`; on failure removes what
/// it made.
pub fn make_copies(store: &Store, copies: &Path, spec: &VmSpec) -> Result<(), DeviceError> {
    let result = spec
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.copy == DiskCopy::Copy)
        .try_for_each(|(i, disk)| {
            let from = store.path(super::api::ImageKind::Disk, &disk.image)?;
            let to = copy_path(copies, &spec.name, i);
            clone_or_copy(&from, &to).map_err(|source| DeviceError::Copy { from, to, source })
        });
    if result.is_err() {
        remove_copies(copies, &spec.name);
    }
    result
}

/// Removes every private disk copy of VM `vm`.
pub fn remove_copies(copies: &Path, vm: &str) {
    let _ = fs::remove_dir_all(copies.join(vm));
}

/// `to` as a reflink of `from` where the file system shares blocks (XFS, btrfs), else as a
/// copy that keeps holes (copy_file_range, which the kernel may also turn into a reflink).
pub fn clone_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    let source = File::open(from)?;
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    let done = (|| {
        // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
        // source descriptor as its argument and touches no memory of ours.
        if unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) } == 0 {
            return Ok(());
        }
        copy_keeping_holes(&source, &target)?;
        target.sync_all()
    })();
    if done.is_err() {
        let _ = fs::remove_file(to);
    }
    done
}

/// Copies the data extents of `source` (SEEK_DATA/SEEK_HOLE), so a sparse image stays sparse.
fn copy_keeping_holes(source: &File, target: &File) -> io::Result<()> {
    let len = source.metadata()?.len();
    target.set_len(len)?;
    let seek = |whence: libc::c_int, at: u64| -> io::Result<Option<u64>> {
        let at = libc::off_t::try_from(at).map_err(io::Error::other)?;
        // SAFETY: lseek on an open descriptor; no memory involved.
        let got = unsafe { libc::lseek(source.as_raw_fd(), at, whence) };
        if got < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no more data after `at`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(got as u64))
    };
    let mut at = 0u64;
    while at < len {
        let Some(data) = seek(libc::SEEK_DATA, at)? else {
            break;
        };
        let end = seek(libc::SEEK_HOLE, data)?.unwrap_or(len).min(len);
        let mut off_in = data as libc::loff_t;
        let mut off_out = data as libc::loff_t;
        let mut left = end - data;
        while left > 0 {
            let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
            // SAFETY: both descriptors are open; the offsets are ours and valid for the call.
            let n = unsafe {
                libc::copy_file_range(
                    source.as_raw_fd(),
                    &mut off_in,
                    target.as_raw_fd(),
                    &mut off_out,
                    chunk,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image shrank while being copied",
                ));
            }
            left -= n as u64;
        }
        at = end;
    }
    Ok(())
}

/// A disk of a VM run, as keel-vmm opens it: vm.json's own disk type, with the host path (the
/// launcher maps it into the jail).
pub use keel_api::vmm::DiskConfig as DiskDevice;

/// A NIC of a VM run: its tap, the guest's MAC, and the bridge the tap goes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    pub tap: String,
    pub mac: MacAddr,
    pub bridge: String,
}

/// The devices of a VM run (an entropy device comes with every VM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmDevices {
    pub disks: Vec<DiskDevice>,
    pub nics: Vec<NicDevice>,
}

/// The devices of `spec`'s run; disk paths from the store or the copies.
pub fn vmm_config(store: &Store, copies: &Path, spec: &VmSpec) -> Result<VmDevices, DeviceError> {
    let mut disks = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let path = match disk.copy {
            DiskCopy::Copy => {
                let path = copy_path(copies, &spec.name, i);
                if !path.is_file() {
                    return Err(DeviceError::Invalid(format!(
                        "disks[{i}]: the private copy {} is missing; define the VM again",
                        path.display()
                    )));
                }
                path
            }
            DiskCopy::Shared => store.path(super::api::ImageKind::Disk, &disk.image)?,
        };
        disks.push(DiskDevice {
            path,
            read_only: disk.read_only,
            serial: disk.serial.clone(),
            direct: false,
        });
    }
    let nics = spec
        .nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            let mac = mac_of(&spec.name, i, nic)
                .map_err(|e| DeviceError::Invalid(format!("nics[{i}].mac: {e}")))?;
            Ok(NicDevice {
                tap: tap_name(&spec.name, i),
                mac,
                bridge: nic.bridge.clone(),
            })
        })
        .collect::<Result<_, DeviceError>>()?;
    Ok(VmDevices { disks, nics })
}

/// Makes /dev/net/tun available: Debian builds `tun` as a module, and Keel has no modprobe for
/// the kernel to load it on demand.
pub fn ensure_tun() -> Result<(), String> {
    if Path::new("/dev/net/tun").exists() {
        return Ok(());
    }
    let dir = Path::new("/lib/modules").join(crate::sys::syscall::kernel_release());
    let index = crate::pid1::modules::ModuleIndex::read(&dir).map_err(|e| e.to_string())?;
    crate::pid1::modules::Loader::new(dir, index)
        .load("tun")
        .map_err(|e| format!("cannot load the tun module: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::api::{OnCrash, StoreKind};

    fn spec(disks: Vec<VmDisk>, nics: Vec<VmNic>) -> VmSpec {
        VmSpec {
            name: "web-1".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel: "k".into(),
            initrd: None,
            cmdline: String::new(),
            on_crash: OnCrash::Stop,
            disks,
            nics,
        }
    }

    fn disk(image: &str, copy: DiskCopy, read_only: bool) -> VmDisk {
        VmDisk {
            image: image.into(),
            copy,
            read_only,
            serial: None,
        }
    }

    fn nic(bridge: &str, mac: Option<&str>) -> VmNic {
        VmNic {
            bridge: bridge.into(),
            mac: mac.map(String::from),
        }
    }

    #[test]
    fn validation_names_the_bad_entry() {
        let ok = [
            spec(vec![], vec![]),
            spec(
                vec![
                    disk("base", DiskCopy::Copy, false),
                    disk("base", DiskCopy::Copy, false),
                    disk("iso", DiskCopy::Shared, true),
                    disk("iso", DiskCopy::Shared, true),
                ],
                vec![
                    nic("keelbr0", None),
                    nic("br-vm.7", Some("52:54:00:AA:bb:01")),
                ],
            ),
        ];
        for s in ok {
            validate(&s).unwrap();
        }
        let bad = [
            (
                spec(vec![disk("../x", DiskCopy::Copy, false)], vec![]),
                "disks[0].image",
            ),
            (
                spec(
                    vec![
                        disk("d", DiskCopy::Shared, true),
                        disk("d", DiskCopy::Shared, false),
                    ],
                    vec![],
                ),
                "disks[1]: image \"d\" is already attached",
            ),
            (
                spec(
                    vec![VmDisk {
                        serial: Some("far-too-long-for-a-serial".into()),
                        ..disk("d", DiskCopy::Copy, false)
                    }],
                    vec![],
                ),
                "disks[0].serial",
            ),
            (spec(vec![], vec![nic("", None)]), "nics[0].bridge"),
            (spec(vec![], vec![nic("a/b", None)]), "nics[0].bridge"),
            (
                spec(vec![], vec![nic("br", Some("53:54:00:00:00:01"))]),
                "nics[0].mac",
            ),
            (
                spec(vec![], vec![nic("br", Some("52:54:00:00:00"))]),
                "nics[0].mac",
            ),
            (
                spec(vec![], vec![nic("br", Some("52:54:00:00:00:zz"))]),
                "nics[0].mac",
            ),
            (
                spec(
                    vec![disk("d", DiskCopy::Copy, false); MAX_DISKS + 1],
                    vec![],
                ),
                "at most 16 disks",
            ),
            (
                spec(
                    vec![],
                    vec![
                        nic("br", Some("52:54:00:00:00:01")),
                        nic("br", Some("52:54:00:00:00:01")),
                    ],
                ),
                "nics[1].mac 52:54:00:00:00:01: also used by nics[0]",
            ),
            (
                spec(vec![], vec![nic("br", Some("00:00:00:00:00:00"))]),
                "nics[0].mac",
            ),
        ];
        for (s, want) in bad {
            let err = validate(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn taps_and_macs_are_stable_and_distinct() {
        let n = nic("keelbr0", None);
        assert_eq!(tap_name("web-1", 0), tap_name("web-1", 0));
        assert_ne!(tap_name("web-1", 0), tap_name("web-2", 0));
        assert!(tap_name(&"x".repeat(63), 7).len() <= 15);
        let mac = mac_of("web-1", 0, &n).unwrap();
        assert!(
            mac.to_string().starts_with("52:54:00:") && mac.check_unicast().is_ok(),
            "{mac}"
        );
        assert_ne!(mac, mac_of("web-1", 1, &n).unwrap());
        assert_eq!(
            mac_of("web-1", 0, &nic("b", Some("52:54:00:AA:BB:CC")))
                .unwrap()
                .to_string(),
            "52:54:00:aa:bb:cc"
        );
    }

    #[test]
    fn copies_keep_data_and_holes_and_config_points_at_them() {
        let dir = std::env::temp_dir().join(format!("keel-vmdev-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(dir.join("store"), StoreKind::Ram).unwrap();
        // A sparse 8 MiB image with data at the start and at 4 MiB.
        let image = dir.join("store/disk/base");
        let f = File::create(&image).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"boot sector", 0).unwrap();
        f.write_all_at(b"middle", 4 << 20).unwrap();
        drop(f);
        let copies = dir.join("copies");
        let s = spec(
            vec![
                disk("base", DiskCopy::Copy, false),
                VmDisk {
                    serial: Some("data".into()),
                    ..disk("base", DiskCopy::Shared, true)
                },
            ],
            vec![nic("keelbr0", None)],
        );
        make_copies(&store, &copies, &s).unwrap();
        let copy = copy_path(&copies, "web-1", 0);
        assert_eq!(fs::read(&copy).unwrap(), fs::read(&image).unwrap());
        // Writing the copy leaves the image alone.
        fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .write_all_at(b"changed", 0)
            .unwrap();
        assert!(fs::read(&image).unwrap().starts_with(b"boot sector"));

        let devices = vmm_config(&store, &copies, &s).unwrap();
        assert_eq!(
            devices.disks,
            [
                DiskDevice {
                    path: copy.clone(),
                    read_only: false,
                    serial: None,
                    direct: false,
                },
                DiskDevice {
                    path: image.clone(),
                    read_only: true,
                    serial: Some("data".into()),
                    direct: false,
                }
            ]
        );
        assert_eq!(devices.nics[0].tap, tap_name("web-1", 0));
        assert_eq!(devices.nics[0].bridge, "keelbr0");

        // A copy of a missing image fails and leaves nothing behind.
        let missing = spec(
            vec![
                disk("base", DiskCopy::Copy, false),
                disk("nope", DiskCopy::Copy, false),
            ],
            vec![],
        );
        remove_copies(&copies, "web-1");
        assert!(make_copies(&store, &copies, &missing).is_err());
        assert!(!copies.join("web-1").exists());
        assert!(vmm_config(&store, &copies, &s)
            .unwrap_err()
            .to_string()
            .contains("private copy"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
