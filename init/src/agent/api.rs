//! The agent's wire format: paths and JSON messages, shared by the host (`server`) and the
//! manager (`client`, keelctl). Defined in keel-api; re-exported here under the names the agent
//! has always used. Unknown fields are refused so that a typo in a manager is an error, not a
//! silently ignored setting.
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

pub use keel_api::adoption::*;
pub use keel_api::firewall::HOST_FIREWALL;
pub use keel_api::host::*;
pub use keel_api::image::*;
pub use keel_api::net::{
    NetworkApplied, NetworkChange, NetworkPreview, HOST_NETWORK, HOST_NETWORK_CONFIRM,
    HOST_NETWORK_PREVIEW, NETWORK_CONFIRM_MAX_SECS, NETWORK_CONFIRM_MIN_SECS,
};
pub use keel_api::registration::*;
pub use keel_api::state::{CreateStateRequest, HOST_STATE};
pub use keel_api::vm::*;
