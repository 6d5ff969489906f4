//! The state partition (`KEEL-STATE`): what PID 1 found at boot, and creating one.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// `GET` → [`Status`]: the state partition (mounted, none, damaged).
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

/// What became of the state partition at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    /// Mounted read-write at `path`.
    Mounted {
        device: String,
        path: String,
        fstype: String,
        /// Boots this partition has seen, this one included.
        boot_count: u64,
    },
    /// No partition labelled KEEL-STATE: running from RAM only.
    None,
    /// Found but unusable (mount or write failed): running from RAM only with defaults.
    Damaged { device: String, reason: String },
}

impl Status {
    /// The console line, a contract with the end-to-end tests.
    pub fn console_line(&self) -> String {
        match self {
            Status::Mounted {
                device,
                path,
                boot_count,
                ..
            } => format!("keel: state: {device} mounted at {path} (boot {boot_count})"),
            Status::None => String::from(
                "keel: state: none, running from RAM only (settings will not survive a reboot)",
            ),
            Status::Damaged { device, reason } => format!(
                "keel: state: {device} is damaged ({reason}); running from RAM only with defaults"
            ),
        }
    }

    /// The directory to persist into, or None when settings live in RAM only.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Status::Mounted { path, .. } => Some(Path::new(path)),
            _ => None,
        }
    }
}
