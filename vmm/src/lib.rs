//! keel-vmm: one process per guest, built on rust-vmm crates.
//!
//! Areas follow Firecracker's split: `vstate` (KVM VM and vCPU state), `arch` (x86_64 boot layout),
//! `devices` (emulated devices on the PIO/MMIO buses), `acpi` (firmware tables), `api` (control socket),
//! `seccomp` (per-thread filters), `config` (vm.json), `exit` (documented process exit statuses).

pub mod acpi;
pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod logging;
pub mod seccomp;
pub mod vmm;
pub mod vstate;
