//! Ground-floor helpers every part of Keel may use: thin syscall wrappers (`syscall`), mounting
//! (`mounts`) and crash-safe file replacement (`atomic`). They depend on nothing else in the crate.

pub mod atomic;
pub mod mounts;
pub mod syscall;
