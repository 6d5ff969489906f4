//! keel-vmm's interface: its configuration (`vm.json`, written by the agent, read by keel-vmm),
//! its control API's types (`GET /vm`) and its exit statuses.
//!
//! [`VmConfig::check_limits`] checks what does not depend on the host, with the same limits the
//! agent applies at `define` ([`crate::limits`]); keel-vmm then checks what does (files, KVM's
//! vCPU limit).

use crate::limits::{self, LimitError};
use crate::net::{IfName, IfNameError, MacAddr, MacError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// One VM, as `vm.json` holds it. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1 up to [`limits::MAX_VCPUS`] and what KVM reports.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Kernel image: bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Where the guest's COM1 output goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// virtio-blk disks, in PCI slot order (the guest names them vda, vdb, …).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs on tap devices.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// A virtio-rng entropy device.
    #[serde(default)]
    pub rng: bool,
}

/// Destination of the guest's serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SerialRepr", into = "SerialRepr")]
pub enum SerialConfig {
    /// The VMM's standard output (and standard input feeds the guest).
    #[default]
    Stdout,
    /// Appended to a file.
    File { path: PathBuf },
    /// A unix socket the VMM listens on; one client at a time reads and writes the console.
    Socket { path: PathBuf },
    /// Discarded.
    Off,
}

/// How `serial` is spelled in JSON. serde ignores `deny_unknown_fields` on the unit variants of an
/// internally tagged enum (`{"mode": "off", "typo": 1}` would pass), so every variant here is a
/// struct variant, which does reject unknown fields.
#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum SerialRepr {
    Stdout {},
    File { path: PathBuf },
    Socket { path: PathBuf },
    Off {},
}

impl From<SerialRepr> for SerialConfig {
    fn from(repr: SerialRepr) -> Self {
        match repr {
            SerialRepr::Stdout {} => SerialConfig::Stdout,
            SerialRepr::File { path } => SerialConfig::File { path },
            SerialRepr::Socket { path } => SerialConfig::Socket { path },
            SerialRepr::Off {} => SerialConfig::Off,
        }
    }
}

impl From<SerialConfig> for SerialRepr {
    fn from(config: SerialConfig) -> Self {
        match config {
            SerialConfig::Stdout => SerialRepr::Stdout {},
            SerialConfig::File { path } => SerialRepr::File { path },
            SerialConfig::Socket { path } => SerialRepr::Socket { path },
            SerialConfig::Off => SerialRepr::Off {},
        }
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The guest cannot write (VIRTIO_BLK_F_RO; the file is opened read-only).
    #[serde(default)]
    pub read_only: bool,
    /// Identity the guest reads with GET_ID (`/sys/block/vdX/serial`), at most 20 ASCII bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Opens the image with O_DIRECT (no host page cache).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
}

/// One virtio-net NIC on a tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Tap interface name; created (or attached if it exists) by the VMM. Default: `keeltapN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The guest's MAC address, `52:54:00:12:34:56`.
    pub mac: MacAddr,
    /// Linux bridge the tap joins (absent when the agent made and bridged the tap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

/// A `vm.json` value outside the limits, naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLimitError {
    /// vcpus, memory_mib or cmdline
    Limit(LimitError),
    /// serial path {path}: longer than the 107 bytes a unix socket address holds
    SocketPathTooLong { path: PathBuf },
    /// disks[{index}] {path}: also used by disks[{first}]
    DiskTwice {
        index: usize,
        first: usize,
        path: PathBuf,
    },
    /// nics[{index}] mac {mac:?}: {reason}
    BadMac {
        index: usize,
        mac: MacAddr,
        reason: MacError,
    },
    /// nics[{index}] mac {mac}: also used by nics[{first}]
    MacTwice {
        index: usize,
        first: usize,
        mac: MacAddr,
    },
    /// nics[{index}] {field} {name:?}: not an interface name (...)
    BadIfName {
        index: usize,
        field: &'static str,
        error: IfNameError,
    },
    /// {count} virtio devices: at most 31 fit on the PCI bus
    TooManyDevices { count: usize },
}

