//! The plan: a pure diff from the running state (read over rtnetlink) to a validated desired
//! configuration, as an ordered list of operations. Links are created bottom up (bonds, VLANs,
//! bridges), ports enslaved, MTUs set, links brought up, then addresses and default routes.

use std::fmt;
use std::net::IpAddr;

use super::model::{BondMode, Interface, Ipv4, Ipv6, Kind, NetConfig};
use super::validate::{parse_cidr4, parse_cidr6};

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpNet {
    /// Link-local IPv6 (fe80::/10) addresses belong to the kernel, not to the configuration.
    fn is_link_local6(&self) -> bool {
        matches!(self.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
    }
}

/// Routing protocol Keel marks its static default routes with (RTPROT_STATIC).
pub const PROTO_STATIC: u8 = 4;
/// Routing protocol of the DHCP client's default routes (RTPROT_DHCP).
pub const PROTO_DHCP: u8 = 16;

/// One link as rtnetlink reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `bond`, `vlan`, `veth`, …); None for plain NICs.
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    pub carrier: bool,
    pub mac: String,
    /// For a VLAN: parent index and VLAN id.
    pub vlan: Option<(u32, u16)>,
    /// For a bond: IFLA_BOND_MODE.
    pub bond_mode: Option<u8>,
    pub addrs: Vec<IpNet>,
}

/// A default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: IpAddr,
    pub oif: u32,
    pub protocol: u8,
}

/// The running network state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub links: Vec<Link>,
    pub routes: Vec<DefaultRoute>,
}

impl State {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }

    /// Physical NICs: links without a kind, except loopback.
    pub fn nics(&self) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(|l| l.kind.is_none() && l.name != "lo" && l.mac != "00:00:00:00:00:00")
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteLink {
        name: String,
    },
    CreateBond {
        name: String,
        mode: BondMode,
    },
    CreateVlan {
        name: String,
        parent: String,
        id: u16,
    },
    CreateBridge {
        name: String,
    },
    SetDown {
        name: String,
    },
    SetMaster {
        name: String,
        master: String,
    },
    SetNoMaster {
        name: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    SetUp {
        name: String,
    },
    /// IPv6 on or off and whether it autoconfigures (sysctls under /proc/sys/net/ipv6/conf).
    Ipv6 {
        name: String,
        enabled: bool,
        slaac: bool,
    },
    DelAddr {
        name: String,
        addr: IpNet,
    },
    AddAddr {
        name: String,
        addr: IpNet,
    },
    DelDefaultRoute {
        name: String,
        gateway: IpAddr,
    },
    AddDefaultRoute {
        name: String,
        gateway: IpAddr,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::DeleteLink { name } => write!(f, "delete {name}"),
            Op::CreateBond { name, mode } => write!(f, "create bond {name} ({mode:?})"),
            Op::CreateVlan { name, parent, id } => {
                write!(f, "create vlan {name} on {parent} id {id}")
            }
            Op::CreateBridge { name } => write!(f, "create bridge {name}"),
            Op::SetDown { name } => write!(f, "set {name} down"),
            Op::SetMaster { name, master } => write!(f, "attach {name} to {master}"),
            Op::SetNoMaster { name } => write!(f, "detach {name}"),
            Op::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Op::SetUp { name } => write!(f, "set {name} up"),
            Op::Ipv6 {
                name,
                enabled,
                slaac,
            } => write!(f, "set {name} ipv6 enabled={enabled} slaac={slaac}"),
            Op::DelAddr { name, addr } => write!(f, "delete address {addr} from {name}"),
            Op::AddAddr { name, addr } => write!(f, "add address {addr} to {name}"),
            Op::DelDefaultRoute { name, gateway } => {
                write!(f, "delete default route via {gateway} dev {name}")
            }
            Op::AddDefaultRoute { name, gateway } => {
                write!(f, "add default route via {gateway} dev {name}")
            }
        }
    }
}

/// Planning found something the machine cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// interfaces[{0}]: no such NIC on this host
    #[error("interfaces[{0}]: no such NIC on this host")]
    MissingNic(String),
    /// interfaces[{0}]: a {1} link of that name exists and Keel did not create it
    #[error("interfaces[{0}]: a {1} link of that name exists and Keel did not create it")]
    Foreign(String, String),
}

/// Creation order: NICs, bonds, VLANs, bridges.
fn rank(kind: &Kind) -> u8 {
    match kind {
        Kind::Ethernet {} => 0,
        Kind::Bond { .. } => 1,
        Kind::Vlan { .. } => 2,
        Kind::Bridge { .. } => 3,
    }
}

