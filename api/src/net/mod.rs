//! The host network: its configuration model, its status, changes through the API, and the one
//! parser each of MAC addresses and interface names.

pub mod ifname;
pub mod mac;
pub mod model;

pub use ifname::{IfName, IfNameError, MAX_IFNAME_LEN};
pub use mac::{MacAddr, MacError};
pub use model::NetConfig;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `GET` → the host network's [`Status`] (running and saved configuration, links, leases,
/// gateways, resolver, a pending change); `POST` [`NetworkChange`] → [`NetworkApplied`]: apply a
/// change, rolled back unless confirmed in time when it cuts the host off (docs/network.md).
pub const HOST_NETWORK: &str = "/v1/host/network";
/// `POST` (body: a [`NetConfig`] change) → [`NetworkPreview`]; changes nothing.
pub const HOST_NETWORK_PREVIEW: &str = "/v1/host/network/preview";
/// `POST` → `{}`: keep the pending change; 409 when none is pending.
pub const HOST_NETWORK_CONFIRM: &str = "/v1/host/network/confirm";

/// Bounds of [`NetworkChange::confirm_within_secs`].
pub const NETWORK_CONFIRM_MIN_SECS: u64 = 5;
pub const NETWORK_CONFIRM_MAX_SECS: u64 = 3600;

/// Body of `POST` [`HOST_NETWORK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkChange {
    /// The sections to change (the same model as the kernel command line and the saved layer).
    pub change: NetConfig,
    /// Seconds to confirm in (5..=3600; 60 when absent) before the host checks it can still
    /// reach its gateway (and `manager`) and rolls back if not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_within_secs: Option<u64>,
    /// `host:port` that must stay reachable for the change to stand unconfirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// Answer to `POST` [`HOST_NETWORK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkApplied {
    /// What was done, one operation a line.
    pub operations: Vec<String>,
    pub confirm_within_secs: u64,
}

/// Answer to [`HOST_NETWORK_PREVIEW`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPreview {
    /// What applying would do, one operation a line.
    pub operations: Vec<String>,
}

/// A granted DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
}

/// One link, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub name: String,
    pub kind: String,
    pub mac: String,
    pub up: bool,
    pub carrier: bool,
    pub mtu: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    pub addresses: Vec<String>,
}

/// A change waiting for confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    pub seconds_left: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// Everything the console's status screen and the API's read show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The running configuration (all layers merged).
    pub config: NetConfig,
    /// The saved layer (changes from the console or the API).
    pub saved: NetConfig,
    pub management: String,
    pub links: Vec<LinkStatus>,
    /// DHCP leases by interface.
    pub leases: BTreeMap<String, Lease>,
    pub gateways: Vec<String>,
    pub dns_servers: Vec<String>,
    pub search: Vec<String>,
    pub pending: Option<PendingStatus>,
    pub persistent: bool,
    /// Set when settings will not survive a reboot.
    pub note: Option<String>,
    /// The last automatic rollback, if any.
    pub last_rollback: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_keeps_its_field_order() {
        let status = Status {
            config: NetConfig::default(),
            saved: NetConfig::default(),
            management: "keelbr0".into(),
            links: vec![LinkStatus {
                name: "eth0".into(),
                kind: "ethernet".into(),
                mac: "52:54:00:12:34:56".into(),
                up: true,
                carrier: true,
                mtu: 1500,
                master: Some("keelbr0".into()),
                addresses: vec![],
            }],
            leases: BTreeMap::from([(
                "keelbr0".to_string(),
                Lease {
                    address: Ipv4Addr::new(10, 0, 2, 15),
                    prefix: 24,
                    router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                    dns: vec![],
                    domain: None,
                    ntp: vec![],
                    server: Ipv4Addr::new(10, 0, 2, 2),
                    lease_secs: 86400,
                    t1_secs: 43200,
                    t2_secs: 75600,
                },
            )]),
            gateways: vec!["10.0.2.2".into()],
            dns_servers: vec![],
            search: vec![],
            pending: None,
            persistent: false,
            note: None,
            last_rollback: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"config":{},"saved":{},"management":"keelbr0","links":[{"name":"eth0","kind":"ethernet","#,
                r#""mac":"52:54:00:12:34:56","up":true,"carrier":true,"mtu":1500,"master":"keelbr0","addresses":[]}],"#,
                r#""leases":{"keelbr0":{"address":"10.0.2.15","prefix":24,"router":"10.0.2.2","dns":[],"domain":null,"#,
                r#""ntp":[],"server":"10.0.2.2","lease_secs":86400,"t1_secs":43200,"t2_secs":75600}},"#,
                r#""gateways":["10.0.2.2"],"dns_servers":[],"search":[],"pending":null,"persistent":false,"#,
                r#""note":null,"last_rollback":null}"#
            )
        );
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }

    #[test]
    fn a_change_refuses_unknown_fields() {
        let change: NetworkChange =
            serde_json::from_str(r#"{"change":{"hostname":"h"},"confirm_within_secs":30}"#)
                .unwrap();
        assert_eq!(change.confirm_within_secs, Some(30));
        assert!(serde_json::from_str::<NetworkChange>(r#"{"change":{},"confirm":1}"#).is_err());
    }
}
