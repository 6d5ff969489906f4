//! Creating a state partition on a local disk the operator chooses (console or API): the decision
//! (what is erased and created, refusals, the confirmation that must name the disk), then
//! `carry_out`: a new GPT with one partition, formatted ext4 (`ext4`), which the kernel is asked
//! to read. `state::create_on` ties it to the mount and the status record.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::label::{self, STATE_LABEL};
use super::{ext4, gpt};

/// Smallest state partition worth creating (an ext4 journal alone takes 4 MiB).
pub const MIN_MIB: u64 = 16;
/// Without a size, the partition takes this much (or the whole disk if smaller): the state is a
/// few files, and a smaller file system formats faster.
pub const DEFAULT_MIB: u64 = 1024;
/// Largest state partition: formatting writes every inode table, and the state is a few files.
pub const MAX_MIB: u64 = 64 << 10;
/// The partition starts 1 MiB in; the last MiB is left for the backup GPT (33 sectors of 512
/// bytes, or 5 of 4096).
const START_BYTES: u64 = 1 << 20;
const GPT_TAIL_BYTES: u64 = 1 << 20;
/// The label of the USB image's ESP (image-builder's `media::usb::ESP_LABEL`).
const BOOT_LABEL: &str = "KEEL-ESP";
/// How long the kernel may take to show the new partition.
const PARTITION_WAIT: Duration = Duration::from_secs(5);

/// A local disk as the kernel describes it in /sys/class/block/<name>.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, `sdb`.
    pub name: String,
    pub size_bytes: u64,
    /// Its partitions' kernel names.
    pub partitions: Vec<String>,
    /// What uses the disk or its partitions: `mounted at /mnt`, `held by dm-0`.
    pub mounted: Vec<String>,
    /// Logical sector size.
    pub sector_bytes: u64,
    /// Why this disk holds the boot medium (a Keel ESP, an ISO written to it), if it does.
    pub boot_medium: Option<String>,
}

/// What creating the state partition on a disk does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `/dev/sdb`: also the word the operator must type to confirm.
    pub device: String,
    pub disk_bytes: u64,
    /// Partitions that will be lost.
    pub erases: Vec<String>,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub sector_bytes: u64,
    pub label: &'static str,
}

/// Why the plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// {0} is in use ({1}); choose another disk
    #[error("{0} is in use ({1}); choose another disk")]
    InUse(String, String),
    /// {0} has {1} MiB; a state partition needs at least {2} MiB
    #[error("{0} has {1} MiB; a state partition needs at least {2} MiB")]
    TooSmall(String, u64, u64),
    /// Requested size {0} MiB is below the minimum of {1} MiB
    #[error("Requested size {0} MiB is below the minimum of {1} MiB")]
    SizeTooSmall(u64, u64),
    /// Requested size {0} MiB is above the maximum of {1} MiB
    #[error("Requested size {0} MiB is above the maximum of {1} MiB")]
    SizeTooLarge(u64, u64),
    /// Confirmation {0:?} does not name the disk {1}; nothing was changed
    #[error("Confirmation {0:?} does not name the disk {1}; nothing was changed")]
    NotConfirmed(String, String),
    /// No disk {0} in /sys/class/block
    #[error("No disk {0} in /sys/class/block")]
    NoSuchDisk(String),
    /// {0} is a partition; choose the whole disk
    #[error("{0} is a partition; choose the whole disk")]
    IsPartition(String),
    /// {0} is not a local disk
    #[error("{0} is not a local disk")]
    NotADisk(String),
    /// {0} holds the boot medium ({1}); choose another disk
    #[error("{0} holds the boot medium ({1}); choose another disk")]
    BootMedium(String, String),
    /// A state partition is already mounted ({0}); nothing was changed
    #[error("A state partition is already mounted ({0}); nothing was changed")]
    AlreadyMounted(String),
    /// Cannot open {0} for writing: {1}
    #[error("Cannot open {0} for writing: {1}")]
    Open(String, String),
    /// Cannot create the state partition on {0}: {1}
    #[error("Cannot create the state partition on {0}: {1}")]
    Write(String, String),
    /// {0} was written but the kernel does not show its new partition ({1}); reboot to use it
    #[error(
        "{0} was written but the kernel does not show its new partition ({1}); reboot to use it"
    )]
    NotShown(String, String),
    /// The new state partition {0} cannot be used: {1}
    #[error("The new state partition {0} cannot be used: {1}")]
    Unusable(String, String),
}