/// Whether `link` already is what `iface` describes.
fn matches_kind(link: &Link, iface: &Interface, state: &State) -> bool {
    match &iface.kind {
        Kind::Ethernet {} => true,
        Kind::Bond { mode, .. } => {
            link.kind.as_deref() == Some("bond")
                && link.bond_mode.is_none_or(|m| m == mode.kernel_mode())
        }
        Kind::Vlan { parent, id } => {
            link.kind.as_deref() == Some("vlan")
                && link
                    .vlan
                    .is_some_and(|(p, i)| i == *id && state.name_of(p) == Some(parent.as_str()))
        }
        Kind::Bridge { .. } => link.kind.as_deref() == Some("bridge"),
    }
}

/// The static address an interface should have per family, if any.
fn static_addrs(iface: &Interface) -> (Option<IpNet>, Option<IpNet>) {
    let v4 = match &iface.ipv4 {
        Ipv4::Static { address, .. } => parse_cidr4(address).map(|(a, p)| IpNet {
            addr: a.into(),
            prefix: p,
        }),
        _ => None,
    };
    let v6 = match &iface.ipv6 {
        Ipv6::Static { address, .. } => parse_cidr6(address).map(|(a, p)| IpNet {
            addr: a.into(),
            prefix: p,
        }),
        _ => None,
    };
    (v4, v6)
}

fn gateways(iface: &Interface) -> Vec<IpAddr> {
    let v4 = match &iface.ipv4 {
        Ipv4::Static {
            gateway: Some(g), ..
        } => g.parse().ok(),
        _ => None,
    };
    let v6 = match &iface.ipv6 {
        Ipv6::Static {
            gateway: Some(g), ..
        } => g.parse().ok(),
        _ => None,
    };
    v4.into_iter().chain(v6).collect()
}

