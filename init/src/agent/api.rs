//! The agent's wire format: paths and JSON messages, shared by the host (`server`) and the
//! manager (`client`, later keelctl). Unknown fields are refused so that a typo in a manager is an
//! error, not a silently ignored setting.
//!
//! Adoption, after the manager pinned the host's key fingerprint:
//!
//! ```text
//! POST /v1/adopt           {token, manager_ca_pem}                  -> {session_id, csr_pem, fingerprint}
//! POST /v1/adopt/complete  {session_id, certificate_pem, chain_pem} -> {fingerprint}
//! ```
//!
//! Errors are `{"error": "..."}` with 400 (bad input), 401 (wrong or expired token or session),
//! 403 (route needs the manager's client certificate), 404/405, 409 (already adopted, no
//! adoption in progress), 413, 429 (rate limited, with `Retry-After`) or 500.

use super::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// `GET`: liveness and adoption phase, open to anyone.
pub const HEALTH: &str = "/v1/health";
/// `POST` [`AdoptRequest`] → [`AdoptResponse`]: start adoption.
pub const ADOPT: &str = "/v1/adopt";
/// `POST` [`CompleteRequest`] → [`CompleteResponse`]: finish adoption.
pub const ADOPT_COMPLETE: &str = "/v1/adopt/complete";
/// `POST` (manager only) → [`ReleaseResponse`]: forget the manager, back to not adopted.
pub const RELEASE: &str = "/v1/release";
/// `GET` (manager only) → [`HostInfo`]: the host; grows into the host API.
pub const HOST: &str = "/v1/host";

/// Where a host is in its adoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdoptionPhase {
    NotAdopted,
    Adopting,
    Adopted,
}

/// Answer to [`HEALTH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    /// Always "ok" when the agent answers.
    pub status: String,
    pub adoption: AdoptionPhase,
}

/// Body of [`ADOPT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    /// The host's adoption token.
    pub token: String,
    /// The manager's CA certificate, PEM: the host will only trust clients it issued.
    pub manager_ca_pem: String,
}

/// Answer to [`ADOPT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptResponse {
    /// Binds the completion to this request; valid for a few minutes.
    pub session_id: String,
    /// A certificate signing request for the host's existing key.
    pub csr_pem: String,
    /// The host key's fingerprint, for the manager to check the CSR against its pin.
    pub fingerprint: Fingerprint,
}

/// Body of [`ADOPT_COMPLETE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub session_id: String,
    /// The host's certificate, signed for the CSR's key, PEM.
    pub certificate_pem: String,
    /// Intermediate certificates between it and the manager CA, PEM, nearest first (usually
    /// none: the manager CA signs hosts directly).
    #[serde(default)]
    pub chain_pem: Vec<String>,
}

/// Answer to [`ADOPT_COMPLETE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteResponse {
    pub fingerprint: Fingerprint,
}

/// Answer to [`RELEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseResponse {
    pub adoption: AdoptionPhase,
}

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
/// `GET` → [`ImageList`].
pub const IMAGES: &str = "/v1/images";
/// `PUT` (body: the file, `X-Content-Sha256` header: its hex SHA-256) → [`Image`]; `DELETE`.
pub const IMAGE: &str = "/v1/images/{kind}/{name}";
/// `GET` → [`HostStats`].
pub const HOST_STATS: &str = "/v1/host/stats";
/// `POST` → [`HostAction`]: reboot the host.
pub const HOST_REBOOT: &str = "/v1/host/reboot";
/// `POST` → [`HostAction`]: power the host off.
pub const HOST_POWEROFF: &str = "/v1/host/poweroff";
/// `GET` → [`crate::firewall::Description`]: the host's ingress firewall, as loaded at boot.
pub const HOST_FIREWALL: &str = "/v1/host/firewall";
/// `GET` → [`crate::state::Status`]: the state partition (mounted, none, damaged).
/// `POST` [`CreateStateRequest`] → `Status`: create one on a local disk, erasing it.
pub const HOST_STATE: &str = "/v1/host/state";

