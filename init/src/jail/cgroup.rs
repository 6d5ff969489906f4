//! One cgroup v2 group per VM under `keel.slice`: its limit files, creating and removing it, and
//! reading the events that say a VM hit a limit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JailError;

/// The VMM's own memory on top of the guest's: its binary, stacks, KVM structures, device buffers
/// (a few MiB, see `make bench`), plus page tables and file cache charged to the group.
pub const MEMORY_OVERHEAD_MIB: u64 = 64;
/// Guest page tables and KVM's shadow structures grow with guest memory: 1/64 of it.
pub const MEMORY_OVERHEAD_DIVISOR: u64 = 64;
/// Threads beyond one per vCPU: main loop, API server, and headroom for short-lived helpers.
pub const EXTRA_PIDS: u64 = 16;
/// cgroup v2's default cpu.weight, given per vCPU.
pub const CPU_WEIGHT_PER_VCPU: u64 = 100;

/// Limits of one VM's group; `None` leaves that controller alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    /// memory.max in bytes; also sets memory.swap.max to 0 (guest memory is never swapped).
    pub memory_max: Option<u64>,
    /// cpu.weight, 1 to 10000.
    pub cpu_weight: Option<u64>,
    /// cpu.max: (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    /// pids.max: processes and threads.
    pub pids_max: Option<u64>,
}

impl CgroupLimits {
    /// Guest memory plus the documented overhead, weight in proportion to vCPUs, a thread cap.
    pub fn for_vm(memory_mib: u64, vcpus: u32) -> CgroupLimits {
        let mib = memory_mib + MEMORY_OVERHEAD_MIB + memory_mib / MEMORY_OVERHEAD_DIVISOR;
        CgroupLimits {
            memory_max: Some(mib << 20),
            cpu_weight: Some((CPU_WEIGHT_PER_VCPU * u64::from(vcpus)).clamp(1, 10000)),
            cpu_max: None,
            pids_max: Some(u64::from(vcpus) + EXTRA_PIDS),
        }
    }

    pub fn validate(&self) -> Result<(), JailError> {
        let bad = |file: &'static str, value: String| Err(JailError::BadLimit(file, value));
        if let Some(w) = self.cpu_weight.filter(|w| !(1..=10000).contains(w)) {
            return bad("cpu.weight", w.to_string());
        }
        if let Some((quota, period)) = self.cpu_max {
            if quota < 1000 || !(1000..=1_000_000).contains(&period) {
                return bad("cpu.max", format!("{quota} {period}"));
            }
        }
        if self.pids_max == Some(0) {
            return bad("pids.max", "0".into());
        }
        if self.memory_max.is_some_and(|m| m < 1 << 20) {
            return bad("memory.max", format!("{:?}", self.memory_max));
        }
        Ok(())
    }

    /// The controllers these limits need enabled in the parent's cgroup.subtree_control.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory_max.is_some() {
            c.push("memory");
        }
        if self.cpu_weight.is_some() || self.cpu_max.is_some() {
            c.push("cpu");
        }
        if self.pids_max.is_some() {
            c.push("pids");
        }
        c
    }

    /// (file, content) to write into the group, in order.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = Vec::new();
        if let Some(max) = self.memory_max {
            files.push(("memory.max", max.to_string()));
            files.push(("memory.swap.max", "0".to_string()));
        }
        if let Some(weight) = self.cpu_weight {
            files.push(("cpu.weight", weight.to_string()));
        }
        if let Some((quota, period)) = self.cpu_max {
            files.push(("cpu.max", format!("{quota} {period}")));
        }
        if let Some(max) = self.pids_max {
            files.push(("pids.max", max.to_string()));
        }
        files
    }
}

pub use keel_api::vm::CgroupEvents;

/// The group of VM `vm_id` under `slice`.
pub fn group_dir(slice: &Path, vm_id: &str) -> PathBuf {
    slice.join(format!("vm-{vm_id}"))
}

fn write(path: &Path, content: &str) -> Result<(), JailError> {
    fs::write(path, content).map_err(|e| JailError::Cgroup(path.to_path_buf(), content.into(), e))
}

