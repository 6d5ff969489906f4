//! Creating a state partition on a local disk the operator chooses (console or API). This part is
//! the decision: what would be erased and created, and the confirmation that must name the disk.
//! Nothing here writes to a disk.

use std::path::Path;

use super::label::STATE_LABEL;

/// Smallest state partition worth creating (an ext4 journal alone takes 4 MiB).
pub const MIN_MIB: u64 = 16;
/// The partition starts 1 MiB in; the backup GPT takes the disk's last 33 sectors.
const START_BYTES: u64 = 1 << 20;
const GPT_TAIL_BYTES: u64 = 33 * 512;

/// A local disk as the kernel describes it in /sys/class/block/<name>.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, `sdb`.
    pub name: String,
    pub size_bytes: u64,
    /// Its partitions' kernel names.
    pub partitions: Vec<String>,
    /// Mount points on the disk or its partitions.
    pub mounted: Vec<String>,
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
    pub label: &'static str,
}

/// Why the plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// {0} is in use (mounted at {1}); choose another disk
    #[error("{0} is in use (mounted at {1}); choose another disk")]
    InUse(String, String),
    /// {0} has {1} MiB; a state partition needs at least {2} MiB
    #[error("{0} has {1} MiB; a state partition needs at least {2} MiB")]
    TooSmall(String, u64, u64),
    /// Requested size {0} MiB is below the minimum of {1} MiB
    #[error("Requested size {0} MiB is below the minimum of {1} MiB")]
    SizeTooSmall(u64, u64),
    /// Confirmation {0:?} does not name the disk {1}; nothing was changed
    #[error("Confirmation {0:?} does not name the disk {1}; nothing was changed")]
    NotConfirmed(String, String),
    /// No disk {0} in /sys/class/block
    #[error("No disk {0} in /sys/class/block")]
    NoSuchDisk(String),
    /// {0} is a partition; choose the whole disk
    #[error("{0} is a partition; choose the whole disk")]
    IsPartition(String),
}

/// The plan for `disk`: the whole disk becomes GPT with one ext4 partition labelled KEEL-STATE of
/// `size_mib` (or the whole disk when None or larger than the disk).
pub fn plan(disk: &Disk, size_mib: Option<u64>) -> Result<Plan, CreateError> {
    let device = format!("/dev/{}", disk.name);
    if let Some(point) = disk.mounted.first() {
        return Err(CreateError::InUse(device, point.clone()));
    }
    if let Some(mib) = size_mib.filter(|&m| m < MIN_MIB) {
        return Err(CreateError::SizeTooSmall(mib, MIN_MIB));
    }
    let room = disk.size_bytes.saturating_sub(START_BYTES + GPT_TAIL_BYTES) / (1 << 20) * (1 << 20);
    if room < MIN_MIB << 20 {
        return Err(CreateError::TooSmall(
            device,
            disk.size_bytes >> 20,
            MIN_MIB,
        ));
    }
    let size_bytes = size_mib.map_or(room, |m| (m << 20).min(room));
    Ok(Plan {
        device,
        disk_bytes: disk.size_bytes,
        erases: disk.partitions.clone(),
        start_bytes: START_BYTES,
        size_bytes,
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

/// Describes disk `name` from `sys_class_block` and the mount table text.
pub fn read_disk(sys_class_block: &Path, name: &str, mounts: &str) -> Result<Disk, CreateError> {
    let dir = sys_class_block.join(name);
    if name.contains('/') || !dir.is_dir() {
        return Err(CreateError::NoSuchDisk(name.to_string()));
    }
    if dir.join("partition").exists() {
        return Err(CreateError::IsPartition(format!("/dev/{name}")));
    }
    let sectors: u64 = std::fs::read_to_string(dir.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
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
    let mounted = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let source = f.next()?;
            let target = f.next()?;
            ours(source).then(|| target.to_string())
        })
        .collect();
    Ok(Disk {
        name: name.to_string(),
        size_bytes: sectors * 512,
        partitions,
        mounted,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::atomic::testdir::TestDir;

    fn disk(size_mib: u64, partitions: &[&str], mounted: &[&str]) -> Disk {
        Disk {
            name: "sdb".into(),
            size_bytes: size_mib << 20,
            partitions: partitions.iter().map(|s| s.to_string()).collect(),
            mounted: mounted.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plans_and_refusals() {
        let cases: Vec<(Disk, Option<u64>, Result<u64, CreateError>)> = vec![
            (disk(8192, &[], &[]), Some(64), Ok(64)),
            (disk(8192, &["sdb1"], &[]), None, Ok(8190)),
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
                disk(8192, &["sdb1"], &["/var/lib/keel/state"]),
                Some(64),
                Err(CreateError::InUse(
                    "/dev/sdb".into(),
                    "/var/lib/keel/state".into(),
                )),
            ),
        ];
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
        let sys = dir.path();
        std::fs::create_dir_all(sys.join("sdb/sdb1")).unwrap();
        std::fs::write(sys.join("sdb/sdb1/partition"), "1").unwrap();
        std::fs::create_dir_all(sys.join("sdb/queue")).unwrap();
        std::fs::write(sys.join("sdb/size"), "16777216\n").unwrap();
        std::fs::create_dir_all(sys.join("sdb1")).unwrap();
        std::fs::write(sys.join("sdb1/partition"), "1").unwrap();
        let mounts = "/dev/sdb1 /mnt ext4 rw 0 0\n/dev/sda1 /boot vfat rw 0 0\n";
        let d = read_disk(sys, "sdb", mounts).unwrap();
        assert_eq!(d.size_bytes, 8 << 30);
        assert_eq!(d.partitions, ["sdb1"]);
        assert_eq!(d.mounted, ["/mnt"]);
        assert_eq!(
            read_disk(sys, "sdb1", ""),
            Err(CreateError::IsPartition("/dev/sdb1".into()))
        );
        assert_eq!(
            read_disk(sys, "sdz", ""),
            Err(CreateError::NoSuchDisk("sdz".into()))
        );
        assert_eq!(
            read_disk(sys, "../sdb", ""),
            Err(CreateError::NoSuchDisk("../sdb".into()))
        );
    }
}
