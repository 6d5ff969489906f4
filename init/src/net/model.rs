//! The typed host network configuration, defined in keel-api (it crosses the API and the console).

pub use keel_api::net::model::*;
