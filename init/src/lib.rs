//! Keel's host userspace: PID 1 (`pid1`), and the services the multi-call `keel` binary runs.
//! A library so every part is reachable from its tests and from the one binary.

pub mod agent;
pub mod console;
pub mod firewall;
pub mod jail;
pub mod localapi;
pub mod net;
pub mod netlink;
pub mod pid1;
pub mod state;
pub mod sys;