/// Enables `controllers` for the children of `dir` (already enabled ones are left alone).
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), JailError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&path).unwrap_or_default();
    for c in controllers {
        if !enabled.split_whitespace().any(|e| e == *c) {
            write(&path, &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Creates the VM's group under `slice` (and `slice` under its parent), enables what the limits
/// need, writes them, and returns the group's directory. A group left over from an earlier VM
/// with the same id is an error: its owner must clean up first.
pub fn create(slice: &Path, vm_id: &str, limits: &CgroupLimits) -> Result<PathBuf, JailError> {
    let controllers = limits.controllers();
    if let Some(parent) = slice.parent() {
        enable_controllers(parent, &controllers)?;
    }
    match fs::create_dir(slice) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(JailError::CreateDir(slice.to_path_buf(), e)),
    }
    enable_controllers(slice, &controllers)?;
    let dir = group_dir(slice, vm_id);
    fs::create_dir(&dir).map_err(|e| JailError::CreateDir(dir.clone(), e))?;
    for (file, content) in limits.files() {
        let path = dir.join(file);
        // Without swap accounting (no swap at all) there is no memory.swap.max to set.
        if file == "memory.swap.max" && !path.exists() {
            continue;
        }
        if let Err(e) = write(&path, &content) {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}

/// Reads the VM group's limit events.
pub fn events(slice: &Path, vm_id: &str) -> Result<CgroupEvents, JailError> {
    let dir = group_dir(slice, vm_id);
    let read = |name: &str| match fs::read_to_string(dir.join(name)) {
        Ok(text) => Ok(text),
        // A controller that is not enabled has no events file: it cannot have fired.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => Ok(String::new()),
        Err(e) => Err(JailError::Read(dir.join(name), e)),
    };
    Ok(CgroupEvents::parse(
        &read("memory.events")?,
        &read("pids.events")?,
    ))
}

/// Kills whatever is left in the VM's group and removes it. A missing group is fine.
pub fn remove(slice: &Path, vm_id: &str) -> Result<(), JailError> {
    let dir = group_dir(slice, vm_id);
    if !dir.exists() {
        return Ok(());
    }
    let procs = dir.join("cgroup.procs");
    if fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    // Killed processes leave the group asynchronously; rmdir is EBUSY until they have.
    let mut last = None;
    for _ in 0..100 {
        match fs::remove_dir(&dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(JailError::Remove(
        dir,
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::ResourceBusy)),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vm_limits_are_guest_memory_plus_overhead() {
        let cases = [
            (128, 1, (128 + 64 + 2) << 20, 100, 17),
            (512, 2, (512 + 64 + 8) << 20, 200, 18),
            (4096, 200, (4096 + 64 + 64) << 20, 10000, 216),
        ];
        for (mib, vcpus, memory, weight, pids) in cases {
            let l = CgroupLimits::for_vm(mib, vcpus);
            assert_eq!(l.memory_max, Some(memory), "{mib} MiB");
            assert_eq!(l.cpu_weight, Some(weight), "{vcpus} vCPUs");
            assert_eq!(l.pids_max, Some(pids), "{vcpus} vCPUs");
            l.validate().unwrap();
        }
    }

    #[test]
    fn limit_files_and_controllers() {
        let l = CgroupLimits {
            memory_max: Some(1 << 30),
            cpu_weight: Some(200),
            cpu_max: Some((50_000, 100_000)),
            pids_max: Some(20),
        };
        assert_eq!(
            l.files(),
            vec![
                ("memory.max", "1073741824".to_string()),
                ("memory.swap.max", "0".to_string()),
                ("cpu.weight", "200".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "20".to_string()),
            ]
        );
        assert_eq!(l.controllers(), vec!["memory", "cpu", "pids"]);
        let none = CgroupLimits::default();
        assert!(none.files().is_empty() && none.controllers().is_empty());
    }

    #[test]
    fn bad_limits_are_named() {
        let cases = [
            (
                CgroupLimits {
                    cpu_weight: Some(0),
                    ..Default::default()
                },
                "cpu.weight",
            ),
            (
                CgroupLimits {
                    cpu_weight: Some(10001),
                    ..Default::default()
                },
                "cpu.weight",
            ),
            (
                CgroupLimits {
                    cpu_max: Some((10, 100_000)),
                    ..Default::default()
                },
                "cpu.max",
            ),
            (
                CgroupLimits {
                    pids_max: Some(0),
                    ..Default::default()
                },
                "pids.max",
            ),
            (
                CgroupLimits {
                    memory_max: Some(4096),
                    ..Default::default()
                },
                "memory.max",
            ),
        ];
        for (limits, file) in cases {
            let err = limits.validate().unwrap_err().to_string();
            assert!(err.contains(file), "{err}");
        }
    }

    #[test]
    fn events_are_parsed_from_both_files() {
        let memory = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        let pids = "max 3\n";
        let e = CgroupEvents::parse(memory, pids);
        assert_eq!(
            e,
            CgroupEvents {
                memory_max: 12,
                oom: 2,
                oom_kill: 1,
                pids_max: 3
            }
        );
        assert!(e.any());
        assert!(!CgroupEvents::parse("", "").any());
        assert_eq!(CgroupEvents::parse("max x\n", "").memory_max, 0);
    }
}
