//! Persistent state: the `KEEL-STATE` partition, found by label on any disk at boot and mounted at
//! `/var/lib/keel/state`. Keel runs from RAM; what must survive a reboot (identity, the pinned
//! manager CA, network settings, VM definitions) is written there with `atomic::write_atomic`.
//!
//! PID 1 calls `init` once, before the services start; it reports on the console and records the
//! outcome in `/run/keel/state.json`, which `status()` reads from any process (agent, console).
//! A host without a state partition, or with a damaged one, still boots, from RAM only.

pub mod create;
pub mod ext4;
pub mod gpt;
pub mod label;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pid1::modules;
use crate::sys::atomic::write_atomic;
use crate::sys::mounts;
use label::{FsType, PROBE_BYTES, STATE_LABEL};

/// Where the state partition is mounted; services keep their state in subdirectories.
pub const STATE_DIR: &str = "/var/lib/keel/state";
/// PID 1's record of what it found, for the other processes.
pub const STATUS_FILE: &str = "/run/keel/state.json";
/// Incremented at every boot that mounts the partition: proof of persistence, and a boot counter.
const BOOT_COUNT_FILE: &str = "boot-count";

pub use keel_api::state::Status;

/// The state as PID 1 recorded it at boot. Missing or unreadable record: `Status::None`.
pub fn status() -> Status {
    status_from(Path::new(STATUS_FILE))
}

fn status_from(path: &Path) -> Status {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Status::None)
}

/// A block device carrying the state label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub device: PathBuf,
    pub fstype: FsType,
}

/// Block devices that cannot hold the state (or block when probed without media).
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_head(device: &Path) -> Option<Vec<u8>> {
    let mut head = vec![0u8; PROBE_BYTES];
    let mut file = File::open(device).ok()?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
    head.truncate(filled);
    Some(head)
}

/// Every device under `sys_class_block` (names) whose node in `dev` carries the state label,
/// sorted by name.
pub fn scan(sys_class_block: &Path, dev: &Path) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !skipped(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let device = dev.join(&name);
            let (fstype, label) = label::identify(&read_head(&device)?)?;
            (label == STATE_LABEL).then_some(Candidate { device, fstype })
        })
        .collect()
}

/// How long to wait for disks still being discovered: USB sticks take a second or more after
/// their driver loads (usb-storage's settle delay); SCSI/SATA scans finish within about one second.
fn discovery_wait(sys: &Path) -> Duration {
    let non_empty = |p: &str| {
        std::fs::read_dir(sys.join(p))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    let usb_storage = std::fs::read_dir(sys.join("bus/usb/drivers/usb-storage"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(':'))
        })
        .unwrap_or(false);
    if usb_storage {
        Duration::from_secs(5)
    } else if non_empty("class/scsi_host") {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    }
}

/// The module loader for this kernel, if its index is readable.
fn loader(release: &str) -> Option<modules::Loader> {
    let dir = PathBuf::from("/lib/modules").join(release);
    let index = modules::ModuleIndex::read(&dir).ok()?;
    Some(modules::Loader::new(dir, index))
}

