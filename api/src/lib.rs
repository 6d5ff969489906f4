//! Keel's contracts: every type that crosses a process boundary, defined once (serde + std only).
//! keelctl, the agent, the console, keel-vmm and files on disk all use these; a persisted or wire
//! format carries a version that is checked before use.

pub mod adoption;
pub mod agent;
pub mod fingerprint;
pub mod firewall;
pub mod hex;
pub mod host;
pub mod image;
pub mod limits;
pub mod logs;
pub mod net;
pub mod registration;
pub mod reply;
pub mod state;
pub mod vm;
pub mod vmm;

pub use fingerprint::Fingerprint;
pub use hex::hex;
pub use net::{IfName, MacAddr};
