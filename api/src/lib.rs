//! Keel's contracts: every type that crosses a process boundary, defined once (serde + std only).
//! keelctl, the agent, the console, keel-vmm and files on disk all use these; a persisted or wire
//! format carries a version that is checked before use.

pub mod adoption;
pub mod fingerprint;
