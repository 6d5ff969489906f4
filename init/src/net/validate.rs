//! Validation of a whole configuration. Every problem names the field and the bad value
//! (`interfaces[eth1].ipv4.address: 10.0.0.300/24 is not an IPv4 address/prefix`); a config with
//! problems is never applied, so the running configuration stays as it was.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::model::{Interface, Ipv4, Ipv6, Kind, NetConfig};

/// One problem: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the problems of a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// Largest MTU Linux NICs accept in practice (jumbo frames).
const MAX_MTU: u32 = 9216;
/// Smallest MTU IPv4 allows (RFC 791); IPv6 needs 1280.
const MIN_MTU: u32 = 68;

/// `a.b.c.d/prefix` with prefix 1..=32.
pub fn parse_cidr4(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some((addr.parse().ok()?, prefix))
}

/// `addr/prefix` with prefix 1..=128.
pub fn parse_cidr6(text: &str) -> Option<(Ipv6Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=128).contains(p))?;
    Some((addr.parse().ok()?, prefix))
}

/// The prefix length of a dotted netmask (`255.255.255.0` → 24); None for a non-contiguous mask.
pub fn netmask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0 && ones > 0).then_some(ones as u8)
}

/// True if `a` and `b` are in the same IPv4 network of length `prefix`.
pub fn same_subnet4(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// A Linux interface name ([`keel_api::IfName`]: 1..=15 bytes, no '/', ':' or white space).
pub fn interface_name(name: &str) -> Result<(), String> {
    keel_api::IfName::new(name)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A DNS name: labels of letters, digits and '-' (1..=63 each, not starting or ending with '-'),
/// at most 253 characters.
pub fn dns_name(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks everything that can be checked without looking at the machine.
pub fn validate(config: &NetConfig) -> Result<(), Invalid> {
    let mut c = Checker { errors: Vec::new() };
    if let Some(name) = &config.hostname {
        if !dns_name(name) || name.len() > 64 {
            c.fail(
                "hostname",
                format!("{name:?} is not a host name (letters, digits, '-' and '.', at most 64)"),
            );
        }
    }
    let ifaces = config.interfaces();
    let mut names = BTreeSet::new();
    for iface in ifaces {
        if !names.insert(iface.name.as_str()) {
            c.fail(format!("interfaces[{}]", iface.name), "is listed twice");
        }
    }
    let mut enslaved: BTreeSet<&str> = BTreeSet::new();
    let mut gateways4 = Vec::new();
    let mut gateways6 = Vec::new();
    for iface in ifaces {
        let at = format!("interfaces[{}]", iface.name);
        if let Err(e) = interface_name(&iface.name) {
            c.fail(format!("{at}.name"), e);
        }
        check_kind(&mut c, &at, iface, ifaces, &mut enslaved);
        if let Some(mtu) = iface.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                c.fail(
                    format!("{at}.mtu"),
                    format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
                );
            }
        }
        if let Some(gw) = check_ipv4(&mut c, &at, &iface.ipv4) {
            gateways4.push(gw);
        }
        if let Some(gw) = check_ipv6(&mut c, &at, &iface.ipv6) {
            gateways6.push(gw);
        }
    }
    // A port carries no addresses: its master does.
    for iface in ifaces.iter().filter(|i| enslaved.contains(i.name.as_str())) {
        if iface.ipv4 != Ipv4::default() || iface.ipv6 != Ipv6::default() {
            c.fail(
                format!("interfaces[{}]", iface.name),
                "is a bond member or bridge port and cannot have addresses (set ipv4/ipv6 off)",
            );
        }
    }
    if gateways4.len() > 1 {
        c.fail(
            "interfaces",
            format!(
                "more than one IPv4 default gateway ({})",
                gateways4.join(", ")
            ),
        );
    }
    if gateways6.len() > 1 {
        c.fail(
            "interfaces",
            format!(
                "more than one IPv6 default gateway ({})",
                gateways6.join(", ")
            ),
        );
    }
    if !ifaces.is_empty() && config.interface(config.management()).is_none() {
        c.fail(
            "management",
            format!("{:?} is not one of the interfaces", config.management()),
        );
    }
    if let Some(dns) = &config.dns {
        for (i, server) in dns.servers.iter().enumerate() {
            if server.parse::<IpAddr>().is_err() {
                c.fail(
                    format!("dns.servers[{i}]"),
                    format!("{server} is not an IP address"),
                );
            }
        }
        for (i, domain) in dns.search.iter().enumerate() {
            if !dns_name(domain) {
                c.fail(
                    format!("dns.search[{i}]"),
                    format!("{domain:?} is not a domain name"),
                );
            }
        }
    }
    for (i, server) in config.ntp.iter().flatten().enumerate() {
        if server.parse::<IpAddr>().is_err() && !dns_name(server) {
            c.fail(
                format!("ntp[{i}]"),
                format!("{server:?} is neither an address nor a host name"),
            );
        }
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(c.errors))
    }
}

