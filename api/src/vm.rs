//! VMs as the agent's API defines them: a definition ([`VmSpec`]) refers to images by name; its
//! status says where it is and how its last run ended.

use crate::limits::{self, LimitError};
use serde::{Deserialize, Serialize};

/// `GET` → [`VmList`]; `POST` [`VmSpec`] → [`VmStatus`]: list and define VMs.
pub const VMS: &str = "/v1/vms";
/// `GET` → [`VmStatus`]; `DELETE` (stopped VMs only) → [`VmStatus`].
pub const VM: &str = "/v1/vms/{name}";
/// `POST` → [`VmStatus`]: start a stopped VM.
pub const VM_START: &str = "/v1/vms/{name}/start";
/// `POST` → [`VmStatus`]: press the VM's ACPI power button.
pub const VM_SHUTDOWN: &str = "/v1/vms/{name}/shutdown";
/// `POST` → [`VmStatus`]: stop the VM at once.
pub const VM_POWEROFF: &str = "/v1/vms/{name}/poweroff";
/// `POST` → [`VmStatus`].
pub const VM_PAUSE: &str = "/v1/vms/{name}/pause";
/// `POST` → [`VmStatus`].
pub const VM_RESUME: &str = "/v1/vms/{name}/resume";
/// `GET`: the serial console's recent output (text/plain); `?follow=true` keeps streaming it.
pub const VM_CONSOLE: &str = "/v1/vms/{name}/console";
/// What a VM does when its guest or its VMM crashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCrash {
    /// Stay stopped, with the exit reason recorded.
    #[default]
    Stop,
    /// Start again (with back-off), like a guest reboot.
    Restart,
}

/// A VM definition: images are referred to by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// 1 to 63 lowercase letters, digits and '-', starting with a letter or digit.
    pub name: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Name of a `kernel` image.
    pub kernel: String,
    /// Name of an `initrd` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default)]
    pub on_crash: OnCrash,
    /// virtio-blk disks, in order (the guest sees vda, vdb, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmDisk>,
    /// virtio-net NICs, each on a tap device the VMM attaches to a host bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<VmNic>,
}

impl VmSpec {
    /// The limits keel-vmm applies to vCPUs, memory and the command line ([`crate::limits`]),
    /// checked at `define` so that a VM that cannot start is refused there. Only the host's own
    /// limits (KVM's vCPU count, its memory) are left for the start.
    pub fn check_limits(&self) -> Result<(), LimitError> {
        limits::check_vcpus(self.vcpus)?;
        limits::check_memory_mib(self.memory_mib)?;
        limits::check_cmdline(&self.cmdline)
    }
}

/// Whether a VM uses a disk image itself or a copy of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskCopy {
    /// A private copy made when the VM is defined: copy-on-write (a reflink) where the data
    /// store's file system can, a full sparse copy otherwise. The image can then change or go.
    #[default]
    Copy,
    /// The image itself: read-only ones can be shared; a writable one belongs to this VM.
    Shared,
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// Name of a `disk` image.
    pub image: String,
    #[serde(default)]
    pub copy: DiskCopy,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 ASCII characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// One NIC of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    /// The host bridge to join (the management bridge `keelbr0` by default).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// `52:54:00:xx:xx:xx`; derived from the VM's name and the NIC's index when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn default_bridge() -> String {
    "keelbr0".into()
}

fn default_cmdline() -> String {
    "console=ttyS0".into()
}

/// Where a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Stopped,
    /// Accepted by `start` (or restarting by policy): the agent is setting up the jail and
    /// waiting for keel-vmm's control socket. It becomes `running`, or `stopped` with `error`.
    Starting,
    Running,
    Paused,
    ShuttingDown,
}

/// How a VM's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmExit {
    /// keel-vmm's exit status, when known (not for a VMM that ended while the agent was away).
    pub code: Option<i32>,
    /// What the status means (keel-vmm's documented exit reasons), or the signal.
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// A VM as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStatus {
    pub spec: VmSpec,
    pub state: VmState,
    /// The keel-vmm process, while running.
    pub pid: Option<u32>,
    /// Restarts after crashes or guest reboots since the agent started.
    pub restarts: u32,
    pub last_exit: Option<VmExit>,
    /// Why the last start failed (the jail could not be set up, or keel-vmm ended or did not
    /// answer before it ran, with the end of its log); cleared when the VM starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The jail and cgroup of the current run (of the last one once stopped); absent when the
    /// agent runs VMMs unjailed (in-process tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<VmJail>,
}

