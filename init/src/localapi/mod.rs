//! The console's local API: HTTP/1.1 + JSON on a unix socket (`/run/keel/console.sock`, mode
//! 0600, root only), served by the agent process, used by `keel console`.
//!
//! Only what the console needs is here: read the status, read and change the management network
//! (preview, apply with rollback, confirm), test the network, read the logs, name the manager
//! to register with (after showing its CA fingerprint), create the state partition, and release
//! the host from its manager. The agent implements `ConsoleBackend` by delegating to its adoption state and
//! the network module; `serve` puts any backend on the socket and `Client` is the console's end.
//! `facts`, `kmsg` and `nettest` are the parts that need neither: what the host can read about
//! itself, the kernel log, and the network tests. `Local` bundles them for both the agent's
//! backend and the console's "agent not reachable" fallback.

pub mod client;
pub mod facts;
pub mod kmsg;
pub mod nettest;
pub mod server;
pub mod types;

use std::sync::Mutex;
use std::time::Duration;

use crate::agent::api::{CreateStateRequest, RegistrationStatus};
use crate::agent::registration::ManagerChoice;
use crate::state::Status as StateStatus;
pub use client::Client;
pub use server::serve;
use types::{
    Adoption, Applied, FieldError, HostFacts, LogPage, ManagerCa, ManagerProbe, NetworkForm,
    NetworkState, Preview, StateView, Status, TestKind, TestRequest, TestResult,
};

/// Where the agent serves the console.
pub const SOCKET: &str = "/run/keel/console.sock";

/// How long one network test may take.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request failed. The server turns each into a status code and the client back into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The form has invalid fields
    #[error("The form has invalid fields: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The request conflicts with the current state: {0}
    #[error("{0}")]
    Conflict(String),
    /// The service cannot do that now: {0}
    #[error("{0}")]
    Unavailable(String),
    /// The request failed: {0}
    #[error("{0}")]
    Failed(String),
    /// Cannot reach the agent at {0}: {1}
    #[error("Cannot reach the agent at {0}: {1}")]
    Unreachable(String, String),
}

fn describe(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    parts.join("; ")
}

/// What the agent does for the console. Each method answers one route of the local API.
pub trait ConsoleBackend: Send + Sync {
    /// `GET /status`.
    fn status(&self) -> Result<Status, ApiError>;
    /// `GET /network`.
    fn network(&self) -> Result<NetworkState, ApiError>;
    /// `POST /network/preview`: validate and describe, change nothing.
    fn preview(&self, form: &NetworkForm) -> Result<Preview, ApiError>;
    /// `POST /network/apply`: validate, apply, and roll back unless confirmed in time.
    fn apply(&self, form: &NetworkForm) -> Result<Applied, ApiError>;
    /// `POST /network/confirm`: keep the pending change. `Conflict` when nothing is pending.
    fn confirm(&self) -> Result<(), ApiError>;
    /// `POST /network/test`.
    fn test(&self, request: &TestRequest) -> Result<TestResult, ApiError>;
    /// `GET /logs?after=N`: records after N; without `after`, from the oldest.
    fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError>;
    /// `POST /adoption/reset`: forget the manager and issue a new adoption token.
    fn reset_adoption(&self) -> Result<Adoption, ApiError>;
    /// `GET /manager`: where the host is in registering with its manager.
    fn registration(&self) -> Result<RegistrationStatus, ApiError>;
    /// `POST /manager/probe`: the CA fingerprint of the manager at a URL, from a TLS handshake
    /// that sends it nothing.
    fn probe_manager(&self, probe: &ManagerProbe) -> Result<ManagerCa, ApiError>;
    /// `PUT /manager`: register with this manager from now on (saved; wins over the kernel
    /// command line).
    fn choose_manager(&self, choice: &ManagerChoice) -> Result<RegistrationStatus, ApiError>;
    /// `DELETE /manager`: forget the console's choice; the kernel command line's manager, if
    /// any, is in force again.
    fn forget_manager(&self) -> Result<RegistrationStatus, ApiError>;
    /// `GET /state`: the state partition and the disks that could hold one.
    fn state(&self) -> Result<StateView, ApiError>;
    /// `POST /state/create`: erase the disk named twice and make the state partition on it.
    fn create_state(&self, request: &CreateStateRequest) -> Result<StateStatus, ApiError>;
}

/// What needs no agent state: host facts, the kernel log, and network tests against the
/// gateway and name server the host uses now.
pub struct Local {
    kmsg: Mutex<kmsg::KmsgLog>,
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

impl Local {
    pub fn new() -> Self {
        Self {
            kmsg: Mutex::new(kmsg::KmsgLog::new(kmsg::DEVICE, kmsg::KEEP)),
        }
    }

    /// `facts::collect()`.
    pub fn facts(&self) -> HostFacts {
        facts::collect()
    }

    /// Kernel and Keel log records after `after`.
    pub fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError> {
        let mut log = self
            .kmsg
            .lock()
            .map_err(|_| ApiError::Failed("the log reader failed earlier".into()))?;
        log.refresh()
            .map_err(|e| ApiError::Failed(format!("Cannot read {}: {e}", kmsg::DEVICE)))?;
        Ok(LogPage {
            entries: log.after(after),
        })
    }

    /// Runs a network test. The gateway and name server are the ones in force now; `manager`
    /// is `host:port` when the host knows its manager.
    pub fn test(&self, request: &TestRequest, manager: Option<&str>) -> TestResult {
        let facts = facts::collect();
        let dns = facts.dns.first().map(String::as_str);
        match request.kind {
            TestKind::PingGateway => match facts.gateway {
                Some(gw) => nettest::ping_text(&gw, TEST_TIMEOUT),
                None => failed("there is no default gateway"),
            },
            TestKind::Resolve => match (request.name.as_deref(), dns) {
                (None | Some(""), _) => failed("no name to resolve was given"),
                (Some(_), None) => failed("no name server is configured"),
                (Some(name), Some(server)) => nettest::resolve_text(server, name, TEST_TIMEOUT),
            },
            TestKind::ConnectManager => match manager {
                Some(m) => nettest::connect_text(m, dns, TEST_TIMEOUT),
                None => failed("this host has no manager"),
            },
        }
    }
}

fn failed(detail: &str) -> TestResult {
    TestResult {
        ok: false,
        detail: detail.to_string(),
    }
}