/// Scans until a candidate appears or the discovery wait is over. Disks found after PID 1's cold
/// plug (a USB stick's SCSI disk, a slow SATA port) need their driver (sd_mod) loaded as they
/// appear, as udev would on the hotplug event: each poll runs another cold-plug pass.
fn find(loader: &mut Option<modules::Loader>) -> Vec<Candidate> {
    let started = Instant::now();
    let wait = discovery_wait(Path::new("/sys"));
    loop {
        let found = scan(Path::new("/sys/class/block"), Path::new("/dev"));
        if !found.is_empty() || started.elapsed() >= wait {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Some(loader) = loader.as_mut() {
            // Failures are drivers declining devices, as in PID 1's cold plug.
            let _ = loader.coldplug(Path::new("/sys/devices"));
        }
    }
}

/// Loads the file system driver (Debian builds ext4 and vfat as modules).
fn load_fs_module(loader: &mut Option<modules::Loader>, fstype: FsType) -> Result<(), String> {
    match loader {
        Some(loader) => loader.load(fstype.kernel_name()).map_err(|e| e.to_string()),
        None => Err(String::from("no readable module index")),
    }
}

/// Reads the boot counter (garbage counts as 0) and durably writes the next value.
fn count_boot(dir: &Path) -> Result<u64, String> {
    let path = dir.join(BOOT_COUNT_FILE);
    let previous: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let next = previous.saturating_add(1);
    write_atomic(&path, format!("{next}\n").as_bytes(), 0o644).map_err(|e| e.to_string())?;
    Ok(next)
}

/// Mounts `candidate` at `target` and proves it writable. On failure the partition is left
/// unmounted, so nothing writes to a damaged file system.
fn mount(loader: &mut Option<modules::Loader>, candidate: &Candidate, target: &Path) -> Status {
    let device = candidate.device.display().to_string();
    let damaged = |reason: String| Status::Damaged {
        device: device.clone(),
        reason,
    };
    if let Err(e) = std::fs::create_dir_all(target) {
        return damaged(format!("cannot create {}: {e}", target.display()));
    }
    let fstype = candidate.fstype.kernel_name();
    let module = load_fs_module(loader, candidate.fstype);
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // ext4 replays its journal on mount; on an error it goes read-only rather than on writing.
    let data = match candidate.fstype {
        FsType::Ext4 => "errors=remount-ro",
        FsType::Vfat => "flush",
    };
    if let Err(e) = mounts::mount_device(&candidate.device, target, fstype, flags, data) {
        return match module {
            Err(m) => damaged(format!("{e}; loading {fstype}: {m}")),
            Ok(()) => damaged(e.to_string()),
        };
    }
    match count_boot(target) {
        Ok(boot_count) => Status::Mounted {
            device,
            path: target.display().to_string(),
            fstype: fstype.to_string(),
            boot_count,
        },
        Err(e) => {
            let _ = mounts::unmount_or_readonly(&target.to_string_lossy());
            damaged(format!("not writable: {e}"))
        }
    }
}

/// PID 1 at boot: finds, mounts and records the state partition; returns the console lines.
pub fn init(release: &str) -> (Status, Vec<String>) {
    let mut loader = loader(release);
    let found = find(&mut loader);
    let (status, mut lines) = first_usable(&found, |candidate| {
        mount(&mut loader, candidate, Path::new(STATE_DIR))
    });
    lines.push(status.console_line());
    if let Err(e) = record(&status, Path::new(STATUS_FILE)) {
        lines.push(format!("keel: state: cannot record status: {e}"));
    }
    (status, lines)
}

/// Mounts the candidates in order until one works: a damaged partition sorting first does not
/// hide a good one (made on another disk after the first failed). Returns the outcome (the last
/// failure when none works) and console lines for the ones passed over.
fn first_usable(
    found: &[Candidate],
    mut mount: impl FnMut(&Candidate) -> Status,
) -> (Status, Vec<String>) {
    let mut lines = Vec::new();
    let mut status = Status::None;
    for (i, candidate) in found.iter().enumerate() {
        status = mount(candidate);
        let rest = &found[i + 1..];
        match &status {
            Status::Mounted { .. } if !rest.is_empty() => {
                let names: Vec<String> = rest
                    .iter()
                    .map(|c| c.device.display().to_string())
                    .collect();
                lines.push(format!(
                    "keel: state: also labelled {STATE_LABEL}, ignored: {}",
                    names.join(", ")
                ));
            }
            Status::Damaged { device, reason } if !rest.is_empty() => {
                lines.push(format!(
                    "keel: state: {device} is damaged ({reason}); trying the next one"
                ));
                continue;
            }
            _ => {}
        }
        break;
    }
    (status, lines)
}

/// Where PID 1 keeps settings when there is no state partition (a tmpfs: lost at reboot).
pub const RAM_DIR: &str = "/var/lib/keel";

/// The directory settings go to now: the state partition's, or `RAM_DIR`.
pub fn dir_or_ram() -> PathBuf {
    status()
        .dir()
        .map_or_else(|| PathBuf::from(RAM_DIR), Path::to_path_buf)
}

/// The whole disks of this host, each with the plan for a state partition on it or why not.
pub fn disk_offers() -> Vec<create::DiskOffer> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    create::offers(Path::new("/sys/class/block"), Path::new("/dev"), &mounts)
}

