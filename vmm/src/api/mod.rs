//! Control API: HTTP/1.1 with JSON bodies on a unix socket, served through keel-http (the one
//! HTTP/1.1 implementation Keel's servers and clients share). (The trait below is the contract
//! between the API helper, who owns this module, and the VMM core, which implements `VmControl`.)
//!
//! Endpoints (documented in `vmm/API.md`): `GET /vm`, `PUT /vm/pause`, `PUT /vm/resume`,
//! `PUT /vm/shutdown`, `PUT /vm/power-off`. The server is [`start_server`].

mod server;

pub use server::{route, start_server, ApiError, ApiServer, REQUEST_TIMEOUT};

use serde::Serialize;

/// Run state of the VM as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub state: VmState,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// keel-vmm's version.
    pub vmm_version: String,
    /// Microseconds since the VMM started.
    pub uptime_us: u64,
}

/// The operations the API may ask of the running VM. Implemented by the VMM core; every call returns
/// quickly (requests are queued to the VMM thread), so the API thread never blocks on the guest.
pub trait VmControl: Send + Sync {
    fn info(&self) -> VmInfo;
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    /// Graceful shutdown: press the ACPI power button so the guest OS shuts down by itself.
    fn shutdown(&self) -> Result<(), String>;
    /// Immediate power-off of the VM; the process exits with `ExitReason::HostPowerOff`.
    fn power_off(&self) -> Result<(), String>;
}
