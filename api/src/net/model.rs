//! The typed host network configuration: what the operator (console, API, kernel command line)
//! asks for. Addresses stay text here so validation can name the field and the bad value
//! (keel-init's `net/validate.rs`); keel-init's `net/addr.rs` turns them into typed addresses.

use serde::{Deserialize, Serialize};

/// The management bridge's default name: VM NICs attach to it, the host's address lives on it.
pub const MANAGEMENT_BRIDGE: &str = "keelbr0";

/// The whole network configuration of the host, or one layer of it (`layers.rs`): a `None`
/// section inherits from the layer below.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Every interface Keel manages: NICs, bonds, VLANs and bridges. NICs not listed are left
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    /// The interface holding the management address (normally the management bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// NTP servers (host names or addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Vec<String>>,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ipv4: Ipv4,
    #[serde(default)]
    pub ipv6: Ipv6,
}

/// What the interface is; all but `Ethernet` are created by Keel. (Variants without data are
/// empty structs so that `deny_unknown_fields` also applies to them.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Kind {
    /// A physical NIC (or any existing link, matched by name).
    Ethernet {},
    Bond {
        mode: BondMode,
        members: Vec<String>,
    },
    Vlan {
        parent: String,
        id: u16,
    },
    Bridge {
        #[serde(default)]
        ports: Vec<String>,
    },
}

impl Kind {
    /// The rtnetlink `IFLA_INFO_KIND` of a link Keel creates.
    pub fn link_kind(&self) -> Option<&'static str> {
        match self {
            Kind::Ethernet {} => None,
            Kind::Bond { .. } => Some("bond"),
            Kind::Vlan { .. } => Some("vlan"),
            Kind::Bridge { .. } => Some("bridge"),
        }
    }

    /// The links enslaved to this one.
    pub fn ports(&self) -> &[String] {
        match self {
            Kind::Bond { members, .. } => members,
            Kind::Bridge { ports } => ports,
            Kind::Ethernet {} | Kind::Vlan { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BondMode {
    ActiveBackup,
    #[serde(rename = "802.3ad")]
    Lacp,
}

impl BondMode {
    /// `IFLA_BOND_MODE` value (BOND_MODE_ACTIVEBACKUP, BOND_MODE_8023AD).
    pub fn kernel_mode(self) -> u8 {
        match self {
            BondMode::ActiveBackup => 1,
            BondMode::Lacp => 4,
        }
    }

    pub fn parse(text: &str) -> Option<BondMode> {
        match text {
            "active-backup" | "1" => Some(BondMode::ActiveBackup),
            "802.3ad" | "lacp" | "4" => Some(BondMode::Lacp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Ipv4 {
    Off {},
    Dhcp {},
    Static {
        /// `a.b.c.d/prefix`.
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Ipv6 {
    Off {},
    Slaac {},
    Static {
        /// `addr/prefix`.
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
}

impl Default for Ipv4 {
    fn default() -> Self {
        Ipv4::Off {}
    }
}

impl Default for Ipv6 {
    fn default() -> Self {
        Ipv6::Off {}
    }
}

impl NetConfig {
    pub fn interfaces(&self) -> &[Interface] {
        self.interfaces.as_deref().unwrap_or(&[])
    }

    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces().iter().find(|i| i.name == name)
    }

    /// The management interface's name (default: the management bridge).
    pub fn management(&self) -> &str {
        self.management.as_deref().unwrap_or(MANAGEMENT_BRIDGE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let text = r#"{"hostname":"h1","interfaces":[
            {"name":"eth0","kind":{"type":"ethernet"},"mtu":9000},
            {"name":"eth1","kind":{"type":"ethernet"}},
            {"name":"bond0","kind":{"type":"bond","mode":"802.3ad","members":["eth0","eth1"]}},
            {"name":"bond0.7","kind":{"type":"vlan","parent":"bond0","id":7}},
            {"name":"keelbr0","kind":{"type":"bridge","ports":["bond0.7"]},
             "ipv4":{"mode":"static","address":"10.0.0.2/24","gateway":"10.0.0.1"},
             "ipv6":{"mode":"slaac"}}],
            "dns":{"servers":["10.0.0.53"],"search":["example.com"]},"ntp":["pool.ntp.org"]}"#;
        let config: NetConfig = serde_json::from_str(text).unwrap();
        assert_eq!(config.interfaces().len(), 5);
        assert_eq!(
            config.interface("bond0").unwrap().kind,
            Kind::Bond {
                mode: BondMode::Lacp,
                members: vec!["eth0".into(), "eth1".into()]
            }
        );
        assert_eq!(config.interface("eth1").unwrap().ipv4, Ipv4::Off {});
        let again: NetConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let cases = [
            r#"{"hostnme":"x"}"#,
            r#"{"interfaces":[{"name":"e","kind":{"type":"ethernet"},"speed":1}]}"#,
            r#"{"interfaces":[{"name":"e","kind":{"type":"vlan","parent":"x","id":1,"prio":2}}]}"#,
            r#"{"interfaces":[{"name":"e","kind":{"type":"ethernet"},"ipv4":{"mode":"dhcp","x":1}}]}"#,
            r#"{"interfaces":[{"name":"e","kind":{"type":"ethernet"},"ipv4":{"mode":"static","address":"1.2.3.4/8","gw":"1.1.1.1"}}]}"#,
            r#"{"dns":{"servers":[],"domains":[]}}"#,
            r#"{"interfaces":[{"name":"e","kind":{"type":"wifi"}}]}"#,
            r#"{"interfaces":[{"name":"b","kind":{"type":"bond","mode":"round-robin","members":[]}}]}"#,
        ];
        for text in cases {
            assert!(serde_json::from_str::<NetConfig>(text).is_err(), "{text}");
        }
    }
}