/// Creates a state partition on `disk` (`/dev/vdb` or `vdb`) once `confirm` names it, mounts it
/// at `STATE_DIR` and records it, so that services writing after this keep their settings (see
/// `copy_into` for what they wrote before). Refused while a state partition is mounted.
pub fn create_on(
    disk: &str,
    size_mib: Option<u64>,
    confirm: &str,
) -> Result<Status, create::CreateError> {
    if let Status::Mounted { device, .. } = status() {
        return Err(create::CreateError::AlreadyMounted(device));
    }
    let name = disk.strip_prefix("/dev/").unwrap_or(disk);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = create::read_disk(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        name,
        &mounts,
    )?;
    let plan = create::plan(&found, size_mib)?;
    plan.confirm(confirm)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let partition = create::carry_out(&plan, Path::new("/dev"), now)?;
    let candidate = Candidate {
        device: partition.clone(),
        fstype: FsType::Ext4,
    };
    let mut loader = loader(&crate::sys::syscall::kernel_release());
    let unusable =
        |why: String| create::CreateError::Unusable(partition.display().to_string(), why);
    let status = mount(&mut loader, &candidate, Path::new(STATE_DIR));
    if let Status::Damaged { reason, .. } = &status {
        return Err(unusable(reason.clone()));
    }
    record(&status, Path::new(STATUS_FILE)).map_err(unusable)?;
    Ok(status)
}

/// Copies `names` (files, or directories of files) from `from` into `to` durably, skipping the
/// missing ones: what a service wrote to RAM before the state partition existed. Returns what
/// could not be copied.
pub fn copy_into(from: &Path, to: &Path, names: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut copy = |src: &Path, dst: &Path| {
        let done = std::fs::read(src).and_then(|bytes| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(src)?.permissions().mode() & 0o777;
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(dst, &bytes, mode).map_err(std::io::Error::other)
        });
        if let Err(e) = done {
            problems.push(format!("{}: {e}", src.display()));
        }
    };
    for name in names {
        let src = from.join(name);
        match std::fs::read_dir(&src) {
            Ok(entries) => {
                for entry in entries.flatten().filter(|e| e.path().is_file()) {
                    copy(&entry.path(), &to.join(name).join(entry.file_name()));
                }
            }
            Err(_) if src.is_file() => copy(&src, &to.join(name)),
            Err(_) => {}
        }
    }
    problems
}

