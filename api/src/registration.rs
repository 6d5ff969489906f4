//! Registration: a host announcing itself to its manager (`keel.manager=`).

use crate::fingerprint::Fingerprint;
use crate::host::{Hardware, Nic};
use serde::{Deserialize, Serialize};

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
