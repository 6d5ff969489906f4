//! rtnetlink over Keel's netlink codec (`crate::netlink`): link, address and default-route dumps
//! into a `plan::State`, and the requests that carry out a `plan::Op`.

use std::io;
use std::net::IpAddr;

use super::plan::{DefaultRoute, IpNet, Link, Op, State, PROTO_STATIC};
use crate::netlink::attr::attrs;
use crate::netlink::message::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use crate::netlink::{Error, Message, Socket};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_CARRIER: u16 = 33;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_BOND_MODE: u16 = 1;
const IFLA_BOND_MIIMON: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 1;
/// Link monitoring interval for bonds, so a member losing carrier fails over.
const BOND_MIIMON_MS: u32 = 100;

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn ifaddrmsg(family: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut h = [family, prefix, 0, 0, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn rtmsg(family: u8, protocol: u8) -> [u8; 12] {
    // family, dst_len, src_len, tos, table, protocol, scope (universe), type, flags
    [
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        protocol,
        0,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ]
}

fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one RTM_NEWLINK payload (ifinfomsg + attributes). Public for the fuzz target (vmm/fuzz).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let mut link = Link {
        index: u32_at(payload, 4)?,
        up: u32_at(payload, 8)? & IFF_UP != 0,
        ..Link::default()
    };
    let mut vlan_parent = None;
    let mut vlan_id = None;
    for a in attrs(payload.get(16..)?) {
        match a.kind {
            IFLA_IFNAME => link.name = a.str(),
            IFLA_MTU => link.mtu = a.u32_ne().unwrap_or(0),
            IFLA_MASTER => link.master = a.u32_ne().filter(|&m| m != 0),
            IFLA_LINK => vlan_parent = a.u32_ne(),
            IFLA_CARRIER => link.carrier = a.u8() == Some(1),
            IFLA_ADDRESS => {
                let hex: Vec<String> = a.payload.iter().map(|b| format!("{b:02x}")).collect();
                link.mac = hex.join(":");
            }
            IFLA_LINKINFO => {
                for info in a.attrs() {
                    match info.kind {
                        IFLA_INFO_KIND => link.kind = Some(info.str()),
                        IFLA_INFO_DATA => {
                            for d in info.attrs() {
                                match (link.kind.as_deref(), d.kind) {
                                    (Some("vlan"), IFLA_VLAN_ID) => vlan_id = d.u16_ne(),
                                    (Some("bond"), IFLA_BOND_MODE) => link.bond_mode = d.u8(),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let (Some(p), Some(id)) = (vlan_parent, vlan_id) {
        link.vlan = Some((p, id));
    }
    Some(link)
}

/// Decodes one RTM_NEWADDR payload into (link index, address). Public for the fuzz target (vmm/fuzz).
pub fn parse_addr(payload: &[u8]) -> Option<(u32, IpNet)> {
    let prefix = *payload.get(1)?;
    let index = u32_at(payload, 4)?;
    let mut local = None;
    let mut address = None;
    for a in attrs(payload.get(8..)?) {
        match a.kind {
            IFA_LOCAL => local = a.ip(),
            IFA_ADDRESS => address = a.ip(),
            _ => {}
        }
    }
    Some((
        index,
        IpNet {
            addr: local.or(address)?,
            prefix,
        },
    ))
}

/// Decodes one RTM_NEWROUTE payload; only default routes of the main table. Public for the fuzz target (vmm/fuzz).
pub fn parse_default_route(payload: &[u8]) -> Option<DefaultRoute> {
    let header = payload.get(..12)?;
    let (dst_len, mut table, protocol) = (header[1], header[4], header[5]);
    let mut gateway = None;
    let mut oif = None;
    for a in attrs(&payload[12..]) {
        match a.kind {
            RTA_GATEWAY => gateway = a.ip(),
            RTA_OIF => oif = a.u32_ne(),
            RTA_TABLE => table = a.u32_ne().map_or(table, |t| t.min(255) as u8),
            _ => {}
        }
    }
    (dst_len == 0 && table == RT_TABLE_MAIN).then_some(())?;
    Some(DefaultRoute {
        gateway: gateway?,
        oif: oif?,
        protocol,
    })
}

/// A NETLINK_ROUTE socket.
pub struct Rtnetlink {
    socket: Socket,
}

impl Rtnetlink {
    pub fn open() -> Result<Rtnetlink, Error> {
        Ok(Rtnetlink {
            socket: Socket::open(libc::NETLINK_ROUTE)?,
        })
    }

    fn dump(&mut self, kind: u16, header: &[u8], what: &str) -> Result<Vec<Vec<u8>>, Error> {
        self.socket.dump(&Message::new(kind, 0, header), what)
    }

    /// Links, their addresses and the main table's default routes.
    pub fn state(&mut self) -> Result<State, Error> {
        let mut links: Vec<Link> = self
            .dump(RTM_GETLINK, &ifinfomsg(0, 0, 0), "netlink link dump")?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect();
        for payload in self.dump(RTM_GETADDR, &ifaddrmsg(0, 0, 0), "netlink address dump")? {
            if let Some((index, addr)) = parse_addr(&payload) {
                if let Some(link) = links.iter_mut().find(|l| l.index == index) {
                    link.addrs.push(addr);
                }
            }
        }
        let routes = self
            .dump(RTM_GETROUTE, &rtmsg(0, 0), "netlink route dump")?
            .iter()
            .filter_map(|p| parse_default_route(p))
            .collect();
        Ok(State { links, routes })
    }

    fn index(&mut self, name: &str) -> Result<u32, Error> {
        let c = std::ffi::CString::new(name).map_err(|_| Error::NoLink(name.to_string()))?;
        // SAFETY: c is a valid NUL-terminated string.
        match unsafe { libc::if_nametoindex(c.as_ptr()) } {
            0 => Err(Error::NoLink(name.to_string())),
            index => Ok(index),
        }
    }

    /// Adds or deletes a default route through `name` with the given routing protocol.
    pub fn default_route(
        &mut self,
        add: bool,
        name: &str,
        gateway: IpAddr,
        protocol: u8,
    ) -> Result<(), Error> {
        let index = self.index(name)?;
        let (kind, flags) = if add {
            // Replaces a default route of the same metric: idempotent.
            (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
        } else {
            (RTM_DELROUTE, 0)
        };
        let mut m = Message::new(kind, flags, &rtmsg(family_of(&gateway), protocol));
        m.attr(RTA_GATEWAY, &addr_bytes(&gateway))
            .u32_ne(RTA_OIF, index);
        let what = format!(
            "{} default route via {gateway} dev {name}",
            if add { "add" } else { "delete" }
        );
        self.socket.request(&m, &what)
    }

    /// Adds or deletes an address.
    pub fn address(&mut self, add: bool, name: &str, addr: IpNet) -> Result<(), Error> {
        let index = self.index(name)?;
        let family = family_of(&addr.addr);
        let (kind, flags) = if add {
            (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (RTM_DELADDR, 0)
        };
        let mut m = Message::new(kind, flags, &ifaddrmsg(family, addr.prefix, index));
        let bytes = addr_bytes(&addr.addr);
        m.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes);
        if let IpAddr::V4(v4) = addr.addr {
            let host_mask = u32::MAX.checked_shr(u32::from(addr.prefix)).unwrap_or(0);
            if addr.prefix < 31 {
                m.attr(IFA_BROADCAST, &(u32::from(v4) | host_mask).to_be_bytes());
            }
        }
        let what = format!(
            "{} address {addr} on {name}",
            if add { "add" } else { "delete" }
        );
        self.socket.request(&m, &what)
    }

    fn set_link(
        &mut self,
        what: &str,
        name: &str,
        build: impl FnOnce(&mut Message),
        flags: u32,
        change: u32,
    ) -> Result<(), Error> {
        let index = self.index(name)?;
        let mut m = Message::new(RTM_NEWLINK, 0, &ifinfomsg(index, flags, change));
        build(&mut m);
        self.socket.request(&m, what)
    }

    fn create(
        &mut self,
        name: &str,
        kind: &str,
        build: impl FnOnce(&mut Message),
    ) -> Result<(), Error> {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
        m.str(IFLA_IFNAME, name);
        build(&mut m);
        self.socket.request(&m, &format!("create {kind} {name}"))
    }

    /// A veth pair, for tests in a private network namespace.
    #[cfg(test)]
    pub(crate) fn create_veth(&mut self, name: &str, peer: &str) -> Result<(), Error> {
        const VETH_INFO_PEER: u16 = 1;
        self.create(name, "veth", |m| {
            m.begin(IFLA_LINKINFO)
                .str(IFLA_INFO_KIND, "veth")
                .begin(IFLA_INFO_DATA);
            m.begin(VETH_INFO_PEER)
                .raw(&ifinfomsg(0, 0, 0))
                .str(IFLA_IFNAME, peer)
                .end()
                .end()
                .end();
        })
    }

    /// Carries out one planned operation (IPv6 sysctls included).
    pub fn apply(&mut self, op: &Op) -> Result<(), Error> {
        let what = op.to_string();
        match op {
            Op::DeleteLink { name } => {
                let index = self.index(name)?;
                let m = Message::new(RTM_DELLINK, 0, &ifinfomsg(index, 0, 0));
                self.socket.request(&m, &what)
            }
            Op::CreateBridge { name } => self.create(name, "bridge", |m| {
                m.begin(IFLA_LINKINFO).str(IFLA_INFO_KIND, "bridge").end();
            }),
            Op::CreateBond { name, mode } => self.create(name, "bond", |m| {
                m.begin(IFLA_LINKINFO)
                    .str(IFLA_INFO_KIND, "bond")
                    .begin(IFLA_INFO_DATA);
                m.u8(IFLA_BOND_MODE, mode.kernel_mode())
                    .u32_ne(IFLA_BOND_MIIMON, BOND_MIIMON_MS);
                m.end().end();
            }),
            Op::CreateVlan { name, parent, id } => {
                let parent = self.index(parent)?;
                self.create(name, "vlan", |m| {
                    m.u32_ne(IFLA_LINK, parent);
                    m.begin(IFLA_LINKINFO)
                        .str(IFLA_INFO_KIND, "vlan")
                        .begin(IFLA_INFO_DATA);
                    m.u16_ne(IFLA_VLAN_ID, *id).end().end();
                })
            }
            Op::SetDown { name } => self.set_link(&what, name, |_| {}, 0, IFF_UP),
            Op::SetUp { name } => self.set_link(&what, name, |_| {}, IFF_UP, IFF_UP),
            Op::SetMtu { name, mtu } => self.set_link(
                &what,
                name,
                |m| {
                    m.u32_ne(IFLA_MTU, *mtu);
                },
                0,
                0,
            ),
            Op::SetNoMaster { name } => self.set_link(
                &what,
                name,
                |m| {
                    m.u32_ne(IFLA_MASTER, 0);
                },
                0,
                0,
            ),
            Op::SetMaster { name, master } => {
                let master = self.index(master)?;
                self.set_link(
                    &what,
                    name,
                    |m| {
                        m.u32_ne(IFLA_MASTER, master);
                    },
                    0,
                    0,
                )
            }
            Op::Ipv6 {
                name,
                enabled,
                slaac,
            } => set_ipv6(name, *enabled, *slaac).map_err(|source| Error::Io { what, source }),
            Op::AddAddr { name, addr } => self.address(true, name, *addr),
            Op::DelAddr { name, addr } => match self.address(false, name, *addr) {
                // Gone already (the kernel drops addresses with their link).
                Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
                other => other,
            },
            Op::AddDefaultRoute { name, gateway } => {
                self.default_route(true, name, *gateway, PROTO_STATIC)
            }
            Op::DelDefaultRoute { name, gateway } => {
                let proto = 0; // any protocol
                match self.default_route(false, name, *gateway, proto) {
                    // Routes go with the address they depended on.
                    Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
                    other => other,
                }
            }
        }
    }
}

/// IPv6 on a link: off entirely, or on with or without SLAAC (router advertisements).
fn set_ipv6(name: &str, enabled: bool, slaac: bool) -> io::Result<()> {
    let dir = std::path::Path::new("/proc/sys/net/ipv6/conf").join(name);
    if !dir.exists() {
        // IPv6 is disabled in this kernel: nothing to turn off, and nothing can turn it on.
        return if enabled {
            Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
        } else {
            Ok(())
        };
    }
    let flag = |on: bool| if on { "1" } else { "0" };
    std::fs::write(dir.join("accept_ra"), flag(slaac))?;
    std::fs::write(dir.join("autoconf"), flag(slaac))?;
    std::fs::write(dir.join("disable_ipv6"), flag(!enabled))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::model::BondMode;
    use crate::net::testns;

    #[test]
    fn encodes_nested_attributes() {
        let mut m = Message::new(RTM_NEWLINK, 0, &ifinfomsg(0, 0, 0));
        m.str(IFLA_IFNAME, "br0");
        m.begin(IFLA_LINKINFO).str(IFLA_INFO_KIND, "bridge").end();
        let bytes = m.encode(7, crate::netlink::message::NLM_F_ACK).unwrap();
        assert_eq!(bytes.len(), 16 + 16 + 8 + 4 + 12);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()),
            bytes.len() as u32
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        let parsed: Vec<(u16, Vec<u8>)> = attrs(&bytes[32..])
            .map(|a| (a.kind, a.payload.to_vec()))
            .collect();
        assert_eq!(parsed[0], (IFLA_IFNAME, b"br0\0".to_vec()));
        assert_eq!(parsed[1].0, IFLA_LINKINFO);
        let inner: Vec<(u16, Vec<u8>)> = attrs(&parsed[1].1)
            .map(|a| (a.kind, a.payload.to_vec()))
            .collect();
        assert_eq!(inner, [(IFLA_INFO_KIND, b"bridge\0".to_vec())]);
        // Truncated or garbage attributes end the iteration instead of panicking.
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn truncated_dump_payloads_decode_to_nothing() {
        let mut m = Message::new(RTM_NEWLINK, 0, &ifinfomsg(3, IFF_UP, 0));
        m.str(IFLA_IFNAME, "eth0").u32_ne(IFLA_MTU, 1500);
        m.begin(IFLA_LINKINFO).str(IFLA_INFO_KIND, "vlan");
        m.begin(IFLA_INFO_DATA).u16_ne(IFLA_VLAN_ID, 7).end().end();
        m.u32_ne(IFLA_LINK, 2);
        let bytes = m.encode(1, 0).unwrap();
        let payload = &bytes[16..];
        let link = parse_link(payload).unwrap();
        assert_eq!((link.index, link.up, link.mtu), (3, true, 1500));
        assert_eq!((link.name.as_str(), link.vlan), ("eth0", Some((2, 7))));
        for end in 0..payload.len() {
            let _ = parse_link(&payload[..end]);
            let _ = parse_addr(&payload[..end]);
            let _ = parse_default_route(&payload[..end]);
        }
        assert!(parse_link(&payload[..15]).is_none());
        assert!(parse_addr(&[0; 7]).is_none());
        assert!(parse_default_route(&[0; 11]).is_none());
    }

    /// The kernel's extended acknowledgement reaches the error: an unknown link kind is refused
    /// with its reason in words.
    #[test]
    fn refusals_say_why_in_the_kernels_words() {
        testns::run_isolated(
            "net::rtnetlink::tests::refusals_say_why_in_the_kernels_words",
            || {
                let mut nl = Rtnetlink::open().unwrap();
                let err = nl
                    .create("nosuch0", "nosuchkind", |m| {
                        m.begin(IFLA_LINKINFO)
                            .str(IFLA_INFO_KIND, "nosuchkind")
                            .end();
                    })
                    .unwrap_err();
                let text = err.to_string();
                assert!(text.starts_with("create nosuchkind nosuch0: "), "{text}");
                assert!(text.ends_with(": Unknown device type"), "{text}");
                assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
            },
        );
    }

    /// Against the real kernel in a private network namespace: a veth pair, a bridge, addresses,
    /// MTU, a default route; read back through the dumps; then undone.
    #[test]
    fn applies_ops_to_the_kernel() {
        testns::run_isolated("net::rtnetlink::tests::applies_ops_to_the_kernel", || {
            let mut nl = Rtnetlink::open().unwrap();
            testns::veth("veth0", "veth1");
            let net = |t: &str| {
                let (a, p) = t.split_once('/').unwrap();
                IpNet {
                    addr: a.parse().unwrap(),
                    prefix: p.parse().unwrap(),
                }
            };
            let s = |t: &str| t.to_string();
            let ops = [
                Op::CreateBridge { name: s("keelbr0") },
                Op::SetMaster {
                    name: s("veth0"),
                    master: s("keelbr0"),
                },
                Op::SetMtu {
                    name: s("veth0"),
                    mtu: 1400,
                },
                Op::SetUp { name: s("veth0") },
                Op::SetUp { name: s("veth1") },
                Op::SetUp { name: s("keelbr0") },
                Op::Ipv6 {
                    name: s("keelbr0"),
                    enabled: false,
                    slaac: false,
                },
                Op::AddAddr {
                    name: s("keelbr0"),
                    addr: net("192.0.2.10/24"),
                },
                Op::AddDefaultRoute {
                    name: s("keelbr0"),
                    gateway: "192.0.2.1".parse().unwrap(),
                },
            ];
            for op in &ops {
                nl.apply(op).unwrap();
            }
            let state = nl.state().unwrap();
            let br = state.link("keelbr0").unwrap();
            let veth0 = state.link("veth0").unwrap();
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            assert!(br.up);
            assert_eq!(br.addrs, [net("192.0.2.10/24")]);
            assert_eq!(veth0.master, Some(br.index));
            assert_eq!(veth0.mtu, 1400);
            assert_eq!(veth0.kind.as_deref(), Some("veth"));
            assert_eq!(veth0.mac.len(), 17);
            assert_eq!(
                state.routes,
                [DefaultRoute {
                    gateway: "192.0.2.1".parse().unwrap(),
                    oif: br.index,
                    protocol: PROTO_STATIC
                }]
            );
            // Re-adding what exists is an error naming the operation.
            let err = nl.apply(&ops[0]).unwrap_err().to_string();
            assert!(err.starts_with("create bridge keelbr0: "), "{err}");

            // Undo: route, address, port, bridge.
            for op in [
                Op::DelDefaultRoute {
                    name: s("keelbr0"),
                    gateway: "192.0.2.1".parse().unwrap(),
                },
                Op::DelAddr {
                    name: s("keelbr0"),
                    addr: net("192.0.2.10/24"),
                },
                Op::DelAddr {
                    name: s("keelbr0"),
                    addr: net("192.0.2.10/24"),
                },
                Op::SetNoMaster { name: s("veth0") },
                Op::DeleteLink { name: s("keelbr0") },
            ] {
                nl.apply(&op).unwrap();
            }
            let state = nl.state().unwrap();
            assert!(state.link("keelbr0").is_none());
            assert_eq!(state.link("veth0").unwrap().master, None);
            assert!(state.routes.is_empty());
            assert!(matches!(
                nl.apply(&Op::SetUp { name: s("nope0") }),
                Err(Error::NoLink(_))
            ));
        });
    }

    /// VLAN and bond links need the 8021q and bonding modules, which the build machine's kernel
    /// may lack (the QEMU end-to-end test covers them on Keel's kernel). Run where available.
    #[test]
    fn creates_vlans_and_bonds_where_the_kernel_has_them() {
        testns::run_isolated(
            "net::rtnetlink::tests::creates_vlans_and_bonds_where_the_kernel_has_them",
            || {
                let mut nl = Rtnetlink::open().unwrap();
                testns::veth("veth0", "veth1");
                let s = |t: &str| t.to_string();
                match nl.apply(&Op::CreateVlan {
                    name: s("veth0.7"),
                    parent: s("veth0"),
                    id: 7,
                }) {
                    Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                        eprintln!("no 8021q in this kernel");
                    }
                    other => {
                        other.unwrap();
                        let state = nl.state().unwrap();
                        let vlan = state.link("veth0.7").unwrap();
                        assert_eq!(vlan.vlan, Some((state.link("veth0").unwrap().index, 7)));
                    }
                }
                match nl.apply(&Op::CreateBond {
                    name: s("bond0"),
                    mode: BondMode::Lacp,
                }) {
                    Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                        eprintln!("no bonding in this kernel");
                    }
                    other => {
                        other.unwrap();
                        nl.apply(&Op::SetMaster {
                            name: s("veth1"),
                            master: s("bond0"),
                        })
                        .unwrap();
                        let state = nl.state().unwrap();
                        assert_eq!(state.link("bond0").unwrap().bond_mode, Some(4));
                    }
                }
            },
        );
    }
}
