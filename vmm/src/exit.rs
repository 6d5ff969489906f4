//! The process exit statuses of keel-vmm. They are part of its interface: the agent records them as
//! the reason a VM stopped, so each value is stable and documented in vmm/README.md. The type is
//! keel-api's, shared with the agent.

pub use keel_api::vmm::ExitReason;