impl fmt::Display for ConfigLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(e) => e.fmt(f),
            Self::SocketPathTooLong { path } => write!(
                f,
                "serial path {}: longer than the {} bytes a unix socket address holds",
                path.display(),
                limits::MAX_SOCKET_PATH_LEN
            ),
            Self::DiskTwice { index, first, path } => write!(
                f,
                "disks[{index}] {}: also used by disks[{first}]",
                path.display()
            ),
            Self::BadMac { index, mac, reason } => {
                write!(f, "nics[{index}] mac \"{mac}\": {reason}")
            }
            Self::MacTwice { index, first, mac } => {
                write!(f, "nics[{index}] mac {mac}: also used by nics[{first}]")
            }
            Self::BadIfName {
                index,
                field,
                error,
            } => write!(
                f,
                "nics[{index}] {field} {:?}: not an interface name ({})",
                error.name,
                IfNameError::RULE
            ),
            Self::TooManyDevices { count } => write!(
                f,
                "{count} virtio devices: at most {} fit on the PCI bus",
                limits::MAX_VIRTIO_DEVICES
            ),
        }
    }
}

impl std::error::Error for ConfigLimitError {}

impl From<LimitError> for ConfigLimitError {
    fn from(e: LimitError) -> Self {
        Self::Limit(e)
    }
}

