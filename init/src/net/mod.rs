//! Host networking: the typed configuration (`model`), its layers (`layers`), validation
//! (`validate`), the plan from the running state to the desired configuration (`plan`), rtnetlink
//! to carry it out (`rtnetlink`, over the shared codec `crate::netlink`), the DHCPv4 client
//! (`dhcp`, `keeper`), safe changes with rollback (`safe`), the saved configuration and
//! resolv.conf (`store`), and the service tying them together (`service`), which PID 1 runs.
//!
//! The functions below are the API the agent and the console use: `status` (read),
//! `preview`/`apply` (change, with rollback unless confirmed), `confirm`. In PID 1 they call the
//! service directly; in any other process they go through PID 1's control socket (`control`).
//! See docs/network.md.

pub mod control;
pub mod dhcp;
pub mod keeper;
pub mod layers;
pub mod model;
pub mod plan;
pub mod rtnetlink;
pub mod safe;
pub mod service;
pub mod store;
#[cfg(test)]
mod testns;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use model::NetConfig;
pub use service::{Applied, ApplyOptions, Log, NetError, Refusal, Status};

use control::Request;
use service::NetService;

/// The network service, in the process that runs it (PID 1).
static LOCAL: OnceLock<NetService> = OnceLock::new();

/// The kernel module behind a link kind, and its parameters (no default bond0 from bonding).
fn kind_module(kind: &str) -> Option<(&'static str, &'static std::ffi::CStr)> {
    match kind {
        "bridge" => Some(("bridge", c"")),
        "vlan" => Some(("8021q", c"")),
        "bond" => Some(("bonding", c"max_bonds=0")),
        _ => None,
    }
}

/// PID 1, at boot: brings the network up from the layers and serves the control socket.
/// `modules` is PID 1's module loader (for the bridge, 8021q and bonding drivers).
pub fn boot(
    cmdline: &str,
    log: Log,
    modules: Option<crate::pid1::modules::Loader>,
) -> Result<(), NetError> {
    let store = store::Store::following_state();
    let loader = modules.map(|l| {
        let loader = std::sync::Mutex::new(l);
        let load: service::KindLoader = std::sync::Arc::new(move |kind: &str| {
            let Some((module, params)) = kind_module(kind) else {
                return Ok(());
            };
            let mut l = loader
                .lock()
                .map_err(|_| String::from("module loader poisoned"))?;
            l.load_with(module, params).map_err(|e| e.to_string())
        });
        load
    });
    let service = NetService::boot(
        cmdline,
        store,
        PathBuf::from(store::RESOLV_CONF),
        log.clone(),
        loader,
    )?;
    if let Err(e) = control::serve(service.clone(), Path::new(control::SOCKET)) {
        log(
            log::Level::Error,
            &format!("keel: network: cannot serve {}: {e}", control::SOCKET),
        );
    }
    let _ = LOCAL.set(service);
    Ok(())
}

fn remote<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, NetError> {
    let value = control::call(Path::new(control::SOCKET), request)?;
    serde_json::from_value(value).map_err(|e| NetError::Remote(format!("unexpected reply: {e}")))
}

/// The running configuration, links, leases, gateways, resolver, pending change, persistence.
pub fn status() -> Result<Status, NetError> {
    match LOCAL.get() {
        Some(m) => m.status(),
        None => remote(&Request::Status {}),
    }
}

/// What applying `change` would do, as readable operations; changes nothing.
pub fn preview(change: &NetConfig) -> Result<Vec<String>, NetError> {
    match LOCAL.get() {
        Some(m) => m.preview(change),
        None => remote(&Request::Preview {
            change: change.clone(),
        }),
    }
}

/// Applies `change` over the saved configuration (sections it sets replace the saved ones).
/// Invalid input is refused with the field named. Unless `confirm` follows within
/// `options.confirm_within_secs`, the change is rolled back if the gateway (or
/// `options.manager`) is unreachable, and kept and saved otherwise.
pub fn apply(change: &NetConfig, options: &ApplyOptions) -> Result<Applied, NetError> {
    match LOCAL.get() {
        Some(m) => m.apply(change, options),
        None => remote(&Request::Apply {
            change: change.clone(),
            options: options.clone(),
        }),
    }
}

/// Confirms the pending change and saves it.
pub fn confirm() -> Result<(), NetError> {
    match LOCAL.get() {
        Some(m) => m.confirm(),
        None => remote::<serde_json::Value>(&Request::Confirm {}).map(|_| ()),
    }
}
