//! The host: what it is (hardware, capabilities), how busy it is, and its power.

use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// `GET` (manager only) → [`HostInfo`]: the host; grows into the host API.
pub const HOST: &str = "/v1/host";

/// Answer to [`HOST`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub fingerprint: Fingerprint,
    /// Host names and addresses the host was started with.
    pub names: Vec<String>,
    pub capabilities: Capabilities,
    pub hardware: Hardware,
}

/// What the host can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub cpu_model: String,
    pub cpu_flags: Vec<String>,
    /// Logical CPUs, cores and packages.
    pub cpus: u32,
    pub cores: u32,
    pub sockets: u32,
    pub numa_nodes: Vec<NumaNode>,
    pub memory_total: u64,
    /// /dev/kvm opens.
    pub kvm: bool,
    pub nics: Vec<Nic>,
    pub vmm_version: String,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNode {
    pub id: u32,
    /// CPU list as the kernel prints it ("0-3,8").
    pub cpus: String,
    pub memory_total: u64,
}

/// One physical network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Operational state ("up", "down", ...).
    pub state: String,
    pub speed_mbps: Option<u32>,
}

/// SMBIOS identity (empty when the firmware does not say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

/// `GET` → [`HostStats`].
pub const HOST_STATS: &str = "/v1/host/stats";
/// `POST` → [`HostAction`]: reboot the host.
pub const HOST_REBOOT: &str = "/v1/host/reboot";
/// `POST` → [`HostAction`]: power the host off.
pub const HOST_POWEROFF: &str = "/v1/host/poweroff";
/// `GET`: Prometheus text format.
pub const METRICS: &str = "/v1/metrics";
/// `GET`: this API's OpenAPI document (JSON).
pub const OPENAPI: &str = "/v1/openapi";
/// Answer to the host's reboot and power-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAction {
    pub action: String,
}

/// Host statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    /// Share of CPU time busy since the previous sample (0..=1), over all CPUs.
    pub cpu_busy: f64,
    pub memory_total: u64,
    pub memory_available: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub nics: Vec<NicStats>,
    pub vms: Vec<VmStats>,
}

/// One NIC's counters and rates since the previous sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicStats {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

/// One running VM's VMM process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStats {
    pub name: String,
    /// CPU time used by the VMM process (guest and VMM), in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the VMM process, in bytes.
    pub rss_bytes: u64,
}