/// Body of `POST` [`HOST_STATE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStateRequest {
    /// The whole disk to erase, `/dev/vdb`.
    pub disk: String,
    /// Must name the same disk: the operator's confirmation that it may be erased.
    pub confirm: String,
    /// Size of the partition in MiB (default 1024, or the whole disk if smaller; 16 to 65536).
    #[serde(default)]
    pub size_mib: Option<u64>,
}

/// `GET` → the host network's status (`crate::net::Status`: running and saved configuration,
/// links, leases, gateways, resolver, a pending change); `POST` [`NetworkChange`] →
/// [`NetworkApplied`]: apply a change, rolled back unless confirmed in time when it cuts the host
/// off (docs/network.md).
pub const HOST_NETWORK: &str = "/v1/host/network";
/// `POST` (body: a `crate::net::NetConfig` change) → [`NetworkPreview`]; changes nothing.
pub const HOST_NETWORK_PREVIEW: &str = "/v1/host/network/preview";
/// `POST` → `{}`: keep the pending change; 409 when none is pending.
pub const HOST_NETWORK_CONFIRM: &str = "/v1/host/network/confirm";
/// `GET`: Prometheus text format.
pub const METRICS: &str = "/v1/metrics";
/// `GET`: this API's OpenAPI document (JSON).
pub const OPENAPI: &str = "/v1/openapi";
/// The header carrying an upload's expected SHA-256 (hex).
pub const SHA256_HEADER: &str = "X-Content-Sha256";

/// Bounds of [`NetworkChange::confirm_within_secs`].
pub const NETWORK_CONFIRM_MIN_SECS: u64 = 5;
pub const NETWORK_CONFIRM_MAX_SECS: u64 = 3600;

/// Body of `POST` [`HOST_NETWORK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkChange {
    /// The sections to change (the same model as the kernel command line and the saved layer).
    pub change: crate::net::NetConfig,
    /// Seconds to confirm in (5..=3600; 60 when absent) before the host checks it can still
    /// reach its gateway (and `manager`) and rolls back if not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_within_secs: Option<u64>,
    /// `host:port` that must stay reachable for the change to stand unconfirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// Answer to `POST` [`HOST_NETWORK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkApplied {
    /// What was done, one operation a line.
    pub operations: Vec<String>,
    pub confirm_within_secs: u64,
}

/// Answer to [`HOST_NETWORK_PREVIEW`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPreview {
    /// What applying would do, one operation a line.
    pub operations: Vec<String>,
}

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
    pub events: crate::jail::CgroupEvents,
}

/// Answer to `GET` [`VMS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    pub vms: Vec<VmStatus>,
}

/// The kinds of image the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Kernel,
    Initrd,
    Disk,
}

impl ImageKind {
    pub const ALL: [ImageKind; 3] = [ImageKind::Kernel, ImageKind::Initrd, ImageKind::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
            ImageKind::Disk => "disk",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub kind: ImageKind,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Where images are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// A filesystem labelled KEEL-DATA on a local disk.
    Disk,
    /// A bounded RAM area: lost at reboot.
    Ram,
}

/// Answer to `GET` [`IMAGES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageList {
    pub store: StoreKind,
    /// Bytes the store can hold and bytes free.
    pub capacity: u64,
    pub free: u64,
    pub images: Vec<Image>,
}

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

/// `GET` → [`RegistrationStatus`]: where the host is in registering with its manager.
pub const REGISTRATION: &str = "/v1/registration";
/// `POST` [`RegistrationRequest`] → [`RegistrationResponse`]: served by a manager, not the host.
pub const REGISTER: &str = "/v1/register";

