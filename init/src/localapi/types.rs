//! The messages of the console's local API (`/run/keel/console.sock`). JSON, and every struct
//! refuses unknown fields so a console and an agent from different builds fail loudly rather than
//! drop what the other meant.
//!
//! Form fields the operator types (addresses, VLAN ID, DNS servers, …) travel as the text typed:
//! the network module parses and validates them and answers with `FieldError`s naming the field,
//! which the console shows next to it.

use serde::{Deserialize, Serialize};

/// Link state of a NIC as /sys/class/net/<nic>/operstate reports it, reduced to what matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    Up,
    Down,
    Unknown,
}

/// One network interface (physical, bond, VLAN or bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, empty when the interface has none.
    pub mac: String,
    pub link: Link,
    /// Link speed in Mbit/s when the driver knows it.
    pub speed_mbps: Option<u32>,
    /// Addresses in CIDR notation (`10.0.2.15/24`, `fe80::1/64`).
    pub addresses: Vec<String>,
    /// Whether it is a physical device (has /sys/class/net/<nic>/device).
    pub physical: bool,
}

/// Cumulative CPU time from /proc/stat, in clock ticks. Use is the ratio of two samples'
/// differences, so the server stays stateless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Memory from /proc/meminfo, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

/// What any process on the host can read for itself (`facts::collect`). The console shows these
/// even when the agent is not reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    pub hostname: String,
    pub keel_version: String,
    pub kernel: String,
    pub uptime_secs: u64,
    pub cpus: u32,
    pub cpu: CpuTimes,
    pub memory: Memory,
    pub nics: Vec<Nic>,
    /// IPv4 default gateway from the main routing table.
    pub gateway: Option<String>,
    /// Name servers from /etc/resolv.conf.
    pub dns: Vec<String>,
}

/// Whether a manager owns this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Adoption {
    /// Waiting for a manager; `token` is the one-time adoption token to give it.
    NotAdopted { token: String },
    /// Adopted by `manager` (its address or name).
    Adopted { manager: String },
}

/// One VM as the status screen lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSummary {
    pub name: String,
    /// "running", "paused", "stopped", …
    pub state: String,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub facts: HostFacts,
    /// `sha256:<hex>` of the host key, as `keel_trust::fingerprint::Fingerprint` prints it.
    pub fingerprint: String,
    pub adoption: Adoption,
    pub vms: Vec<VmSummary>,
}

/// How the management address is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ipv4Mode {
    Dhcp,
    Static,
}

/// Bonding mode, as the kernel's bonding driver names it: the network model's own.
pub use keel_api::net::model::BondMode;

/// The management network as the console edits it: the text of each field as typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkForm {
    /// The NIC the management network uses (with no bond members), or the bond's name.
    pub interface: String,
    /// Bond members; empty means no bond.
    pub bond_members: Vec<String>,
    pub bond_mode: BondMode,
    /// VLAN ID 1-4094, empty for untagged.
    pub vlan: String,
    pub mode: Ipv4Mode,
    /// `10.0.0.5/24` (static only).
    pub address: String,
    /// `10.0.0.1` (static only; may be empty).
    pub gateway: String,
    /// Comma- or space-separated name servers.
    pub dns: String,
    pub hostname: String,
    /// Comma- or space-separated NTP servers.
    pub ntp: String,
}

/// A list field of the form as typed ("a, b c") → ["a", "b", "c"].
pub fn split_list(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A change applied but not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub form: NetworkForm,
    /// Seconds until the previous configuration comes back by itself.
    pub rollback_in_secs: u32,
}

/// `GET /network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkState {
    /// The configuration in force.
    pub running: NetworkForm,
    pub pending: Option<Pending>,
    /// Whether saved settings survive a reboot (there is a state partition).
    pub persistent: bool,
    pub nics: Vec<Nic>,
}

/// `POST /network/preview` answer: what applying the form would change, one line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    pub changes: Vec<String>,
}

/// `POST /network/apply` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    /// Seconds to confirm in before the change rolls back.
    pub rollback_in_secs: u32,
}

/// One invalid form field. `field` is a `NetworkForm` field name (`address`, `vlan`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The 422 answer body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invalid {
    pub errors: Vec<FieldError>,
}

/// What `POST /network/test` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestKind {
    /// ICMP echo to the default gateway.
    PingGateway,
    /// An A query for `name` to the first configured name server.
    Resolve,
    /// A TCP connection to the manager.
    ConnectManager,
}

/// `POST /network/test` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    pub kind: TestKind,
    /// The name to resolve (`Resolve` only).
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /network/test` answer: a failed test is a normal answer, not an HTTP error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestResult {
    pub ok: bool,
    /// "reply from 10.0.2.2 in 3 ms", "no reply from 10.0.2.2 within 2 s", …
    pub detail: String,
}

pub use keel_api::logs::{LogEntry, LogSource};

/// `GET /logs?after=N` answer: records with `seq > N`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
}

/// `POST /adoption/reset` body: the console asked the operator first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub confirm: bool,
}

/// `GET /state`: the state partition as PID 1 found it (or as created since), and the disks
/// one could be created on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateView {
    pub status: crate::state::Status,
    pub disks: Vec<crate::state::create::DiskOffer>,
}

/// `POST /manager/probe` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerProbe {
    /// `https://host[:port][/path]`.
    pub manager: String,
}

/// `POST /manager/probe` answer: the fingerprint to show the operator for Accept/Reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerCa {
    pub manager_ca: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_and_unknown_fields() {
        let a: Adoption = serde_json::from_str(r#"{"state":"not-adopted","token":"abc"}"#).unwrap();
        assert_eq!(
            a,
            Adoption::NotAdopted {
                token: "abc".into()
            }
        );
        assert!(serde_json::from_str::<Adoption>(r#"{"state":"adopted"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&BondMode::Lacp).unwrap(),
            "\"802.3ad\""
        );
        let t: TestRequest = serde_json::from_str(r#"{"kind":"ping-gateway"}"#).unwrap();
        assert_eq!(t.name, None);
        assert!(serde_json::from_str::<TestRequest>(r#"{"kind":"ping-gateway","x":1}"#).is_err());
        assert!(serde_json::from_str::<ResetRequest>(r#"{"confirm":true,"y":2}"#).is_err());
    }
}
