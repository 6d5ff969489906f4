//! The configuration layers and how they merge: defaults (DHCP on the first NIC with link, bridged
//! as the management bridge) < kernel command line < saved configuration < changes from the
//! console or the API. Each layer is a `NetConfig` whose `None` sections inherit from below.
//!
//! Kernel command line (see docs/network.md):
//! - `ip=` in dracut's syntax: `ip=dhcp|on|any|auto6|off|none`, `ip=<if>:<autoconf>[:<mtu>]`,
//!   `ip=<client-IP>:[<peer>]:<gw>:<netmask>:<hostname>:<if>:<autoconf>[:<dns1>[:<dns2>]]`
//!   (IPv6 addresses in brackets; the netmask may be a prefix length). The first `ip=` configures
//!   the management interface, its `<if>` being the uplink; further ones configure their NIC
//!   directly. `keel.ip=` is the same.
//! - `keel.bond=<name>:<nic>,<nic>[:active-backup|802.3ad]`: the uplink is a bond of these NICs.
//! - `keel.vlan=<id>`: management traffic is tagged with this VLAN on the uplink.
//! - `keel.bridge=<name>|none`: the management bridge's name, or no bridge (address on the uplink).
//! - `keel.mtu=<n>`, `keel.ipv6=off|slaac|<addr/prefix>[,<gw>]`, `keel.dns=<ip>,<ip>`,
//!   `keel.search=<domain>,…`, `keel.ntp=<server>,…`, `keel.hostname=<name>`.

use super::model::{BondMode, Dns, Interface, Ipv4, Ipv6, Kind, NetConfig, MANAGEMENT_BRIDGE};
use super::validate::netmask_prefix;
use crate::pid1::cmdline::tokenize;

/// The `keel.*` parameters this module reads; PID 1's parser leaves them to it.
pub const CMDLINE_KEYS: &[&str] = &[
    "bond", "vlan", "bridge", "mtu", "ipv6", "dns", "search", "ntp",
];

/// A NIC the host has, as the defaults need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub carrier: bool,
}

/// How the management interface is built: NIC(s) → optional bond → optional VLAN → optional bridge.
/// The kernel command line's layer and the console's form both describe it this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub nics: Vec<String>,
    /// The bond's name and mode; `nics` are its members.
    pub bond: Option<(String, BondMode)>,
    pub vlan: Option<u16>,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    pub ipv4: Ipv4,
    pub ipv6: Ipv6,
}

impl Stack {
    /// The interfaces, bottom up; the last one carries the addresses and is the management one.
    fn interfaces(&self) -> Vec<Interface> {
        let plain = |name: &str, kind: Kind| Interface {
            name: name.to_string(),
            kind,
            mtu: self.mtu,
            ipv4: Ipv4::default(),
            ipv6: Ipv6::default(),
        };
        let mut out: Vec<Interface> = self
            .nics
            .iter()
            .map(|n| plain(n, Kind::Ethernet {}))
            .collect();
        let mut top = self.nics.first().cloned();
        if let Some((name, mode)) = &self.bond {
            out.push(plain(
                name,
                Kind::Bond {
                    mode: *mode,
                    members: self.nics.clone(),
                },
            ));
            top = Some(name.clone());
        }
        if let (Some(id), Some(parent)) = (self.vlan, top.clone()) {
            let name = vlan_name(&parent, id);
            out.push(plain(&name, Kind::Vlan { parent, id }));
            top = Some(name);
        }
        if let Some(bridge) = &self.bridge {
            out.push(plain(
                bridge,
                Kind::Bridge {
                    ports: top.into_iter().collect(),
                },
            ));
        }
        if let Some(last) = out.last_mut() {
            last.ipv4 = self.ipv4.clone();
            last.ipv6 = self.ipv6.clone();
        }
        out
    }