/// How a VM's keel-vmm is boxed in, and how often it hit its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmJail {
    /// The unprivileged uid (and gid) keel-vmm runs as.
    pub uid: u32,
    /// Its cgroup v2 directory.
    pub cgroup: String,
    /// memory.max in bytes: guest memory plus the documented overhead.
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub pids_max: Option<u64>,
    /// memory.events and pids.events counters: non-zero means the VM hit a limit.
    pub events: CgroupEvents,
}

/// Answer to `GET` [`VMS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    pub vms: Vec<VmStatus>,
}

/// How often a VM's group hit its limits (memory.events and pids.events counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupEvents {
    /// Times memory use hit memory.max and reclaim ran.
    pub memory_max: u64,
    /// Times the OOM killer was invoked for the group.
    pub oom: u64,
    /// Processes the OOM killer killed in the group.
    pub oom_kill: u64,
    /// Times a fork or thread creation was refused by pids.max.
    pub pids_max: u64,
}

impl CgroupEvents {
    /// Any limit hit at all.
    pub fn any(&self) -> bool {
        *self != CgroupEvents::default()
    }

    /// From the contents of memory.events and pids.events ("key value" lines; missing is 0).
    pub fn parse(memory_events: &str, pids_events: &str) -> CgroupEvents {
        let field = |text: &str, key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0)
        };
        CgroupEvents {
            memory_max: field(memory_events, "max"),
            oom: field(memory_events, "oom"),
            oom_kill: field(memory_events, "oom_kill"),
            pids_max: field(pids_events, "max"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        serde_json::from_str(r#"{"name":"g1","vcpus":1,"memory_mib":64,"kernel":"k"}"#).unwrap()
    }

    #[test]
    fn defaults_fill_in_and_absent_fields_stay_absent() {
        let s = spec();
        assert_eq!(s.cmdline, "console=ttyS0");
        assert_eq!(s.on_crash, OnCrash::Stop);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"g1","vcpus":1,"memory_mib":64,"kernel":"k","cmdline":"console=ttyS0","on_crash":"stop"}"#
        );
        let nic: VmNic = serde_json::from_str("{}").unwrap();
        assert_eq!(nic.bridge, "keelbr0");
        let err = serde_json::from_str::<VmSpec>(
            r#"{"name":"g1","vcpus":1,"memory_mib":64,"kernel":"k","cpus":2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
    }

    #[test]
    fn the_largest_rhev_guest_is_accepted_at_define() {
        let big = VmSpec {
            vcpus: 160,
            memory_mib: 2 << 20,
            ..spec()
        };
        big.check_limits().unwrap();
        let cases: Vec<(VmSpec, &str)> = vec![
            (VmSpec { vcpus: 0, ..spec() }, "vcpus 0"),
            (
                VmSpec {
                    vcpus: 255,
                    ..spec()
                },
                "vcpus 255",
            ),
            (
                VmSpec {
                    memory_mib: 8,
                    ..spec()
                },
                "memory_mib 8",
            ),
            (
                VmSpec {
                    memory_mib: (2 << 20) + 1,
                    ..spec()
                },
                "memory_mib 2097153",
            ),
            (
                VmSpec {
                    cmdline: "a".repeat(2048),
                    ..spec()
                },
                "cmdline: 2048 bytes",
            ),
        ];
        for (s, want) in cases {
            let err = s.check_limits().unwrap_err().to_string();
            assert!(err.starts_with(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn status_json_is_unchanged() {
        let status = VmStatus {
            spec: spec(),
            state: VmState::ShuttingDown,
            pid: Some(7),
            restarts: 1,
            last_exit: Some(VmExit {
                code: Some(3),
                reason: "the guest rebooted".into(),
                at: 5,
            }),
            error: None,
            jail: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"spec":{"name":"g1","vcpus":1,"memory_mib":64,"kernel":"k","cmdline":"console=ttyS0","on_crash":"stop"},"#,
                r#""state":"shutting-down","pid":7,"restarts":1,"last_exit":{"code":3,"reason":"the guest rebooted","at":5}}"#
            )
        );
        assert_eq!(serde_json::from_str::<VmStatus>(&json).unwrap(), status);
    }
}
