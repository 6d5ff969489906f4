//! The host agent: the host's identity, its adoption by a manager, and the mutual-TLS API the
//! manager drives it through.
//!
//! A host is born with an ECDSA P-256 key and a self-signed certificate (`identity`). A manager
//! that knows the host's key fingerprint (shown on the console) and its one-time adoption token
//! connects over TLS pinning that fingerprint, and runs the two-step adoption (`adoption`,
//! messages in `api`): the host answers a CSR for its existing key, the manager's CA signs it,
//! and from then on the host serves the manager-signed certificate and only accepts client
//! certificates from that CA (`server`). Fingerprints, tokens, TLS configurations, the manager
//! CA and the manager's client are keel-trust's (`keel_trust::{fingerprint, token, tls, ca,
//! client}`); `http` is keel-http. `register` announces the host to the manager named on the
//! kernel command line, trusting it by its CA (`keel_trust::ca_pin`).

pub mod adoption;
pub mod api;
pub mod backoff;
pub mod clock;
pub mod console_backend;
pub mod datastore;
pub mod hostinfo;
pub mod vm_console;
/// Keel's one HTTP/1.1 implementation, re-exported under its old path.
pub use keel_http as http;
pub mod identity;
pub mod images;
pub mod launch;
pub mod netform;
pub mod ratelimit;
pub mod register;
pub mod registration;
pub mod server;
pub mod service;
pub mod taps;
pub mod vm_devices;
pub mod vms;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod register_tests;