    /// The stack read back from `config`'s management interface down to its NICs: the inverse
    /// of `config()`. None when the management interface is not configured or is not built
    /// that way (a bridge over a bridge, a VLAN over a VLAN). A port that is not configured
    /// counts as a NIC.
    pub fn of(config: &NetConfig) -> Option<Stack> {
        let top = config.interface(config.management())?;
        let mut stack = Stack {
            nics: Vec::new(),
            bond: None,
            vlan: None,
            bridge: None,
            mtu: top.mtu,
            ipv4: top.ipv4.clone(),
            ipv6: top.ipv6.clone(),
        };
        let mut below = Some(top.name.as_str());
        let kind_of = |name: &str| config.interface(name).map(|i| &i.kind);
        if let (Some(name), Some(Kind::Bridge { ports })) = (below, kind_of(&top.name)) {
            stack.bridge = Some(name.to_string());
            below = ports.first().map(String::as_str);
        }
        if let Some(Kind::Vlan { parent, id }) = below.and_then(kind_of) {
            stack.vlan = Some(*id);
            below = Some(parent);
        }
        match (below, below.and_then(kind_of)) {
            (None, _) => {}
            (Some(nic), None | Some(Kind::Ethernet {})) => stack.nics = vec![nic.to_string()],
            (Some(bond), Some(Kind::Bond { mode, members })) => {
                stack.bond = Some((bond.to_string(), *mode));
                stack.nics.clone_from(members);
            }
            (Some(_), Some(Kind::Bridge { .. } | Kind::Vlan { .. })) => return None,
        }
        Some(stack)
    }

    /// The stack as a layer whose management interface is its top.
    pub fn config(&self) -> NetConfig {
        let interfaces = self.interfaces();
        NetConfig {
            management: interfaces.last().map(|i| i.name.clone()),
            interfaces: Some(interfaces),
            ..NetConfig::default()
        }
    }
}

/// `<parent>.<id>`, shortened to the 15 bytes Linux allows by cutting the parent's name.
fn vlan_name(parent: &str, id: u16) -> String {
    let suffix = format!(".{id}");
    let keep = 15usize.saturating_sub(suffix.len());
    let cut: String = parent.chars().take(keep).collect();
    format!("{cut}{suffix}")
}

/// The NIC the defaults use: the first with link, else the first.
fn default_nic(nics: &[Nic]) -> Option<&Nic> {
    nics.iter().find(|n| n.carrier).or(nics.first())
}

fn default_stack(nics: &[Nic]) -> Stack {
    let nic = default_nic(nics);
    Stack {
        nics: nic.map(|n| n.name.clone()).into_iter().collect(),
        bond: None,
        vlan: None,
        bridge: Some(MANAGEMENT_BRIDGE.to_string()),
        mtu: None,
        ipv4: if nic.is_some() {
            Ipv4::Dhcp {}
        } else {
            Ipv4::default()
        },
        ipv6: Ipv6::default(),
    }
}

/// The bottom layer: DHCP on the first NIC with link, bridged as the management bridge.
pub fn defaults(nics: &[Nic]) -> NetConfig {
    let mut config = default_stack(nics).config();
    config.management = Some(MANAGEMENT_BRIDGE.to_string());
    config
}

/// One `ip=` parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpParam {
    pub interface: Option<String>,
    pub ipv4: Option<Ipv4>,
    pub ipv6: Option<Ipv6>,
    pub hostname: Option<String>,
    pub mtu: Option<u32>,
    pub dns: Vec<String>,
}

/// The network parameters of the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdlineNet {
    pub ip: Vec<IpParam>,
    pub hostname: Option<String>,
    pub bond: Option<(String, Vec<String>, BondMode)>,
    pub vlan: Option<u16>,
    /// `Some(None)`: `keel.bridge=none`.
    pub bridge: Option<Option<String>>,
    pub mtu: Option<u32>,
    pub ipv6: Option<Ipv6>,
    pub dns: Option<Vec<String>>,
    pub search: Option<Vec<String>>,
    pub ntp: Option<Vec<String>>,
}

impl CmdlineNet {
    fn shapes_interfaces(&self) -> bool {
        !self.ip.is_empty()
            || self.bond.is_some()
            || self.vlan.is_some()
            || self.bridge.is_some()
            || self.mtu.is_some()
            || self.ipv6.is_some()
    }
}

