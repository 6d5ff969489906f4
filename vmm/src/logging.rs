//! keel-vmm's logger: stderr, which the agent points at the VM's `vmm.log`. keel-vmm's own
//! records read `keel-vmm: <message>` (the lines the agent and the tests look for); those of the
//! rust-vmm crates carry level and target, `keel-vmm: ERROR virtio_queue::queue: <message>`, and
//! are rate-limited, since a guest can provoke them at will. Every thread kind's seccomp filter
//! allows the `write` this needs.

/// The logger `main` installs (tests install it with a captured output).
pub fn logger() -> keel_logger::Logger {
    keel_logger::Logger::stderr("keel-vmm", env!("CARGO_CRATE_NAME"))
}