impl VmConfig {
    /// Checks every value that does not depend on the host against [`crate::limits`]; the same
    /// checks the agent makes at `define`.
    pub fn check_limits(&self) -> Result<(), ConfigLimitError> {
        limits::check_vcpus(self.vcpus)?;
        limits::check_memory_mib(self.memory_mib.into())?;
        limits::check_cmdline(&self.cmdline)?;
        if let SerialConfig::Socket { path } = &self.serial {
            if path.as_os_str().len() > limits::MAX_SOCKET_PATH_LEN {
                return Err(ConfigLimitError::SocketPathTooLong { path: path.clone() });
            }
        }
        let count = self.disks.len() + self.nics.len() + usize::from(self.rng);
        if count > limits::MAX_VIRTIO_DEVICES {
            return Err(ConfigLimitError::TooManyDevices { count });
        }
        for (index, disk) in self.disks.iter().enumerate() {
            if let Some(first) = self.disks[..index].iter().position(|d| d.path == disk.path) {
                return Err(ConfigLimitError::DiskTwice {
                    index,
                    first,
                    path: disk.path.clone(),
                });
            }
            if let Some(serial) = &disk.serial {
                limits::check_disk_serial(&format!("disks[{index}] serial"), serial)?;
            }
        }
        for (index, nic) in self.nics.iter().enumerate() {
            nic.mac
                .check_unicast()
                .map_err(|reason| ConfigLimitError::BadMac {
                    index,
                    mac: nic.mac,
                    reason,
                })?;
            if let Some(first) = self.nics[..index].iter().position(|n| n.mac == nic.mac) {
                return Err(ConfigLimitError::MacTwice {
                    index,
                    first,
                    mac: nic.mac,
                });
            }
            for (field, name) in [("tap", &nic.tap), ("bridge", &nic.bridge)] {
                if let Some(name) = name {
                    IfName::new(name.as_str()).map_err(|error| ConfigLimitError::BadIfName {
                        index,
                        field,
                        error,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// `GET /vm` → [`VmInfo`]. The other endpoints (`PUT`, answered `{}` or an error) are
/// `/vm/pause`, `/vm/resume`, `/vm/shutdown`, `/vm/power-off` (vmm/API.md).
pub const VM_INFO: &str = "/vm";

/// Run state of the VM as keel-vmm's control API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// vCPUs are running guest code.
    Running,
    /// vCPUs are parked by a pause request.
    Paused,
    /// The VM is stopping; the process is about to exit.
    ShuttingDown,
}

/// What `GET /vm` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// keel-vmm's version.
    pub vmm_version: String,
    /// Microseconds since the VMM started.
    pub uptime_us: u64,
}

/// Why keel-vmm ended. [`ExitReason::code`] is the process exit status: part of keel-vmm's
/// interface (the agent records it as the reason a VM stopped), so each value is stable and
/// documented in vmm/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5).
    GuestPowerOff,
    /// The VMM failed: set-up or a runtime error of its own (logged).
    VmmError,
    /// The configuration or the command line was invalid (logged with the offending value).
    BadConfig,
    /// The guest asked for a reboot (i8042 reset line or ACPI reset); the agent restarts it.
    GuestReboot,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported an internal error, a failed entry or an emulation failure.
    KvmError,
    /// The host powered the VM off: the API's power-off or SIGTERM.
    HostPowerOff,
}

impl ExitReason {
    /// Every reason, in exit-code order.
    pub const ALL: [ExitReason; 7] = [
        ExitReason::GuestPowerOff,
        ExitReason::VmmError,
        ExitReason::BadConfig,
        ExitReason::GuestReboot,
        ExitReason::TripleFault,
        ExitReason::KvmError,
        ExitReason::HostPowerOff,
    ];

    /// The reason whose exit status is `code`, if any.
    pub fn from_code(code: i32) -> Option<ExitReason> {
        Self::ALL.into_iter().find(|r| i32::from(r.code()) == code)
    }

    /// The process exit status for this reason.
    pub fn code(self) -> u8 {
        match self {
            ExitReason::GuestPowerOff => 0,
            ExitReason::VmmError => 1,
            ExitReason::BadConfig => 2,
            ExitReason::GuestReboot => 3,
            ExitReason::TripleFault => 4,
            ExitReason::KvmError => 5,
            ExitReason::HostPowerOff => 6,
        }
    }

    /// What it means, for a VM's status.
    pub fn describe(self) -> &'static str {
        match self {
            ExitReason::GuestPowerOff => "the guest powered off",
            ExitReason::VmmError => "keel-vmm failed (see vmm.log)",
            ExitReason::BadConfig => "bad VM configuration (see vmm.log)",
            ExitReason::GuestReboot => "the guest rebooted",
            ExitReason::TripleFault => "the guest triple-faulted",
            ExitReason::KvmError => "KVM failed",
            ExitReason::HostPowerOff => "powered off by the host",
        }
    }

    /// Whether the VM crashed (its `on_crash` policy applies), rather than stopped as asked.
    pub fn is_crash(self) -> bool {
        matches!(
            self,
            ExitReason::VmmError | ExitReason::TripleFault | ExitReason::KvmError
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> VmConfig {
        VmConfig {
            vcpus: 2,
            memory_mib: 256,
            kernel: "/vm/kernel".into(),
            initrd: Some("/vm/initrd".into()),
            cmdline: "console=ttyS0".into(),
            serial: SerialConfig::Socket {
                path: "/run/vm/console.sock".into(),
            },
            disks: vec![
                DiskConfig {
                    path: "/vm/disk0".into(),
                    read_only: false,
                    serial: None,
                    direct: false,
                },
                DiskConfig {
                    path: "/vm/disk1".into(),
                    read_only: true,
                    serial: Some("seed".into()),
                    direct: false,
                },
            ],
            nics: vec![NicConfig {
                tap: Some("kt01234567n0".into()),
                mac: "52:54:00:12:34:56".parse().unwrap(),
                bridge: None,
            }],
            rng: true,
        }
    }

    #[test]
    fn vm_json_round_trips_and_reads_as_the_agent_wrote_it() {
        let config = config();
        let json = serde_json::to_value(&config).unwrap();
        // What the agent wrote with `json!` before the type existed.
        let old = serde_json::json!({
            "vcpus": 2,
            "memory_mib": 256,
            "kernel": "/vm/kernel",
            "initrd": "/vm/initrd",
            "cmdline": "console=ttyS0",
            "serial": {"mode": "socket", "path": "/run/vm/console.sock"},
            "disks": [
                {"path": "/vm/disk0", "read_only": false},
                {"path": "/vm/disk1", "read_only": true, "serial": "seed"}
            ],
            "nics": [{"tap": "kt01234567n0", "mac": "52:54:00:12:34:56"}],
            "rng": true,
        });
        assert_eq!(json, old);
        let back: VmConfig = serde_json::from_value(old).unwrap();
        assert_eq!(back, config);
        for serial in [
            SerialConfig::Stdout,
            SerialConfig::Off,
            SerialConfig::File {
                path: "/log".into(),
            },
        ] {
            let text = serde_json::to_string(&serial).unwrap();
            assert_eq!(serde_json::from_str::<SerialConfig>(&text).unwrap(), serial);
        }
        assert_eq!(
            serde_json::to_string(&SerialConfig::Off).unwrap(),
            r#"{"mode":"off"}"#
        );
    }

    #[test]
    fn limits_table() {
        type Edit = fn(&mut VmConfig);
        let cases: &[(&str, Edit, Option<&str>)] = &[
            ("valid", |_| {}, None),
            (
                "RHEV's largest guest",
                |c| {
                    c.vcpus = 160;
                    c.memory_mib = 2 << 20;
                },
                None,
            ),
            (
                "no vcpus",
                |c| c.vcpus = 0,
                Some("vcpus 0: must be at least 1"),
            ),
            (
                "255 vcpus",
                |c| c.vcpus = 255,
                Some("vcpus 255: at most 254"),
            ),
            ("tiny", |c| c.memory_mib = 15, Some("memory_mib 15: below")),
            (
                "above 2 TiB",
                |c| c.memory_mib = (2 << 20) + 1,
                Some("memory_mib 2097153: above the maximum of 2097152 MiB (2 TiB)"),
            ),
            (
                "cmdline",
                |c| c.cmdline = "a\nb".into(),
                Some("cmdline: byte 1 is 0x0a"),
            ),
            (
                "long socket path",
                |c| {
                    c.serial = SerialConfig::Socket {
                        path: Path::new("/").join("s".repeat(120)),
                    }
                },
                Some("longer than the 107 bytes a unix socket address holds"),
            ),
            (
                "disk twice",
                |c| c.disks[1].path = "/vm/disk0".into(),
                Some("disks[1] /vm/disk0: also used by disks[0]"),
            ),
            (
                "long serial",
                |c| c.disks[1].serial = Some("x".repeat(21)),
                Some("disks[1] serial"),
            ),
            (
                "spaced serial",
                |c| c.disks[1].serial = Some("a b".into()),
                Some("printable ASCII"),
            ),
            (
                "multicast mac",
                |c| c.nics[0].mac = "ff:ff:ff:ff:ff:ff".parse().unwrap(),
                Some("nics[0] mac \"ff:ff:ff:ff:ff:ff\": is a multicast address"),
            ),
            (
                "mac twice",
                |c| c.nics.push(c.nics[0].clone()),
                Some("nics[1] mac 52:54:00:12:34:56: also used by nics[0]"),
            ),
            (
                "bad tap",
                |c| c.nics[0].tap = Some("tap/0".into()),
                Some("nics[0] tap \"tap/0\""),
            ),
            (
                "long bridge",
                |c| c.nics[0].bridge = Some("b".repeat(16)),
                Some("nics[0] bridge"),
            ),
            (
                "too many devices",
                |c| {
                    c.disks = (0..31)
                        .map(|i| DiskConfig {
                            path: format!("/d{i}").into(),
                            read_only: true,
                            serial: None,
                            direct: false,
                        })
                        .collect()
                },
                Some("33 virtio devices: at most 31"),
            ),
        ];
        for (name, edit, want) in cases {
            let mut c = config();
            edit(&mut c);
            let got = c.check_limits().err().map(|e| e.to_string());
            match (&got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w), "{name}: {g:?} lacks {w:?}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn vm_info_reads_as_keel_vmm_writes_it() {
        let text = r#"{"state":"shutting_down","vcpus":2,"memory_mib":256,"vmm_version":"0.1.0","uptime_us":42}"#;
        let info: VmInfo = serde_json::from_str(text).unwrap();
        assert_eq!(info.state, VmState::ShuttingDown);
        assert_eq!(serde_json::to_string(&info).unwrap(), text);
        assert_eq!(
            serde_json::to_string(&VmState::Paused).unwrap(),
            "\"paused\""
        );
    }

    #[test]
    fn exit_codes_are_distinct_and_map_back() {
        let mut codes: Vec<u8> = ExitReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ExitReason::ALL.len());
        for reason in ExitReason::ALL {
            assert_eq!(ExitReason::from_code(reason.code().into()), Some(reason));
        }
        assert_eq!(ExitReason::from_code(7), None);
        assert_eq!(ExitReason::from_code(-1), None);
        assert_eq!(ExitReason::from_code(255), None);
        let crashes: Vec<u8> = ExitReason::ALL
            .into_iter()
            .filter(|r| r.is_crash())
            .map(ExitReason::code)
            .collect();
        assert_eq!(crashes, [1, 4, 5]);
    }
}