/// Splits on ':' outside `[...]`, dropping the brackets.
fn split_fields(value: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut depth = 0;
    for c in value.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => fields.push(String::new()),
            c => fields.last_mut().map_or((), |f| f.push(c)),
        }
    }
    fields
}

fn autoconf(method: &str) -> Result<(Option<Ipv4>, Option<Ipv6>), String> {
    match method {
        "dhcp" | "on" | "any" => Ok((Some(Ipv4::Dhcp {}), None)),
        "auto6" | "dhcp6" => Ok((None, Some(Ipv6::Slaac {}))),
        "off" | "none" | "" => Ok((Some(Ipv4::default()), None)),
        other => Err(format!(
            "unsupported method {other:?} (dhcp, on, any, auto6, off, none)"
        )),
    }
}

fn non_empty(field: Option<&String>) -> Option<String> {
    field.filter(|f| !f.is_empty()).cloned()
}

/// Parses one dracut `ip=` value.
pub fn parse_ip(value: &str) -> Result<IpParam, String> {
    let f = split_fields(value);
    let mut p = IpParam::default();
    match f.len() {
        1 => (p.ipv4, p.ipv6) = autoconf(&f[0])?,
        2..=4 => {
            p.interface = non_empty(f.first());
            (p.ipv4, p.ipv6) = autoconf(&f[1])?;
            p.mtu = f
                .get(2)
                .filter(|m| !m.is_empty())
                .map(|m| m.parse().map_err(|_| format!("bad MTU {m:?}")))
                .transpose()?;
        }
        _ => {
            let client = &f[0];
            let gateway = non_empty(f.get(2));
            let mask = f.get(3).map(String::as_str).unwrap_or("");
            p.hostname = non_empty(f.get(4));
            p.interface = non_empty(f.get(5));
            (p.ipv4, p.ipv6) = autoconf(f.get(6).map(String::as_str).unwrap_or(""))?;
            p.dns = f
                .iter()
                .skip(7)
                .filter(|d| !d.is_empty())
                .cloned()
                .collect();
            if client.contains(':') {
                let prefix = if mask.is_empty() { "64" } else { mask };
                p.ipv6 = Some(Ipv6::Static {
                    address: format!("{client}/{prefix}"),
                    gateway,
                });
                p.ipv4 = p.ipv4.filter(|v| *v != Ipv4::default());
            } else if !client.is_empty() {
                let prefix = match mask.parse::<u8>() {
                    Ok(n) => n,
                    Err(_) => mask
                        .parse()
                        .ok()
                        .and_then(netmask_prefix)
                        .ok_or_else(|| format!("bad netmask {mask:?}"))?,
                };
                p.ipv4 = Some(Ipv4::Static {
                    address: format!("{client}/{prefix}"),
                    gateway,
                });
            }
        }
    }
    Ok(p)
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_ipv6(value: &str) -> Result<Ipv6, String> {
    match value {
        "off" => Ok(Ipv6::default()),
        "slaac" | "auto" => Ok(Ipv6::Slaac {}),
        _ => {
            let (address, gateway) = match value.split_once(',') {
                Some((a, g)) => (a.to_string(), Some(g.to_string())),
                None => (value.to_string(), None),
            };
            Ok(Ipv6::Static { address, gateway })
        }
    }
}

fn parse_bond(value: &str) -> Result<(String, Vec<String>, BondMode), String> {
    let mut f = value.split(':');
    let name = f
        .next()
        .filter(|n| !n.is_empty())
        .ok_or("a bond name is required")?;
    let members = list(f.next().unwrap_or(""));
    if members.is_empty() {
        return Err(String::from("members are required (name:nic,nic[:mode])"));
    }
    let mode = match f.next() {
        None | Some("") => BondMode::ActiveBackup,
        Some(m) => BondMode::parse(m)
            .ok_or_else(|| format!("unknown bond mode {m:?} (active-backup, 802.3ad)"))?,
    };
    Ok((name.to_string(), members, mode))
}

/// Reads the network parameters from a kernel command line; malformed ones become warnings.
pub fn parse_cmdline(cmdline: &str) -> (CmdlineNet, Vec<String>) {
    let mut net = CmdlineNet::default();
    let mut warnings = Vec::new();
    for (name, value) in tokenize(cmdline) {
        let key = match name.as_str() {
            "ip" | "keel.ip" => "ip",
            "keel.hostname" => "hostname",
            other => match other.strip_prefix("keel.") {
                Some(k) if CMDLINE_KEYS.contains(&k) => k,
                _ => continue,
            },
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            warnings.push(format!(
                "keel: network: ignoring {name}: a value is required"
            ));
            continue;
        };
        let result: Result<(), String> = (|| {
            match key {
                "ip" => net.ip.push(parse_ip(&value)?),
                "hostname" => net.hostname = Some(value.clone()),
                "bond" => net.bond = Some(parse_bond(&value)?),
                "vlan" => {
                    net.vlan = Some(
                        value
                            .parse()
                            .map_err(|_| String::from("expected a VLAN id"))?,
                    )
                }
                "bridge" => net.bridge = Some((value != "none").then(|| value.clone())),
                "mtu" => {
                    net.mtu = Some(
                        value
                            .parse()
                            .map_err(|_| String::from("expected a number"))?,
                    )
                }
                "ipv6" => net.ipv6 = Some(parse_ipv6(&value)?),
                "dns" => net.dns = Some(list(&value)),
                "search" => net.search = Some(list(&value)),
                _ => net.ntp = Some(list(&value)),
            }
            Ok(())
        })();
        if let Err(why) = result {
            warnings.push(format!("keel: network: ignoring {name}={value}: {why}"));
        }
    }
    (net, warnings)
}

/// The kernel command line's layer. `nics` decides the uplink when `ip=` names none.
pub fn cmdline_layer(net: &CmdlineNet, nics: &[Nic]) -> NetConfig {
    let mut config = NetConfig::default();
    let first = net.ip.first();
    if net.shapes_interfaces() {
        let mut stack = default_stack(nics);
        if let Some(iface) = first.and_then(|p| p.interface.clone()) {
            stack.nics = vec![iface];
        }
        if let Some((name, members, mode)) = &net.bond {
            stack.nics.clone_from(members);
            stack.bond = Some((name.clone(), *mode));
        }
        stack.vlan = net.vlan;
        if let Some(bridge) = &net.bridge {
            stack.bridge.clone_from(bridge);
        }
        stack.mtu = net.mtu.or(first.and_then(|p| p.mtu));
        if let Some(v4) = first.and_then(|p| p.ipv4.clone()) {
            stack.ipv4 = v4;
        }
        if let Some(v6) = net.ipv6.clone().or(first.and_then(|p| p.ipv6.clone())) {
            stack.ipv6 = v6;
        }
        config = stack.config();
        // Further ip= parameters configure their NIC directly.
        let interfaces = config.interfaces.get_or_insert_with(Vec::new);
        for p in net.ip.iter().skip(1) {
            let Some(name) = &p.interface else { continue };
            interfaces.retain(|i| &i.name != name);
            interfaces.push(Interface {
                name: name.clone(),
                kind: Kind::Ethernet {},
                mtu: p.mtu,
                ipv4: p.ipv4.clone().unwrap_or_default(),
                ipv6: p.ipv6.clone().unwrap_or_default(),
            });
        }
    }
    config.hostname = net
        .hostname
        .clone()
        .or(net.ip.iter().find_map(|p| p.hostname.clone()));
    let ip_dns: Vec<String> = net.ip.iter().flat_map(|p| p.dns.clone()).collect();
    let servers = net.dns.clone().or((!ip_dns.is_empty()).then_some(ip_dns));
    if servers.is_some() || net.search.is_some() {
        config.dns = Some(Dns {
            servers: servers.unwrap_or_default(),
            search: net.search.clone().unwrap_or_default(),
        });
    }
    config.ntp = net.ntp.clone();
    config
}

/// `upper` over `lower`: each section `upper` sets replaces `lower`'s.
pub fn merge(lower: &NetConfig, upper: &NetConfig) -> NetConfig {
    NetConfig {
        hostname: upper.hostname.clone().or_else(|| lower.hostname.clone()),
        interfaces: upper
            .interfaces
            .clone()
            .or_else(|| lower.interfaces.clone()),
        management: match (&upper.interfaces, &upper.management) {
            (_, Some(m)) => Some(m.clone()),
            // New interfaces without a management name: the lower one may not exist any more.
            (Some(_), None) => None,
            (None, None) => lower.management.clone(),
        },
        dns: upper.dns.clone().or_else(|| lower.dns.clone()),
        ntp: upper.ntp.clone().or_else(|| lower.ntp.clone()),
    }
}

/// All layers, lowest first, merged.
pub fn resolve(layers: &[&NetConfig]) -> NetConfig {
    layers
        .iter()
        .fold(NetConfig::default(), |acc, l| merge(&acc, l))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nic(name: &str, carrier: bool) -> Nic {
        Nic {
            name: name.into(),
            carrier,
        }
    }

    fn eth(name: &str) -> Interface {
        Interface {
            name: name.into(),
            kind: Kind::Ethernet {},
            mtu: None,
            ipv4: Ipv4::default(),
            ipv6: Ipv6::default(),
        }
    }

    fn bridge(name: &str, ports: &[&str], ipv4: Ipv4) -> Interface {
        Interface {
            name: name.into(),
            kind: Kind::Bridge {
                ports: ports.iter().map(|p| p.to_string()).collect(),
            },
            mtu: None,
            ipv4,
            ipv6: Ipv6::default(),
        }
    }

    fn static4(address: &str, gateway: Option<&str>) -> Ipv4 {
        Ipv4::Static {
            address: address.into(),
            gateway: gateway.map(String::from),
        }
    }

    #[test]
    fn defaults_pick_the_first_nic_with_link() {
        let cases: Vec<(Vec<Nic>, Vec<Interface>)> = vec![
            (
                vec![nic("eth0", false), nic("eth1", true)],
                vec![eth("eth1"), bridge("keelbr0", &["eth1"], Ipv4::Dhcp {})],
            ),
            (
                vec![nic("eth0", false), nic("eth1", false)],
                vec![eth("eth0"), bridge("keelbr0", &["eth0"], Ipv4::Dhcp {})],
            ),
            (vec![], vec![bridge("keelbr0", &[], Ipv4::default())]),
        ];
        for (nics, want) in cases {
            let got = defaults(&nics);
            assert_eq!(got.interfaces, Some(want), "{nics:?}");
            assert_eq!(got.management(), "keelbr0");
        }
    }

    #[test]
    fn parses_dracut_ip() {
        let cases: Vec<(&str, Result<IpParam, String>)> = vec![
            (
                "dhcp",
                Ok(IpParam {
                    ipv4: Some(Ipv4::Dhcp {}),
                    ..IpParam::default()
                }),
            ),
            (
                "auto6",
                Ok(IpParam {
                    ipv6: Some(Ipv6::Slaac {}),
                    ..IpParam::default()
                }),
            ),
            (
                "eth1:dhcp:9000",
                Ok(IpParam {
                    interface: Some("eth1".into()),
                    ipv4: Some(Ipv4::Dhcp {}),
                    mtu: Some(9000),
                    ..IpParam::default()
                }),
            ),
            (
                "10.0.2.15::10.0.2.2:255.255.255.0:keelhost:eth0:none",
                Ok(IpParam {
                    interface: Some("eth0".into()),
                    ipv4: Some(static4("10.0.2.15/24", Some("10.0.2.2"))),
                    hostname: Some("keelhost".into()),
                    ..IpParam::default()
                }),
            ),
            (
                "10.1.0.5::10.1.0.1:16:::off:10.1.0.53:10.1.0.54",
                Ok(IpParam {
                    ipv4: Some(static4("10.1.0.5/16", Some("10.1.0.1"))),
                    dns: vec!["10.1.0.53".into(), "10.1.0.54".into()],
                    ..IpParam::default()
                }),
            ),
            (
                "[2001:db8::5]::[2001:db8::1]:64::eth0:none",
                Ok(IpParam {
                    interface: Some("eth0".into()),
                    ipv6: Some(Ipv6::Static {
                        address: "2001:db8::5/64".into(),
                        gateway: Some("2001:db8::1".into()),
                    }),
                    ..IpParam::default()
                }),
            ),
            (
                "10.0.0.2::10.0.0.1:255.0.255.0::eth0:none",
                Err("bad netmask \"255.0.255.0\"".into()),
            ),
            (
                "ibft",
                Err("unsupported method \"ibft\" (dhcp, on, any, auto6, off, none)".into()),
            ),
            ("eth0:dhcp:big", Err("bad MTU \"big\"".into())),
        ];
        for (value, want) in cases {
            assert_eq!(parse_ip(value), want, "{value}");
        }
    }

    #[test]
    fn command_line_layer() {
        let nics = [nic("eth0", true), nic("eth1", true)];
        let cases: Vec<(&str, NetConfig, Vec<&str>)> = vec![
            ("quiet console=ttyS0", NetConfig::default(), vec![]),
            (
                "ip=10.0.2.15::10.0.2.2:255.255.255.0:keelhost:eth0:none keel.dns=10.0.2.3",
                NetConfig {
                    hostname: Some("keelhost".into()),
                    interfaces: Some(vec![eth("eth0"), bridge("keelbr0", &["eth0"], static4("10.0.2.15/24", Some("10.0.2.2")))]),
                    management: Some("keelbr0".into()),
                    dns: Some(Dns { servers: vec!["10.0.2.3".into()], search: vec![] }),
                    ntp: None,
                },
                vec![],
            ),
            (
                "keel.bond=bond0:eth0,eth1:802.3ad keel.vlan=42 keel.mtu=9000 keel.bridge=none keel.ntp=a.example,b.example keel.search=example.com keel.vlan=x",
                NetConfig {
                    interfaces: Some(vec![
                        Interface { mtu: Some(9000), ..eth("eth0") },
                        Interface { mtu: Some(9000), ..eth("eth1") },
                        Interface {
                            mtu: Some(9000),
                            kind: Kind::Bond { mode: BondMode::Lacp, members: vec!["eth0".into(), "eth1".into()] },
                            ..eth("bond0")
                        },
                        Interface {
                            mtu: Some(9000),
                            kind: Kind::Vlan { parent: "bond0".into(), id: 42 },
                            ipv4: Ipv4::Dhcp {},
                            ..eth("bond0.42")
                        },
                    ]),
                    management: Some("bond0.42".into()),
                    dns: Some(Dns { servers: vec![], search: vec!["example.com".into()] }),
                    ntp: Some(vec!["a.example".into(), "b.example".into()]),
                    ..NetConfig::default()
                },
                vec!["keel: network: ignoring keel.vlan=x: expected a VLAN id"],
            ),
            (
                "ip=eth1:dhcp ip=eth0:off keel.ipv6=slaac keel.bond=:x keel.dns",
                NetConfig {
                    interfaces: Some(vec![
                        eth("eth1"),
                        Interface { ipv6: Ipv6::Slaac {}, ..bridge("keelbr0", &["eth1"], Ipv4::Dhcp {}) },
                        eth("eth0"),
                    ]),
                    management: Some("keelbr0".into()),
                    ..NetConfig::default()
                },
                vec![
                    "keel: network: ignoring keel.bond=:x: a bond name is required",
                    "keel: network: ignoring keel.dns: a value is required",
                ],
            ),
        ];
        for (line, want, warnings) in cases {
            let (net, got_warnings) = parse_cmdline(line);
            assert_eq!(got_warnings, warnings, "{line}");
            assert_eq!(cmdline_layer(&net, &nics), want, "{line}");
        }
    }

    #[test]
    fn stacks_read_back_from_their_layer() {
        let stack = |nics: &[&str], bond: Option<BondMode>, vlan, bridge: Option<&str>| Stack {
            nics: nics.iter().map(|n| n.to_string()).collect(),
            bond: bond.map(|m| ("bond0".to_string(), m)),
            vlan,
            bridge: bridge.map(String::from),
            mtu: Some(9000),
            ipv4: static4("10.0.0.2/24", Some("10.0.0.1")),
            ipv6: Ipv6::Slaac {},
        };
        let cases = [
            stack(&["eth0"], None, None, Some("keelbr0")),
            stack(&["eth0"], None, None, None),
            stack(
                &["eth0", "eth1"],
                Some(BondMode::Lacp),
                Some(7),
                Some("br1"),
            ),
            stack(&["eth0", "eth1"], Some(BondMode::ActiveBackup), None, None),
            stack(&["eth2"], None, Some(4094), None),
            stack(&[], None, None, Some("keelbr0")),
        ];
        for want in cases {
            assert_eq!(Stack::of(&want.config()), Some(want.clone()), "{want:?}");
        }
        // Not a stack: nothing configured, or a VLAN over a bridge.
        assert_eq!(Stack::of(&NetConfig::default()), None);
        let mut odd = stack(&["eth0"], None, None, Some("keelbr0")).config();
        let vlan = Interface {
            name: "keelbr0.5".into(),
            kind: Kind::Vlan {
                parent: "keelbr0".into(),
                id: 5,
            },
            ..eth("x")
        };
        odd.interfaces.get_or_insert_with(Vec::new).push(vlan);
        odd.management = Some("keelbr0.5".into());
        assert_eq!(Stack::of(&odd), None);
        // A port that is not configured is taken for a NIC.
        let bare = NetConfig {
            interfaces: Some(vec![bridge("keelbr0", &["eth3"], Ipv4::Dhcp {})]),
            ..NetConfig::default()
        };
        assert_eq!(Stack::of(&bare).map(|s| s.nics), Some(vec!["eth3".into()]));
    }

    #[test]
    fn vlan_names_fit_linux() {
        assert_eq!(vlan_name("eth0", 7), "eth0.7");
        assert_eq!(vlan_name("enp129s0f1np1", 4094), "enp129s0f1.4094");
    }

    #[test]
    fn merges_section_by_section() {
        let base = defaults(&[nic("eth0", true)]);
        let dns = Dns {
            servers: vec!["1.1.1.1".into()],
            search: vec![],
        };
        let cmdline = NetConfig {
            hostname: Some("a".into()),
            dns: Some(dns.clone()),
            ..NetConfig::default()
        };
        let saved = NetConfig {
            interfaces: Some(vec![
                eth("eth0"),
                Interface {
                    ipv4: static4("10.0.0.2/24", None),
                    ..eth("eth0")
                },
            ]),
            ntp: Some(vec!["ntp".into()]),
            ..NetConfig::default()
        };
        let change = NetConfig {
            hostname: Some("b".into()),
            management: Some("eth0".into()),
            ..NetConfig::default()
        };
        let cases: Vec<(Vec<&NetConfig>, NetConfig)> = vec![
            (vec![], NetConfig::default()),
            (vec![&base], base.clone()),
            (
                vec![&base, &cmdline],
                NetConfig {
                    hostname: Some("a".into()),
                    dns: Some(dns.clone()),
                    ..base.clone()
                },
            ),
            (
                vec![&base, &cmdline, &saved],
                NetConfig {
                    hostname: Some("a".into()),
                    interfaces: saved.interfaces.clone(),
                    management: None,
                    dns: Some(dns.clone()),
                    ntp: Some(vec!["ntp".into()]),
                },
            ),
            (
                vec![&base, &cmdline, &saved, &change],
                NetConfig {
                    hostname: Some("b".into()),
                    interfaces: saved.interfaces.clone(),
                    management: Some("eth0".into()),
                    dns: Some(dns),
                    ntp: Some(vec!["ntp".into()]),
                },
            ),
        ];
        for (layers, want) in cases {
            assert_eq!(resolve(&layers), want, "{} layers", layers.len());
        }
    }
}