fn check_kind<'a>(
    c: &mut Checker,
    at: &str,
    iface: &'a Interface,
    all: &'a [Interface],
    enslaved: &mut BTreeSet<&'a str>,
) {
    let find = |name: &str| all.iter().find(|i| i.name == name);
    match &iface.kind {
        Kind::Ethernet {} => {}
        Kind::Vlan { parent, id } => {
            if !(1..=4094).contains(id) {
                c.fail(format!("{at}.kind.id"), format!("{id} is outside 1..=4094"));
            }
            match find(parent) {
                None => c.fail(
                    format!("{at}.kind.parent"),
                    format!("{parent:?} is not one of the interfaces"),
                ),
                Some(p)
                    if matches!(p.kind, Kind::Bridge { .. } | Kind::Vlan { .. })
                        || p.name == iface.name =>
                {
                    c.fail(
                        format!("{at}.kind.parent"),
                        format!("{parent:?} cannot carry a VLAN (use a NIC or bond)"),
                    )
                }
                Some(_) => {}
            }
        }
        Kind::Bond { members, .. } | Kind::Bridge { ports: members } => {
            let is_bond = matches!(iface.kind, Kind::Bond { .. });
            let field = if is_bond { "members" } else { "ports" };
            if is_bond && members.is_empty() {
                c.fail(
                    format!("{at}.kind.members"),
                    "a bond needs at least one member",
                );
            }
            for (i, port) in members.iter().enumerate() {
                let at = format!("{at}.kind.{field}[{i}]");
                match find(port) {
                    None => c.fail(at, format!("{port:?} is not one of the interfaces")),
                    Some(p) if is_bond && !matches!(p.kind, Kind::Ethernet {}) => c.fail(
                        at,
                        format!("{port:?} is not a NIC; bond members must be NICs"),
                    ),
                    Some(p) if matches!(p.kind, Kind::Bridge { .. }) => {
                        c.fail(at, format!("{port:?} is a bridge and cannot be a port"))
                    }
                    Some(p) => {
                        if !enslaved.insert(p.name.as_str()) {
                            c.fail(
                                at,
                                format!(
                                    "{port:?} is already a member or port of another interface"
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Checks the IPv4 settings; returns the default gateway, if one is set.
fn check_ipv4(c: &mut Checker, at: &str, ipv4: &Ipv4) -> Option<String> {
    let Ipv4::Static { address, gateway } = ipv4 else {
        return None;
    };
    let cidr = parse_cidr4(address);
    if cidr.is_none() {
        c.fail(
            format!("{at}.ipv4.address"),
            format!("{address} is not an IPv4 address/prefix (like 10.0.0.2/24)"),
        );
    }
    let gw_text = gateway.as_ref()?;
    match (gw_text.parse::<Ipv4Addr>(), cidr) {
        (Err(_), _) => c.fail(
            format!("{at}.ipv4.gateway"),
            format!("{gw_text} is not an IPv4 address"),
        ),
        (Ok(gw), Some((addr, prefix))) if !same_subnet4(gw, addr, prefix) || gw == addr => c.fail(
            format!("{at}.ipv4.gateway"),
            format!("{gw_text} is not another address in {address}'s network"),
        ),
        _ => {}
    }
    Some(gw_text.clone())
}

fn check_ipv6(c: &mut Checker, at: &str, ipv6: &Ipv6) -> Option<String> {
    let Ipv6::Static { address, gateway } = ipv6 else {
        return None;
    };
    if parse_cidr6(address).is_none() {
        c.fail(
            format!("{at}.ipv6.address"),
            format!("{address} is not an IPv6 address/prefix (like 2001:db8::2/64)"),
        );
    }
    let gw_text = gateway.as_ref()?;
    if gw_text.parse::<Ipv6Addr>().is_err() {
        c.fail(
            format!("{at}.ipv6.gateway"),
            format!("{gw_text} is not an IPv6 address"),
        );
    }
    Some(gw_text.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(json: &str) -> NetConfig {
        serde_json::from_str(json).unwrap()
    }

    const GOOD: &str = r#"{"hostname":"node-1.example.com","interfaces":[
        {"name":"eth0","kind":{"type":"ethernet"},"mtu":9000},
        {"name":"eth1","kind":{"type":"ethernet"}},
        {"name":"bond0","kind":{"type":"bond","mode":"active-backup","members":["eth0","eth1"]}},
        {"name":"bond0.7","kind":{"type":"vlan","parent":"bond0","id":7}},
        {"name":"keelbr0","kind":{"type":"bridge","ports":["bond0.7"]},
         "ipv4":{"mode":"static","address":"10.0.0.2/24","gateway":"10.0.0.1"},
         "ipv6":{"mode":"static","address":"2001:db8::2/64","gateway":"fe80::1"}}],
        "dns":{"servers":["10.0.0.53","2001:db8::53"],"search":["example.com"]},
        "ntp":["pool.ntp.org","10.0.0.1"]}"#;

    #[test]
    fn accepts_good_configs() {
        for json in [
            GOOD,
            "{}",
            r#"{"interfaces":[{"name":"keelbr0","kind":{"type":"bridge"},"ipv4":{"mode":"dhcp"}}]}"#,
        ] {
            assert_eq!(validate(&config(json)), Ok(()), "{json}");
        }
    }

    #[test]
    fn names_the_bad_field() {
        let iface = |extra: &str| {
            format!(
                r#"{{"interfaces":[{{"name":"eth0","kind":{{"type":"ethernet"}}}},
                   {{"name":"keelbr0","kind":{{"type":"bridge","ports":["eth0"]}}{extra}}}]}}"#
            )
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                iface(r#","ipv4":{"mode":"static","address":"10.0.0.300/24"}"#),
                &["interfaces[keelbr0].ipv4.address: 10.0.0.300/24 is not an IPv4 address/prefix (like 10.0.0.2/24)"],
            ),
            (
                iface(r#","ipv4":{"mode":"static","address":"10.0.0.3/33"}"#),
                &["interfaces[keelbr0].ipv4.address: 10.0.0.3/33 is not an IPv4 address/prefix (like 10.0.0.2/24)"],
            ),
            (
                iface(r#","ipv4":{"mode":"static","address":"10.0.0.3/24","gateway":"10.0.1.1"}"#),
                &["interfaces[keelbr0].ipv4.gateway: 10.0.1.1 is not another address in 10.0.0.3/24's network"],
            ),
            (
                iface(r#","ipv6":{"mode":"static","address":"2001:db8::g/64"}"#),
                &["interfaces[keelbr0].ipv6.address: 2001:db8::g/64 is not an IPv6 address/prefix (like 2001:db8::2/64)"],
            ),
            (iface(r#","mtu":20"#), &["interfaces[keelbr0].mtu: 20 is outside 68..=9216"]),
            (
                r#"{"hostname":"-x","dns":{"servers":["1.2.3"],"search":["a..b"]},"ntp":["a b"]}"#.into(),
                &[
                    "hostname: \"-x\" is not a host name (letters, digits, '-' and '.', at most 64)",
                    "dns.servers[0]: 1.2.3 is not an IP address",
                    "dns.search[0]: \"a..b\" is not a domain name",
                    "ntp[0]: \"a b\" is neither an address nor a host name",
                ],
            ),
            (
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"},"ipv4":{"mode":"dhcp"}},
                   {"name":"keelbr0","kind":{"type":"bridge","ports":["eth0","eth9"]}}]}"#.into(),
                &[
                    "interfaces[keelbr0].kind.ports[1]: \"eth9\" is not one of the interfaces",
                    "interfaces[eth0]: is a bond member or bridge port and cannot have addresses (set ipv4/ipv6 off)",
                ],
            ),
            (
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},
                   {"name":"v","kind":{"type":"vlan","parent":"eth0","id":4095}},
                   {"name":"b","kind":{"type":"bond","mode":"802.3ad","members":["v"]}},
                   {"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]}},
                   {"name":"br1","kind":{"type":"bridge","ports":["eth0"]}}]}"#.into(),
                &[
                    "interfaces[v].kind.id: 4095 is outside 1..=4094",
                    "interfaces[b].kind.members[0]: \"v\" is not a NIC; bond members must be NICs",
                    "interfaces[br1].kind.ports[0]: \"eth0\" is already a member or port of another interface",
                ],
            ),
            (
                r#"{"management":"br9","interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},
                   {"name":"eth0","kind":{"type":"ethernet"}},{"name":"a/b","kind":{"type":"ethernet"}}]}"#.into(),
                &[
                    "interfaces[eth0]: is listed twice",
                    "interfaces[a/b].name: \"a/b\" is not an interface name (1 to 15 characters, no '/', ':' or spaces)",
                    "management: \"br9\" is not one of the interfaces",
                ],
            ),
            (
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"},"ipv4":{"mode":"static","address":"10.0.0.2/24","gateway":"10.0.0.1"}},
                   {"name":"keelbr0","kind":{"type":"bridge"},"ipv4":{"mode":"static","address":"10.1.0.2/24","gateway":"10.1.0.1"}}]}"#.into(),
                &["interfaces: more than one IPv4 default gateway (10.0.0.1, 10.1.0.1)"],
            ),
        ];
        for (json, want) in cases {
            let got = validate(&config(&json)).unwrap_err();
            let got: Vec<String> = got.0.iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "{json}");
        }
    }

    #[test]
    fn address_helpers() {
        assert_eq!(
            parse_cidr4("10.0.0.2/24"),
            Some((Ipv4Addr::new(10, 0, 0, 2), 24))
        );
        for bad in ["10.0.0.2", "10.0.0.2/0", "10.0.0.2/x", "/24", "::1/24"] {
            assert_eq!(parse_cidr4(bad), None, "{bad}");
        }
        let masks = [
            ("255.255.255.0", Some(24)),
            ("255.255.255.255", Some(32)),
            ("128.0.0.0", Some(1)),
            ("255.0.255.0", None),
            ("0.0.0.0", None),
        ];
        for (mask, want) in masks {
            assert_eq!(netmask_prefix(mask.parse().unwrap()), want, "{mask}");
        }
        assert!(same_subnet4(
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            24
        ));
        assert!(!same_subnet4(
            Ipv4Addr::new(10, 0, 3, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            24
        ));
        assert!(same_subnet4(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(10, 0, 2, 15),
            0
        ));
    }
}
