//! Host networking: the typed configuration, its layers, validation, the plan that turns the
//! running state into the desired one, and rtnetlink to apply it.

pub mod dhcp;
pub mod keeper;
pub mod layers;
pub mod manager;
pub mod model;
pub mod netlink;
pub mod plan;
pub mod safe;
pub mod store;
#[cfg(test)]
mod testns;
pub mod validate;