fn record(status: &Status, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = serde_json::to_vec(status).map_err(|e| e.to_string())?;
    write_atomic(path, &json, 0o644).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    #[test]
    fn the_first_partition_that_mounts_wins() {
        let cand = |name: &str| Candidate {
            device: PathBuf::from(format!("/dev/{name}")),
            fstype: FsType::Ext4,
        };
        let mounted = |c: &Candidate| Status::Mounted {
            device: c.device.display().to_string(),
            path: STATE_DIR.into(),
            fstype: "ext4".into(),
            boot_count: 1,
        };
        let damaged = |c: &Candidate| Status::Damaged {
            device: c.device.display().to_string(),
            reason: "bad superblock".into(),
        };
        // (partitions, which are damaged, the one mounted, lines before the status line)
        type Case = (
            &'static [&'static str],
            &'static [&'static str],
            Option<&'static str>,
            usize,
        );
        let cases: &[Case] = &[
            (&[], &[], None, 0),
            (&["sda3"], &[], Some("/dev/sda3"), 0),
            (&["sda3", "sdb1"], &[], Some("/dev/sda3"), 1),
            (&["sda3", "sdb1"], &["sda3"], Some("/dev/sdb1"), 1),
            (&["sda3", "sdb1", "sdc1"], &["sda3"], Some("/dev/sdb1"), 2),
            (&["sda3", "sdb1"], &["sda3", "sdb1"], None, 1),
        ];
        for (names, bad, want, lines) in cases {
            let found: Vec<Candidate> = names.iter().map(|n| cand(n)).collect();
            let mut tried = Vec::new();
            let (status, said) = first_usable(&found, |c| {
                tried.push(c.device.clone());
                let name = c.device.file_name().unwrap().to_str().unwrap();
                if bad.contains(&name) {
                    damaged(c)
                } else {
                    mounted(c)
                }
            });
            let got = match &status {
                Status::Mounted { device, .. } => Some(device.as_str()),
                _ => None,
            };
            assert_eq!(got, *want, "{names:?} {bad:?}");
            assert_eq!(said.len(), *lines, "{names:?} {bad:?}: {said:?}");
            if want.is_none() && !names.is_empty() {
                assert!(matches!(status, Status::Damaged { .. }), "{status:?}");
                assert_eq!(tried.len(), names.len(), "every one tried");
            }
        }
    }

    #[test]
    fn console_lines() {
        let cases = [
            (
                Status::Mounted {
                    device: "/dev/vda3".into(),
                    path: STATE_DIR.into(),
                    fstype: "ext4".into(),
                    boot_count: 2,
                },
                "keel: state: /dev/vda3 mounted at /var/lib/keel/state (boot 2)",
            ),
            (
                Status::None,
                "keel: state: none, running from RAM only (settings will not survive a reboot)",
            ),
            (
                Status::Damaged {
                    device: "/dev/sda3".into(),
                    reason: "bad superblock".into(),
                },
                "keel: state: /dev/sda3 is damaged (bad superblock); running from RAM only with defaults",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(status.console_line(), want);
        }
    }

    #[test]
    fn status_round_trips_through_the_record() {
        let dir = TestDir::new("state-status");
        let path = dir.path().join("run/keel/state.json");
        assert_eq!(status_from(&path), Status::None);
        let mounted = Status::Mounted {
            device: "/dev/vda3".into(),
            path: STATE_DIR.into(),
            fstype: "ext4".into(),
            boot_count: 7,
        };
        record(&mounted, &path).unwrap();
        assert_eq!(status_from(&path), mounted);
        assert_eq!(mounted.dir(), Some(Path::new(STATE_DIR)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"state\":\"mounted\""), "{text}");
        std::fs::write(&path, "{oops").unwrap();
        assert_eq!(status_from(&path), Status::None);
        assert_eq!(Status::None.dir(), None);
    }

    #[test]
    fn scan_finds_the_label_and_skips_others() {
        let dir = TestDir::new("state-scan");
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let devices: [(&str, Vec<u8>); 5] = [
            ("vda", vec![0u8; 4096]),
            ("vda2", label::tests::ext4_head("KEEL-ESP")),
            ("vda3", label::tests::ext4_head(STATE_LABEL)),
            ("loop0", label::tests::ext4_head(STATE_LABEL)),
            ("sdb1", label::tests::ext4_head(STATE_LABEL)),
        ];
        for (name, head) in devices {
            std::fs::create_dir(sys.join(name)).unwrap();
            std::fs::write(dev.join(name), head).unwrap();
        }
        std::fs::create_dir(sys.join("vdb")).unwrap(); // no device node: skipped
        let found = scan(&sys, &dev);
        let names: Vec<PathBuf> = found.iter().map(|c| c.device.clone()).collect();
        assert_eq!(names, [dev.join("sdb1"), dev.join("vda3")]);
        assert!(found.iter().all(|c| c.fstype == FsType::Ext4));
    }

    #[test]
    fn boot_counter_counts_and_tolerates_garbage() {
        let dir = TestDir::new("state-count");
        assert_eq!(count_boot(dir.path()).unwrap(), 1);
        assert_eq!(count_boot(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join(BOOT_COUNT_FILE), "x").unwrap();
        assert_eq!(count_boot(dir.path()).unwrap(), 1);
        assert!(count_boot(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn copies_what_services_wrote_to_ram() {
        let dir = TestDir::new("state-copy");
        let from = dir.path().join("ram");
        let to = dir.path().join("state/agent");
        std::fs::create_dir_all(from.join("vms")).unwrap();
        std::fs::write(from.join("host.key"), "key").unwrap();
        std::fs::write(from.join("vms/g1.json"), "{}").unwrap();
        std::fs::write(from.join("unrelated"), "x").unwrap();
        let problems = copy_into(&from, &to, &["host.key", "adoption.json", "vms"]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(std::fs::read_to_string(to.join("host.key")).unwrap(), "key");
        assert_eq!(
            std::fs::read_to_string(to.join("vms/g1.json")).unwrap(),
            "{}"
        );
        assert!(!to.join("adoption.json").exists());
        assert!(!to.join("unrelated").exists());
    }

    #[test]
    fn discovery_waits_only_for_disks_still_coming() {
        let dir = TestDir::new("state-wait");
        assert_eq!(discovery_wait(dir.path()), Duration::ZERO);
        std::fs::create_dir_all(dir.path().join("class/scsi_host/host0")).unwrap();
        assert_eq!(discovery_wait(dir.path()), Duration::from_secs(1));
        std::fs::create_dir_all(dir.path().join("bus/usb/drivers/usb-storage/1-1:1.0")).unwrap();
        assert_eq!(discovery_wait(dir.path()), Duration::from_secs(5));
    }
}