impl CreateError {
    /// The HTTP status an API answers this with.
    pub fn status(&self) -> u16 {
        match self {
            CreateError::NoSuchDisk(_) => 404,
            CreateError::InUse(..)
            | CreateError::BootMedium(..)
            | CreateError::AlreadyMounted(_) => 409,
            CreateError::TooSmall(..)
            | CreateError::SizeTooSmall(..)
            | CreateError::SizeTooLarge(..)
            | CreateError::NotConfirmed(..)
            | CreateError::IsPartition(_)
            | CreateError::NotADisk(_) => 400,
            CreateError::Open(..)
            | CreateError::Write(..)
            | CreateError::NotShown(..)
            | CreateError::Unusable(..) => 500,
        }
    }
}

/// The plan for `disk`: the whole disk becomes GPT with one ext4 partition labelled KEEL-STATE of
/// `size_mib` (`DEFAULT_MIB` when None; the whole disk when that is smaller).
pub fn plan(disk: &Disk, size_mib: Option<u64>) -> Result<Plan, CreateError> {
    let device = format!("/dev/{}", disk.name);
    if let Some(point) = disk.mounted.first() {
        return Err(CreateError::InUse(device, point.clone()));
    }
    if let Some(why) = &disk.boot_medium {
        return Err(CreateError::BootMedium(device, why.clone()));
    }
    if let Some(mib) = size_mib.filter(|&m| m < MIN_MIB) {
        return Err(CreateError::SizeTooSmall(mib, MIN_MIB));
    }
    if let Some(mib) = size_mib.filter(|&m| m > MAX_MIB) {
        return Err(CreateError::SizeTooLarge(mib, MAX_MIB));
    }
    let room = disk.size_bytes.saturating_sub(START_BYTES + GPT_TAIL_BYTES) / (1 << 20) * (1 << 20);
    if room < MIN_MIB << 20 {
        return Err(CreateError::TooSmall(
            device,
            disk.size_bytes >> 20,
            MIN_MIB,
        ));
    }
    let size_bytes = (size_mib.unwrap_or(DEFAULT_MIB) << 20).min(room);
    Ok(Plan {
        device,
        disk_bytes: disk.size_bytes,
        erases: disk.partitions.clone(),
        start_bytes: START_BYTES,
        size_bytes,
        sector_bytes: disk.sector_bytes,
        label: STATE_LABEL,
    })
}

impl Plan {
    /// What the operator is asked to confirm.
    pub fn summary(&self) -> String {
        let lost = if self.erases.is_empty() {
            String::from("everything on it")
        } else {
            format!("its partitions {}", self.erases.join(", "))
        };
        format!(
            "This erases {} ({} MiB), {lost}, and creates one {} MiB ext4 partition labelled {}. \
             Type {} to confirm.",
            self.device,
            self.disk_bytes >> 20,
            self.size_bytes >> 20,
            self.label,
            self.device
        )
    }

    /// The confirmation must be the device path itself, exactly (surrounding blanks aside).
    pub fn confirm(&self, typed: &str) -> Result<(), CreateError> {
        if typed.trim() == self.device {
            Ok(())
        } else {
            Err(CreateError::NotConfirmed(
                typed.to_string(),
                self.device.clone(),
            ))
        }
    }
}

/// A whole disk offered for the state partition (the console lists them): the plan for it with
/// the default size, or why it cannot hold one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskOffer {
    /// `/dev/sdb`: also the word that confirms.
    pub device: String,
    pub size_mib: u64,
    /// What creating the partition there does (`Plan::summary`), when it can be done.
    pub plan: Option<String>,
    /// Why it cannot, otherwise: in use, the boot medium, too small.
    pub refused: Option<String>,
}

