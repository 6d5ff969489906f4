//! The agent's REST API in one namespace: every path and message of the host agent (adoption,
//! host, images, VMs, network, state partition, registration), gathered from the modules by
//! concern. Unknown fields are refused so that a typo in a manager is an error, not a silently
//! ignored setting.
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

pub use crate::adoption::*;
pub use crate::firewall::HOST_FIREWALL;
pub use crate::host::*;
pub use crate::image::*;
pub use crate::net::{
    NetworkApplied, NetworkChange, NetworkPreview, HOST_NETWORK, HOST_NETWORK_CONFIRM,
    HOST_NETWORK_PREVIEW, NETWORK_CONFIRM_MAX_SECS, NETWORK_CONFIRM_MIN_SECS,
};
pub use crate::registration::*;
pub use crate::state::{CreateStateRequest, HOST_STATE};
pub use crate::vm::*;