/// A host announcing itself to its manager (`keel.manager=`). The host sends it only over TLS to a
/// server whose chain reaches the pinned manager CA; it sends it again when its addresses or its
/// adoption token change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRequest {
    /// Random, made at first boot and kept in the state directory (SMBIOS UUIDs repeat).
    pub host_id: String,
    /// The host key fingerprint, to pin when adopting.
    pub fingerprint: Fingerprint,
    /// `keel.hostname=`, when given.
    pub hostname: Option<String>,
    pub hardware: Hardware,
    pub nics: Vec<Nic>,
    /// Addresses of the host other than loopback and link-local.
    pub addresses: Vec<std::net::IpAddr>,
    /// The agent API's port.
    pub api_port: u16,
    pub keel_version: String,
    /// `keel.join_token=`: lets the manager adopt the host without asking anyone.
    pub join_token: Option<String>,
    /// The host's one-time adoption token (absent once adopted): the manager presents it to
    /// `POST /v1/adopt` as `keelctl host adopt` does.
    pub adopt_token: Option<String>,
}

/// What the manager did with a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerVerdict {
    /// Waiting for an operator to approve the host.
    Pending,
    /// The join token is valid: the manager is adopting the host.
    Adopting,
    /// The manager has adopted the host.
    Adopted,
}

/// Answer to [`REGISTER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationResponse {
    pub state: ManagerVerdict,
    /// For the console and log.
    pub message: String,
}

/// Where the host is in registering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationState {
    /// No manager named (neither `keel.manager=` nor the console).
    Disabled,
    /// Not registered yet: the manager is unreachable or the next attempt is due.
    Pending,
    /// The manager accepted the registration.
    Registered,
    /// Adopted (by the manager, or by anyone through `POST /v1/adopt`).
    Adopted,
    /// Refused: the manager failed the CA pin, refused the registration, or the parameters are
    /// wrong. Retried, since a manager can be fixed, but the reason says what to correct.
    Error,
}

/// Where the manager the host registers with was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationSource {
    /// `keel.manager=` and friends.
    CommandLine,
    /// The console's Manager screen (saved on the host; wins over the command line).
    Console,
}

impl RegistrationSource {
    /// For messages: "from the {}".
    pub fn describe(self) -> &'static str {
        match self {
            Self::CommandLine => "kernel command line",
            Self::Console => "console",
        }
    }
}

/// Answer to [`REGISTRATION`]; never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationStatus {
    pub state: RegistrationState,
    /// The manager's URL (`keel.manager=`, or chosen on the console).
    pub manager: Option<String>,
    /// The pinned manager CA fingerprint (`keel.manager_ca=`, or accepted on the console).
    pub manager_ca: Option<String>,
    /// Where the manager was named.
    #[serde(default)]
    pub source: Option<RegistrationSource>,
    pub host_id: Option<String>,
    /// Why the last attempt failed, or what the manager said.
    pub reason: Option<String>,
    /// Registrations sent or tried since the agent started.
    pub attempts: u32,
    /// The manager's answer to the last registration it accepted.
    pub verdict: Option<ManagerVerdict>,
}

impl Default for RegistrationStatus {
    fn default() -> Self {
        Self {
            state: RegistrationState::Disabled,
            manager: None,
            manager_ca: None,
            source: None,
            host_id: None,
            reason: None,
            attempts: 0,
            verdict: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let fp = Fingerprint::of_spki(b"");
        let cases: Vec<(String, &str)> = vec![
            (
                serde_json::to_string(&HealthResponse {
                    status: "ok".into(),
                    adoption: AdoptionPhase::NotAdopted,
                })
                .unwrap(),
                r#"{"status":"ok","adoption":"not-adopted"}"#,
            ),
            (
                serde_json::to_string(&AdoptRequest {
                    token: "t".into(),
                    manager_ca_pem: "p".into(),
                })
                .unwrap(),
                r#"{"token":"t","manager_ca_pem":"p"}"#,
            ),
            (
                serde_json::to_string(&CompleteResponse { fingerprint: fp }).unwrap(),
                r#"{"fingerprint":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn chain_defaults_to_empty_and_unknown_fields_are_refused() {
        let c: CompleteRequest =
            serde_json::from_str(r#"{"session_id":"s","certificate_pem":"c"}"#).unwrap();
        assert!(c.chain_pem.is_empty());
        let err = serde_json::from_str::<AdoptRequest>(
            r#"{"token":"t","manager_ca_pem":"p","tokn":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tokn"), "{err}");
    }
}