/// Every whole disk under `sys_class_block` (not partitions, loops, optical drives, …), each
/// with its plan or the reason it is refused, sorted by name.
pub fn offers(sys_class_block: &Path, dev: &Path, mounts: &str) -> Vec<DiskOffer> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|name| read_disk(sys_class_block, dev, name, mounts).ok())
        .map(|disk| {
            let (plan, refused) = match plan(&disk, None) {
                Ok(p) => (Some(p.summary()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            DiskOffer {
                device: format!("/dev/{}", disk.name),
                size_mib: disk.size_bytes >> 20,
                plan,
                refused,
            }
        })
        .collect()
}

/// Describes disk `name` from `sys_class_block`, its nodes in `dev` and the mount table text.
pub fn read_disk(
    sys_class_block: &Path,
    dev: &Path,
    name: &str,
    mounts: &str,
) -> Result<Disk, CreateError> {
    let dir = sys_class_block.join(name);
    if name.contains('/') || name.is_empty() || !dir.is_dir() {
        return Err(CreateError::NoSuchDisk(name.to_string()));
    }
    if dir.join("partition").exists() {
        return Err(CreateError::IsPartition(format!("/dev/{name}")));
    }
    if super::skipped(name) {
        return Err(CreateError::NotADisk(format!("/dev/{name}")));
    }
    let number = |file: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let sectors = number("size").unwrap_or(0);
    let sector_bytes = number("queue/logical_block_size").unwrap_or(512);
    let mut partitions: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(name) && dir.join(n).join("partition").exists())
                .collect()
        })
        .unwrap_or_default();
    partitions.sort();
    let ours = |dev: &str| {
        dev.strip_prefix("/dev/")
            .is_some_and(|d| d == name || partitions.iter().any(|p| p == d))
    };
    let mut mounted: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let source = f.next()?;
            let target = f.next()?;
            ours(source).then(|| format!("mounted at {target}"))
        })
        .collect();
    // Device mapper, MD RAID or swap-like holders use the disk without a mount.
    for part in std::iter::once(name).chain(partitions.iter().map(String::as_str)) {
        let holders = sys_class_block.join(part).join("holders");
        if let Some(holder) = std::fs::read_dir(holders)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
        {
            mounted.push(format!("held by {}", holder.file_name().to_string_lossy()));
        }
    }
    Ok(Disk {
        name: name.to_string(),
        size_bytes: sectors * 512,
        boot_medium: boot_medium(dev, name, &partitions),
        partitions,
        mounted,
        sector_bytes,
    })
}

/// Why the disk holds a Keel boot medium: a partition labelled KEEL-ESP (the USB image), or an
/// ISO 9660 volume (the hybrid ISO written to a stick).
fn boot_medium(dev: &Path, name: &str, partitions: &[String]) -> Option<String> {
    let esp = partitions.iter().find(|p| {
        super::read_head(&dev.join(p))
            .and_then(|head| label::identify(&head))
            .is_some_and(|(_, l)| l == BOOT_LABEL)
    });
    if let Some(p) = esp {
        return Some(format!("/dev/{p} is labelled {BOOT_LABEL}"));
    }
    let mut volume = [0u8; 6];
    let iso = File::open(dev.join(name))
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut volume, 0x8000))
        .is_ok_and(|()| &volume[1..6] == b"CD001");
    iso.then(|| String::from("an ISO 9660 image"))
}

/// The kernel's name for partition `n` of `disk`: `sdb1`, but `nvme0n1p1` and `mmcblk0p1`.
fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

fn random_bytes() -> Result<[u8; 16], String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| String::from("no randomness"))?;
    Ok(bytes)
}

/// Writes the planned partition table and file system to `disk` (the device, or an image file in
/// tests). The file system goes first: a table is only written over a complete file system.
pub fn write(plan: &Plan, disk: &File, now: u32) -> Result<(), String> {
    let id = ext4::Identity {
        label: plan.label,
        uuid: gpt::guid(random_bytes()?),
        now,
    };
    ext4::format(disk, plan.start_bytes, plan.size_bytes, &id).map_err(|e| e.to_string())?;
    let table = gpt::Table {
        disk_bytes: plan.disk_bytes,
        sector: plan.sector_bytes,
        start_bytes: plan.start_bytes,
        size_bytes: plan.size_bytes,
        name: plan.label,
        disk_guid: gpt::guid(random_bytes()?),
        partition_guid: gpt::guid(random_bytes()?),
    };
    table.write(disk).map_err(|e| e.to_string())?;
    disk.sync_all().map_err(|e| format!("fsync: {e}"))
}

/// BLKRRPART: the kernel reads the partition table again.
const BLKRRPART: libc::c_ulong = 0x125f;

