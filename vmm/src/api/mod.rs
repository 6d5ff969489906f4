//! Control API: HTTP/1.1 with JSON bodies on a unix socket, served through keel-http (the one
//! HTTP/1.1 implementation Keel's servers and clients share). (The trait below is the contract
//! between the API helper, who owns this module, and the VMM core, which implements `VmControl`.)
//!
//! Endpoints (documented in `vmm/API.md`): `GET /vm`, `PUT /vm/pause`, `PUT /vm/resume`,
//! `PUT /vm/shutdown`, `PUT /vm/power-off`. The server is [`start_server`].

mod server;

pub use server::{route, start_server, ApiError, ApiServer, REQUEST_TIMEOUT};

/// The state and information `GET /vm` reports: keel-api's, shared with the agent.
pub use keel_api::vmm::{VmInfo, VmState};

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
