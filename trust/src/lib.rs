//! Keel's trust: fingerprints, TLS configurations, the manager CA, one rustls verifier for every
//! pin (host key, manager CA, CA probe), tokens, and the HTTPS client.
//!
//! A host is born with an ECDSA P-256 key (kept by the agent); a manager that knows the host's
//! key fingerprint (`fingerprint`) and its one-time adoption token (`token`) connects over TLS
//! pinning that fingerprint (`tls`) and signs the host's CSR with its CA (`ca`); from then on the
//! host serves the manager-signed certificate and accepts only client certificates from that CA.
//! A host registering with a manager trusts it by the fingerprint of its CA (`ca_pin`). Every
//! server certificate a client here accepts is judged by one verifier (`tls::ServerCheck`).
//! `client` is the manager's side of the agent API over all of it.

pub mod ca;
pub mod ca_pin;
pub mod client;
pub mod fingerprint;
pub mod tls;
pub mod token;

#[cfg(test)]
mod test_host;