/// Carries out a confirmed plan on the real disk: writes it (the disk opened exclusively, so a
/// disk the kernel uses is refused), asks the kernel to read the new table and waits for the
/// partition's device node in `dev`. Returns the partition's device path.
pub fn carry_out(plan: &Plan, dev: &Path, now: u32) -> Result<PathBuf, CreateError> {
    let device = &plan.device;
    let open_err = |e: std::io::Error| CreateError::Open(device.clone(), e.to_string());
    {
        let disk = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(device)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => CreateError::InUse(device.clone(), "busy".into()),
                _ => open_err(e),
            })?;
        write(plan, &disk, now).map_err(|e| CreateError::Write(device.clone(), e))?;
    }
    // A plain descriptor: the exclusive one would make the kernel's rescan refuse as busy.
    let disk = File::open(device).map_err(open_err)?;
    use std::os::fd::AsRawFd;
    // SAFETY: BLKRRPART takes no argument; the descriptor is open for the call's duration.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(CreateError::NotShown(device.clone(), e.to_string()));
    }
    let name = device.trim_start_matches("/dev/");
    let partition = dev.join(partition_name(name, 1));
    let started = Instant::now();
    while !partition.exists() {
        if started.elapsed() > PARTITION_WAIT {
            let why = format!("no {} after {:?}", partition.display(), PARTITION_WAIT);
            return Err(CreateError::NotShown(device.clone(), why));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(partition)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    fn disk(size_mib: u64, partitions: &[&str], mounted: &[&str]) -> Disk {
        Disk {
            name: "sdb".into(),
            size_bytes: size_mib << 20,
            partitions: partitions.iter().map(|s| s.to_string()).collect(),
            mounted: mounted.iter().map(|s| s.to_string()).collect(),
            sector_bytes: 512,
            boot_medium: None,
        }
    }

    #[test]
    fn plans_and_refusals() {
        let mut cases: Vec<(Disk, Option<u64>, Result<u64, CreateError>)> = vec![
            (disk(8192, &[], &[]), Some(64), Ok(64)),
            (disk(8192, &["sdb1"], &[]), None, Ok(DEFAULT_MIB)),
            (disk(8192, &[], &[]), Some(8190), Ok(8190)),
            (disk(8192, &[], &[]), Some(MAX_MIB), Ok(8190)),
            (
                disk(8192, &[], &[]),
                Some(u64::MAX),
                Err(CreateError::SizeTooLarge(u64::MAX, MAX_MIB)),
            ),
            (disk(100, &[], &[]), Some(1000), Ok(98)),
            (disk(18, &[], &[]), None, Ok(16)),
            (
                disk(16, &[], &[]),
                None,
                Err(CreateError::TooSmall("/dev/sdb".into(), 16, 16)),
            ),
            (
                disk(8192, &[], &[]),
                Some(8),
                Err(CreateError::SizeTooSmall(8, 16)),
            ),
            (
                disk(8192, &["sdb1"], &["mounted at /var/lib/keel/state"]),
                Some(64),
                Err(CreateError::InUse(
                    "/dev/sdb".into(),
                    "mounted at /var/lib/keel/state".into(),
                )),
            ),
        ];
        let boot = Disk {
            boot_medium: Some("/dev/sdb2 is labelled KEEL-ESP".into()),
            ..disk(8192, &["sdb1", "sdb2"], &[])
        };
        cases.push((
            boot,
            None,
            Err(CreateError::BootMedium(
                "/dev/sdb".into(),
                "/dev/sdb2 is labelled KEEL-ESP".into(),
            )),
        ));
        for (d, size, want) in cases {
            let got = plan(&d, size).map(|p| p.size_bytes >> 20);
            assert_eq!(got, want, "{d:?} {size:?}");
        }
    }

    #[test]
    fn confirmation_must_name_the_disk() {
        let p = plan(&disk(8192, &["sdb1", "sdb2"], &[]), Some(64)).unwrap();
        assert_eq!(
            p.summary(),
            "This erases /dev/sdb (8192 MiB), its partitions sdb1, sdb2, and creates one 64 MiB \
             ext4 partition labelled KEEL-STATE. Type /dev/sdb to confirm."
        );
        assert_eq!(p.confirm("/dev/sdb\n"), Ok(()));
        for typed in ["yes", "sdb", "/dev/sda", "/dev/sdb1", ""] {
            assert!(
                matches!(p.confirm(typed), Err(CreateError::NotConfirmed(..))),
                "{typed:?}"
            );
        }
    }

    #[test]
    fn reads_disks_from_sysfs() {
        let dir = TestDir::new("state-create");
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(sys.join("sdb/sdb1")).unwrap();
        std::fs::write(sys.join("sdb/sdb1/partition"), "1").unwrap();
        std::fs::create_dir_all(sys.join("sdb/queue")).unwrap();
        std::fs::write(sys.join("sdb/queue/logical_block_size"), "4096\n").unwrap();
        std::fs::write(sys.join("sdb/size"), "16777216\n").unwrap();
        std::fs::create_dir_all(sys.join("sdb1")).unwrap();
        std::fs::write(sys.join("sdb1/partition"), "1").unwrap();
        std::fs::create_dir_all(sys.join("sr0")).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("sdb1"), label::tests::ext4_head("data")).unwrap();
        let mounts = "/dev/sdb1 /mnt ext4 rw 0 0\n/dev/sda1 /boot vfat rw 0 0\n";
        let d = read_disk(&sys, &dev, "sdb", mounts).unwrap();
        assert_eq!(d.size_bytes, 8 << 30);
        assert_eq!(d.sector_bytes, 4096);
        assert_eq!(d.partitions, ["sdb1"]);
        assert_eq!(d.mounted, ["mounted at /mnt"]);
        assert_eq!(d.boot_medium, None);
        std::fs::create_dir_all(sys.join("sdb1/holders/dm-0")).unwrap();
        let d = read_disk(&sys, &dev, "sdb", "").unwrap();
        assert_eq!(d.mounted, ["held by dm-0"]);
        std::fs::write(dev.join("sdb1"), label::tests::ext4_head(BOOT_LABEL)).unwrap();
        let d = read_disk(&sys, &dev, "sdb", "").unwrap();
        assert_eq!(
            d.boot_medium.as_deref(),
            Some("/dev/sdb1 is labelled KEEL-ESP")
        );
        let mut iso = vec![0u8; 0x8800];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(dev.join("sdb"), iso).unwrap();
        std::fs::write(dev.join("sdb1"), "").unwrap();
        let d = read_disk(&sys, &dev, "sdb", "").unwrap();
        assert_eq!(d.boot_medium.as_deref(), Some("an ISO 9660 image"));
        let cases = [
            ("sdb1", CreateError::IsPartition("/dev/sdb1".into())),
            ("sdz", CreateError::NoSuchDisk("sdz".into())),
            ("../sdb", CreateError::NoSuchDisk("../sdb".into())),
            ("", CreateError::NoSuchDisk("".into())),
            ("sr0", CreateError::NotADisk("/dev/sr0".into())),
        ];
        for (name, want) in cases {
            assert_eq!(read_disk(&sys, &dev, name, ""), Err(want), "{name}");
        }
        // Offered: whole disks only, each with its plan or why not.
        std::fs::create_dir_all(sys.join("vdc")).unwrap();
        std::fs::write(sys.join("vdc/size"), "2097152\n").unwrap();
        std::fs::create_dir_all(sys.join("loop0")).unwrap();
        let offered = offers(&sys, &dev, "");
        let devices: Vec<&str> = offered.iter().map(|o| o.device.as_str()).collect();
        assert_eq!(devices, ["/dev/sdb", "/dev/vdc"]);
        // sdb: its partition is held by dm-0.
        let refused = offered[0].refused.as_deref().unwrap_or_default();
        assert!(refused.contains("dm-0"), "{refused}");
        assert_eq!(offered[0].plan, None);
        assert_eq!(offered[1].size_mib, 1024);
        let plan = offered[1].plan.as_deref().unwrap_or_default();
        assert!(
            plan.starts_with("This erases /dev/vdc (1024 MiB)"),
            "{plan}"
        );
    }

    #[test]
    fn partition_names() {
        let cases = [("sdb", "sdb1"), ("vdb", "vdb1"), ("nvme0n1", "nvme0n1p1")];
        for (disk, want) in cases {
            assert_eq!(partition_name(disk, 1), want);
        }
    }

    /// The whole write on an image file: sfdisk and e2fsck accept the result, and the state scan
    /// finds the new file system by its label at the partition's offset.
    #[test]
    fn writes_a_disk_image() {
        let dir = TestDir::new("state-write");
        let path = dir.path().join("disk.img");
        let file = File::create(&path).unwrap();
        file.set_len(200 << 20).unwrap();
        let p = plan(&disk(200, &[], &[]), Some(64)).unwrap();
        write(&p, &file, 1_700_000_000).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let head = &bytes[1 << 20..(1 << 20) + label::PROBE_BYTES];
        assert_eq!(
            label::identify(head),
            Some((label::FsType::Ext4, STATE_LABEL.to_string()))
        );
        let part = dir.path().join("part.img");
        std::fs::write(&part, &bytes[1 << 20..(65 << 20)]).unwrap();
        let out = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&part)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}
