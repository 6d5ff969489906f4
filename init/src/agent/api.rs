//! The agent's wire format: paths and JSON messages, shared by the host (`server`) and the
//! manager (`client`, keelctl). Defined in keel-api (`keel_api::agent`).

pub use keel_api::agent::*;