/// The operations that turn `state` into `desired` (validated). `previous` is the configuration
/// Keel applied before, if any: links it created and `desired` drops are deleted, its ports
/// released.
pub fn plan(
    state: &State,
    previous: Option<&NetConfig>,
    desired: &NetConfig,
) -> Result<Vec<Op>, PlanError> {
    let mut ops = Vec::new();
    let mut wanted: Vec<&Interface> = desired.interfaces().iter().collect();
    wanted.sort_by_key(|i| rank(&i.kind));
    let ours = |name: &str| {
        previous
            .and_then(|p| p.interface(name))
            .is_some_and(|i| i.kind.link_kind().is_some())
    };

    // Links Keel made that are gone from the configuration or changed kind: delete.
    let mut deleted = Vec::new();
    for link in &state.links {
        let stale = match desired.interface(&link.name) {
            None => ours(&link.name),
            Some(iface) => iface.kind.link_kind().is_some() && !matches_kind(link, iface, state),
        };
        if stale {
            if let Some(iface) = desired.interface(&link.name) {
                if !ours(&link.name)
                    && link.kind.is_some()
                    && link.kind.as_deref() != iface.kind.link_kind()
                {
                    return Err(PlanError::Foreign(
                        link.name.clone(),
                        link.kind.clone().unwrap_or_default(),
                    ));
                }
            }
            ops.push(Op::DeleteLink {
                name: link.name.clone(),
            });
            deleted.push(link.name.as_str());
        }
    }
    let exists = |name: &str| state.link(name).is_some() && !deleted.contains(&name);

    // Ports of previous masters that are no longer ports of anything: release.
    let master_of = |name: &str| -> Option<&str> {
        wanted
            .iter()
            .find(|m| m.kind.ports().iter().any(|p| p == name))
            .map(|m| m.name.as_str())
    };
    for link in &state.links {
        if let Some(master) = link.master.and_then(|m| state.name_of(m)) {
            let was_ours = previous.and_then(|p| p.interface(master)).is_some();
            if was_ours && master_of(&link.name).is_none() && !deleted.contains(&link.name.as_str())
            {
                ops.push(Op::SetNoMaster {
                    name: link.name.clone(),
                });
            }
        }
    }

    for iface in &wanted {
        let name = iface.name.clone();
        match &iface.kind {
            Kind::Ethernet {} if state.link(&name).is_none() => {
                return Err(PlanError::MissingNic(name))
            }
            Kind::Ethernet {} => {}
            Kind::Bond { mode, .. } if !exists(&name) => {
                ops.push(Op::CreateBond { name, mode: *mode })
            }
            Kind::Vlan { parent, id } if !exists(&name) => ops.push(Op::CreateVlan {
                name,
                parent: parent.clone(),
                id: *id,
            }),
            Kind::Bridge { .. } if !exists(&name) => ops.push(Op::CreateBridge { name }),
            _ => {}
        }
    }

    for iface in &wanted {
        for port in iface.kind.ports() {
            let current = state
                .link(port)
                .filter(|_| !deleted.contains(&port.as_str()));
            let attached = current
                .and_then(|l| l.master)
                .and_then(|m| state.name_of(m))
                == Some(iface.name.as_str())
                && exists(&iface.name);
            if !attached {
                // Bond members must be down to be enslaved.
                if matches!(iface.kind, Kind::Bond { .. }) && current.is_some_and(|l| l.up) {
                    ops.push(Op::SetDown { name: port.clone() });
                }
                ops.push(Op::SetMaster {
                    name: port.clone(),
                    master: iface.name.clone(),
                });
            }
        }
    }

    for iface in &wanted {
        let link = state.link(&iface.name).filter(|_| exists(&iface.name));
        if let Some(mtu) = iface.mtu {
            if link.is_none_or(|l| l.mtu != mtu) {
                ops.push(Op::SetMtu {
                    name: iface.name.clone(),
                    mtu,
                });
            }
        }
    }
    for iface in &wanted {
        let link = state.link(&iface.name).filter(|_| exists(&iface.name));
        // Bond members were set down above to be enslaved: bring them up again.
        let downed = ops.contains(&Op::SetDown {
            name: iface.name.clone(),
        });
        if link.is_none_or(|l| !l.up) || downed {
            ops.push(Op::SetUp {
                name: iface.name.clone(),
            });
        }
    }

    for iface in &wanted {
        let is_port = master_of(&iface.name).is_some();
        ops.push(Op::Ipv6 {
            name: iface.name.clone(),
            enabled: !is_port && iface.ipv6 != Ipv6::default(),
            slaac: matches!(iface.ipv6, Ipv6::Slaac {}),
        });
        let have: Vec<IpNet> = state
            .link(&iface.name)
            .filter(|_| exists(&iface.name))
            .map(|l| l.addrs.clone())
            .unwrap_or_default();
        let (want4, want6) = static_addrs(iface);
        let keep_v4 = matches!(iface.ipv4, Ipv4::Dhcp {}) && !is_port;
        let keep_v6 = matches!(iface.ipv6, Ipv6::Slaac {}) && !is_port;
        for addr in &have {
            let drop = match addr.addr {
                IpAddr::V4(_) => !keep_v4 && Some(*addr) != want4,
                IpAddr::V6(_) => !addr.is_link_local6() && !keep_v6 && Some(*addr) != want6,
            };
            if drop {
                ops.push(Op::DelAddr {
                    name: iface.name.clone(),
                    addr: *addr,
                });
            }
        }
        for addr in want4.into_iter().chain(want6) {
            if !have.contains(&addr) {
                ops.push(Op::AddAddr {
                    name: iface.name.clone(),
                    addr,
                });
            }
        }
    }

    let dhcp_on = |index: u32| {
        state
            .name_of(index)
            .and_then(|n| desired.interface(n))
            .is_some_and(|i| matches!(i.ipv4, Ipv4::Dhcp {}))
    };
    let mut wanted_routes: Vec<(String, IpAddr)> = Vec::new();
    for iface in &wanted {
        for gw in gateways(iface) {
            wanted_routes.push((iface.name.clone(), gw));
        }
    }
    for route in &state.routes {
        let Some(name) = state.name_of(route.oif) else {
            continue;
        };
        let wanted_here = wanted_routes
            .iter()
            .any(|(n, g)| n == name && *g == route.gateway);
        let stale = match route.protocol {
            PROTO_STATIC => !wanted_here,
            PROTO_DHCP => !dhcp_on(route.oif),
            _ => false,
        };
        // Routes through a deleted link or address vanish with it.
        if stale && !deleted.contains(&name) {
            ops.push(Op::DelDefaultRoute {
                name: name.to_string(),
                gateway: route.gateway,
            });
        }
    }
    // Deleting an address can take the routes through it along: re-add those (idempotently).
    let deleted_addrs: Vec<(String, bool)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::DelAddr { name, addr } => Some((name.clone(), addr.addr.is_ipv4())),
            _ => None,
        })
        .collect();
    let readdressed = |name: &str, gateway: &IpAddr| {
        deleted_addrs
            .iter()
            .any(|(n, v4)| n == name && *v4 == gateway.is_ipv4())
    };
    for (name, gateway) in wanted_routes {
        let present = !readdressed(&name, &gateway)
            && state.routes.iter().any(|r| {
                r.protocol == PROTO_STATIC
                    && r.gateway == gateway
                    && state.name_of(r.oif) == Some(name.as_str())
                    && exists(&name)
            });
        if !present {
            ops.push(Op::AddDefaultRoute { name, gateway });
        }
    }
    Ok(ops)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        let (a, p) = text.split_once('/').unwrap();
        IpNet {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(String::from),
            mtu: 1500,
            mac: format!("52:54:00:00:00:{index:02x}"),
            ..Link::default()
        }
    }

    fn config(json: &str) -> NetConfig {
        serde_json::from_str(json).unwrap()
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    const DHCP_BRIDGE: &str = r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},
        {"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},"ipv4":{"mode":"dhcp"}}]}"#;
    const STATIC_BRIDGE: &str = r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},
        {"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
         "ipv4":{"mode":"static","address":"10.0.2.15/24","gateway":"10.0.2.2"}}]}"#;
    const BOND_VLAN: &str = r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"},"mtu":9000},
        {"name":"eth1","kind":{"type":"ethernet"},"mtu":9000},
        {"name":"bond0","kind":{"type":"bond","mode":"active-backup","members":["eth0","eth1"]},"mtu":9000},
        {"name":"bond0.7","kind":{"type":"vlan","parent":"bond0","id":7}},
        {"name":"keelbr0","kind":{"type":"bridge","ports":["bond0.7"]},
         "ipv4":{"mode":"static","address":"10.0.0.2/24","gateway":"10.0.0.1"},
         "ipv6":{"mode":"static","address":"2001:db8::2/64"}}]}"#;

    /// The state right after applying STATIC_BRIDGE.
    fn static_state() -> State {
        let mut eth0 = link(2, "eth0", None);
        eth0.master = Some(3);
        eth0.up = true;
        let mut br = link(3, "keelbr0", Some("bridge"));
        br.up = true;
        br.addrs = vec![net("10.0.2.15/24"), net("fe80::1/64")];
        State {
            links: vec![link(1, "lo", None), eth0, br],
            routes: vec![DefaultRoute {
                gateway: "10.0.2.2".parse().unwrap(),
                oif: 3,
                protocol: PROTO_STATIC,
            }],
        }
    }

    fn fresh() -> State {
        State {
            links: vec![
                link(1, "lo", None),
                link(2, "eth0", None),
                link(4, "eth1", None),
            ],
            routes: vec![],
        }
    }

    #[test]
    fn plans() {
        let ipv6_off = |name: &str| Op::Ipv6 {
            name: s(name),
            enabled: false,
            slaac: false,
        };
        type Case = (
            &'static str,
            State,
            Option<&'static str>,
            &'static str,
            Vec<Op>,
        );
        let cases: Vec<Case> = vec![
            (
                "boot with DHCP on the bridge",
                fresh(),
                None,
                DHCP_BRIDGE,
                vec![
                    Op::CreateBridge { name: s("keelbr0") },
                    Op::SetMaster {
                        name: s("eth0"),
                        master: s("keelbr0"),
                    },
                    Op::SetUp { name: s("eth0") },
                    Op::SetUp { name: s("keelbr0") },
                    ipv6_off("eth0"),
                    ipv6_off("keelbr0"),
                ],
            ),
            (
                "static, already applied: only the idempotent sysctls",
                static_state(),
                Some(STATIC_BRIDGE),
                STATIC_BRIDGE,
                vec![ipv6_off("eth0"), ipv6_off("keelbr0")],
            ),
            (
                "static to DHCP: the static address and route go, DHCP takes over",
                static_state(),
                Some(STATIC_BRIDGE),
                DHCP_BRIDGE,
                vec![
                    ipv6_off("eth0"),
                    ipv6_off("keelbr0"),
                    Op::DelDefaultRoute {
                        name: s("keelbr0"),
                        gateway: "10.0.2.2".parse().unwrap(),
                    },
                ],
            ),
            (
                "DHCP to static: the leased address is replaced",
                State {
                    links: static_state().links,
                    routes: vec![DefaultRoute {
                        gateway: "10.0.2.2".parse().unwrap(),
                        oif: 3,
                        protocol: PROTO_DHCP,
                    }],
                },
                Some(DHCP_BRIDGE),
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},
                   {"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
                    "ipv4":{"mode":"static","address":"10.0.2.16/24","gateway":"10.0.2.2"}}]}"#,
                vec![
                    ipv6_off("eth0"),
                    ipv6_off("keelbr0"),
                    Op::DelAddr {
                        name: s("keelbr0"),
                        addr: net("10.0.2.15/24"),
                    },
                    Op::AddAddr {
                        name: s("keelbr0"),
                        addr: net("10.0.2.16/24"),
                    },
                    Op::DelDefaultRoute {
                        name: s("keelbr0"),
                        gateway: "10.0.2.2".parse().unwrap(),
                    },
                    Op::AddDefaultRoute {
                        name: s("keelbr0"),
                        gateway: "10.0.2.2".parse().unwrap(),
                    },
                ],
            ),
            (
                "bond, VLAN and bridge from scratch, members set down to be enslaved",
                State {
                    links: fresh()
                        .links
                        .into_iter()
                        .map(|mut l| {
                            l.up = l.name == "eth0";
                            l
                        })
                        .collect(),
                    routes: vec![],
                },
                None,
                BOND_VLAN,
                vec![
                    Op::CreateBond {
                        name: s("bond0"),
                        mode: BondMode::ActiveBackup,
                    },
                    Op::CreateVlan {
                        name: s("bond0.7"),
                        parent: s("bond0"),
                        id: 7,
                    },
                    Op::CreateBridge { name: s("keelbr0") },
                    Op::SetDown { name: s("eth0") },
                    Op::SetMaster {
                        name: s("eth0"),
                        master: s("bond0"),
                    },
                    Op::SetMaster {
                        name: s("eth1"),
                        master: s("bond0"),
                    },
                    Op::SetMaster {
                        name: s("bond0.7"),
                        master: s("keelbr0"),
                    },
                    Op::SetMtu {
                        name: s("eth0"),
                        mtu: 9000,
                    },
                    Op::SetMtu {
                        name: s("eth1"),
                        mtu: 9000,
                    },
                    Op::SetMtu {
                        name: s("bond0"),
                        mtu: 9000,
                    },
                    Op::SetUp { name: s("eth0") },
                    Op::SetUp { name: s("eth1") },
                    Op::SetUp { name: s("bond0") },
                    Op::SetUp { name: s("bond0.7") },
                    Op::SetUp { name: s("keelbr0") },
                    ipv6_off("eth0"),
                    ipv6_off("eth1"),
                    ipv6_off("bond0"),
                    ipv6_off("bond0.7"),
                    Op::Ipv6 {
                        name: s("keelbr0"),
                        enabled: true,
                        slaac: false,
                    },
                    Op::AddAddr {
                        name: s("keelbr0"),
                        addr: net("10.0.0.2/24"),
                    },
                    Op::AddAddr {
                        name: s("keelbr0"),
                        addr: net("2001:db8::2/64"),
                    },
                    Op::AddDefaultRoute {
                        name: s("keelbr0"),
                        gateway: "10.0.0.1".parse().unwrap(),
                    },
                ],
            ),
            (
                "bridge dropped: deleted, its port released and given the address",
                static_state(),
                Some(STATIC_BRIDGE),
                r#"{"management":"eth0","interfaces":[{"name":"eth0","kind":{"type":"ethernet"},
                    "ipv4":{"mode":"static","address":"10.0.2.15/24","gateway":"10.0.2.2"}}]}"#,
                vec![
                    Op::DeleteLink { name: s("keelbr0") },
                    Op::SetNoMaster { name: s("eth0") },
                    ipv6_off("eth0"),
                    Op::AddAddr {
                        name: s("eth0"),
                        addr: net("10.0.2.15/24"),
                    },
                    Op::AddDefaultRoute {
                        name: s("eth0"),
                        gateway: "10.0.2.2".parse().unwrap(),
                    },
                ],
            ),
        ];
        for (what, state, previous, desired, want) in cases {
            let previous = previous.map(config);
            let got = plan(&state, previous.as_ref(), &config(desired)).unwrap();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn refuses_what_the_machine_cannot_do() {
        let mut state = fresh();
        state.links.push(link(9, "keelbr0", Some("veth")));
        let cases = [
            (
                fresh(),
                r#"{"interfaces":[{"name":"eth7","kind":{"type":"ethernet"}}]}"#,
                PlanError::MissingNic(s("eth7")),
            ),
            (
                state,
                DHCP_BRIDGE,
                PlanError::Foreign(s("keelbr0"), s("veth")),
            ),
        ];
        for (state, desired, want) in cases {
            assert_eq!(plan(&state, None, &config(desired)), Err(want), "{desired}");
        }
    }
}
