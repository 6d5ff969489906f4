//! A small rtnetlink client over a NETLINK_ROUTE socket: link, address and default-route dumps
//! into a `plan::State`, and the requests that carry out a `plan::Op`. Written by hand (a few
//! hundred lines) rather than pulling in an async netlink stack.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::plan::{DefaultRoute, IpNet, Link, Op, State, PROTO_STATIC};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

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
const NLA_F_NESTED: u16 = 0x8000;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 1;
/// Link monitoring interval for bonds, so a member losing carrier fails over.
const BOND_MIIMON_MS: u32 = 100;

/// An rtnetlink message under construction: header, family header, attributes.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Message {
    fn new(kind: u16, flags: u16, family_header: &[u8]) -> Message {
        let mut buf = vec![0; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(family_header);
        buf.resize(align4(buf.len()), 0);
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn attr_str(&mut self, kind: u16, text: &str) -> &mut Self {
        let mut data = text.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[])
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

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

/// Iterates `(type, payload)` over rtattrs.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_F_NESTED;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = data.get(align4(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

fn str_of(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn ip_of(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

/// Decodes one RTM_NEWLINK payload (ifinfomsg + attributes). Public for the fuzz target (vmm/fuzz).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = payload.get(..16)?;
    let index = u32::from_ne_bytes(header[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(header[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        up: flags & IFF_UP != 0,
        ..Link::default()
    };
    let mut vlan_parent = None;
    let mut vlan_id = None;
    for (kind, data) in attrs(&payload[16..]) {
        match kind {
            IFLA_IFNAME => link.name = str_of(data),
            IFLA_MTU => link.mtu = u32_of(data).unwrap_or(0),
            IFLA_MASTER => link.master = u32_of(data).filter(|&m| m != 0),
            IFLA_LINK => vlan_parent = u32_of(data),
            IFLA_CARRIER => link.carrier = data.first() == Some(&1),
            IFLA_ADDRESS => {
                let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
                link.mac = hex.join(":");
            }
            IFLA_LINKINFO => {
                for (info, value) in attrs(data) {
                    match info {
                        IFLA_INFO_KIND => link.kind = Some(str_of(value)),
                        IFLA_INFO_DATA => {
                            for (k, v) in attrs(value) {
                                match (link.kind.as_deref(), k) {
                                    (Some("vlan"), IFLA_VLAN_ID) => {
                                        vlan_id =
                                            v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]))
                                    }
                                    (Some("bond"), IFLA_BOND_MODE) => {
                                        link.bond_mode = v.first().copied()
                                    }
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
    let header = payload.get(..8)?;
    let prefix = header[1];
    let index = u32::from_ne_bytes(header[4..8].try_into().ok()?);
    let mut local = None;
    let mut address = None;
    for (kind, data) in attrs(&payload[8..]) {
        match kind {
            IFA_LOCAL => local = ip_of(data),
            IFA_ADDRESS => address = ip_of(data),
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
    for (kind, data) in attrs(&payload[12..]) {
        match kind {
            RTA_GATEWAY => gateway = ip_of(data),
            RTA_OIF => oif = u32_of(data),
            RTA_TABLE => table = u32_of(data).map_or(table, |t| t.min(255) as u8),
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

/// An rtnetlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Cannot open a netlink socket: {0}
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    /// Netlink {0} failed: {1}
    #[error("netlink {0} failed: {1}")]
    Request(&'static str, io::Error),
    /// {0}: {1}
    #[error("{0}: {1}")]
    Op(String, io::Error),
    /// No link named {0}
    #[error("no link named {0}")]
    NoLink(String),
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly opened socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    fn send(&mut self, message: Message) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = message.finish(self.seq);
        // SAFETY: the kernel address (pid 0) is a zeroed sockaddr_nl with its family set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bytes and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads replies to `seq`, handing each payload to `each`, until the ACK or the end of a dump.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut data = &buf[..n as usize];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let msg_seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &data[NLMSG_HDRLEN..len];
                data = data.get(align4(len)..).unwrap_or(&[]);
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(kind, payload),
                }
            }
        }
    }

    fn request(&mut self, message: Message) -> io::Result<()> {
        let seq = self.send(message)?;
        self.receive(seq, |_, _| {})
    }

    fn dump(&mut self, kind: u16, header: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.send(Message::new(kind, NLM_F_DUMP, header))?;
        let mut out = Vec::new();
        self.receive(seq, |_, payload| out.push(payload.to_vec()))?;
        Ok(out)
    }

    /// Links, their addresses and the main table's default routes.
    pub fn state(&mut self) -> Result<State, NetlinkError> {
        let mut links: Vec<Link> = self
            .dump(RTM_GETLINK, &ifinfomsg(0, 0, 0))
            .map_err(|e| NetlinkError::Request("link dump", e))?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect();
        for payload in self
            .dump(RTM_GETADDR, &ifaddrmsg(0, 0, 0))
            .map_err(|e| NetlinkError::Request("address dump", e))?
        {
            if let Some((index, addr)) = parse_addr(&payload) {
                if let Some(link) = links.iter_mut().find(|l| l.index == index) {
                    link.addrs.push(addr);
                }
            }
        }
        let routes = self
            .dump(RTM_GETROUTE, &rtmsg(0, 0))
            .map_err(|e| NetlinkError::Request("route dump", e))?
            .iter()
            .filter_map(|p| parse_default_route(p))
            .collect();
        Ok(State { links, routes })
    }

    fn index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        let c = std::ffi::CString::new(name).map_err(|_| NetlinkError::NoLink(name.to_string()))?;
        // SAFETY: c is a valid NUL-terminated string.
        match unsafe { libc::if_nametoindex(c.as_ptr()) } {
            0 => Err(NetlinkError::NoLink(name.to_string())),
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
    ) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let (kind, flags) = if add {
            // Replaces a default route of the same metric: idempotent.
            (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
        } else {
            (RTM_DELROUTE, 0)
        };
        let mut m = Message::new(
            kind,
            NLM_F_ACK | flags,
            &rtmsg(family_of(&gateway), protocol),
        );
        m.attr(RTA_GATEWAY, &addr_bytes(&gateway))
            .attr_u32(RTA_OIF, index);
        self.request(m).map_err(|e| {
            NetlinkError::Op(
                format!(
                    "{} default route via {gateway} dev {name}",
                    if add { "add" } else { "delete" }
                ),
                e,
            )
        })
    }

    /// Adds or deletes an address.
    pub fn address(&mut self, add: bool, name: &str, addr: IpNet) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let family = family_of(&addr.addr);
        let (kind, flags) = if add {
            (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (RTM_DELADDR, 0)
        };
        let mut m = Message::new(
            kind,
            NLM_F_ACK | flags,
            &ifaddrmsg(family, addr.prefix, index),
        );
        let bytes = addr_bytes(&addr.addr);
        m.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes);
        if let IpAddr::V4(v4) = addr.addr {
            let host_mask = u32::MAX.checked_shr(u32::from(addr.prefix)).unwrap_or(0);
            if addr.prefix < 31 {
                m.attr(IFA_BROADCAST, &(u32::from(v4) | host_mask).to_be_bytes());
            }
        }
        self.request(m).map_err(|e| {
            NetlinkError::Op(
                format!(
                    "{} address {addr} on {name}",
                    if add { "add" } else { "delete" }
                ),
                e,
            )
        })
    }

    fn set_link(
        &mut self,
        what: String,
        name: &str,
        build: impl FnOnce(&mut Message),
        flags: u32,
        change: u32,
    ) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let mut m = Message::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, flags, change));
        build(&mut m);
        self.request(m).map_err(|e| NetlinkError::Op(what, e))
    }

    fn create(
        &mut self,
        name: &str,
        kind: &str,
        build: impl FnOnce(&mut Message),
    ) -> Result<(), NetlinkError> {
        let mut m = Message::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        m.attr_str(IFLA_IFNAME, name);
        build(&mut m);
        self.request(m)
            .map_err(|e| NetlinkError::Op(format!("create {kind} {name}"), e))
    }

    /// A veth pair, for tests in a private network namespace.
    #[cfg(test)]
    pub(crate) fn create_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        const VETH_INFO_PEER: u16 = 1;
        self.create(name, "veth", |m| {
            m.begin(IFLA_LINKINFO)
                .attr_str(IFLA_INFO_KIND, "veth")
                .begin(IFLA_INFO_DATA);
            m.begin(VETH_INFO_PEER);
            m.buf.extend_from_slice(&ifinfomsg(0, 0, 0));
            m.attr_str(IFLA_IFNAME, peer).end().end().end();
        })
    }

    /// Carries out one planned operation (IPv6 sysctls included).
    pub fn apply(&mut self, op: &Op) -> Result<(), NetlinkError> {
        match op {
            Op::DeleteLink { name } => {
                let index = self.index(name)?;
                let m = Message::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
                self.request(m)
                    .map_err(|e| NetlinkError::Op(op.to_string(), e))
            }
            Op::CreateBridge { name } => self.create(name, "bridge", |m| {
                m.begin(IFLA_LINKINFO)
                    .attr_str(IFLA_INFO_KIND, "bridge")
                    .end();
            }),
            Op::CreateBond { name, mode } => self.create(name, "bond", |m| {
                m.begin(IFLA_LINKINFO)
                    .attr_str(IFLA_INFO_KIND, "bond")
                    .begin(IFLA_INFO_DATA);
                m.attr(IFLA_BOND_MODE, &[mode.kernel_mode()])
                    .attr_u32(IFLA_BOND_MIIMON, BOND_MIIMON_MS);
                m.end().end();
            }),
            Op::CreateVlan { name, parent, id } => {
                let parent = self.index(parent)?;
                self.create(name, "vlan", |m| {
                    m.attr_u32(IFLA_LINK, parent);
                    m.begin(IFLA_LINKINFO)
                        .attr_str(IFLA_INFO_KIND, "vlan")
                        .begin(IFLA_INFO_DATA);
                    m.attr(IFLA_VLAN_ID, &id.to_ne_bytes()).end().end();
                })
            }
            Op::SetDown { name } => self.set_link(op.to_string(), name, |_| {}, 0, IFF_UP),
            Op::SetUp { name } => self.set_link(op.to_string(), name, |_| {}, IFF_UP, IFF_UP),
            Op::SetMtu { name, mtu } => self.set_link(
                op.to_string(),
                name,
                |m| {
                    m.attr_u32(IFLA_MTU, *mtu);
                },
                0,
                0,
            ),
            Op::SetNoMaster { name } => self.set_link(
                op.to_string(),
                name,
                |m| {
                    m.attr_u32(IFLA_MASTER, 0);
                },
                0,
                0,
            ),
            Op::SetMaster { name, master } => {
                let master = self.index(master)?;
                self.set_link(
                    op.to_string(),
                    name,
                    |m| {
                        m.attr_u32(IFLA_MASTER, master);
                    },
                    0,
                    0,
                )
            }
            Op::Ipv6 {
                name,
                enabled,
                slaac,
            } => set_ipv6(name, *enabled, *slaac).map_err(|e| NetlinkError::Op(op.to_string(), e)),
            Op::AddAddr { name, addr } => self.address(true, name, *addr),
            Op::DelAddr { name, addr } => match self.address(false, name, *addr) {
                // Gone already (the kernel drops addresses with their link).
                Err(NetlinkError::Op(_, e)) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    Ok(())
                }
                other => other,
            },
            Op::AddDefaultRoute { name, gateway } => {
                self.default_route(true, name, *gateway, PROTO_STATIC)
            }
            Op::DelDefaultRoute { name, gateway } => {
                let proto = 0; // any protocol
                match self.default_route(false, name, *gateway, proto) {
                    // Routes go with the address they depended on.
                    Err(NetlinkError::Op(_, e)) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
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
        let mut m = Message::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, "br0");
        m.begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        let bytes = m.finish(7);
        assert_eq!(bytes.len(), 16 + 16 + 8 + 4 + 12);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()),
            bytes.len() as u32
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        let parsed: Vec<(u16, Vec<u8>)> =
            attrs(&bytes[32..]).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(parsed[0], (IFLA_IFNAME, b"br0\0".to_vec()));
        assert_eq!(parsed[1].0, IFLA_LINKINFO);
        let inner: Vec<(u16, Vec<u8>)> =
            attrs(&parsed[1].1).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(inner, [(IFLA_INFO_KIND, b"bridge\0".to_vec())]);
        // Truncated or garbage attributes end the iteration instead of panicking.
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    /// Against the real kernel in a private network namespace: a veth pair, a bridge, addresses,
    /// MTU, a default route; read back through the dumps; then undone.
    #[test]
    fn applies_ops_to_the_kernel() {
        testns::run_isolated("net::netlink::tests::applies_ops_to_the_kernel", || {
            let mut nl = Netlink::open().unwrap();
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
                Err(NetlinkError::NoLink(_))
            ));
        });
    }

    /// VLAN and bond links need the 8021q and bonding modules, which the build machine's kernel
    /// may lack (the QEMU end-to-end test covers them on Keel's kernel). Run where available.
    #[test]
    fn creates_vlans_and_bonds_where_the_kernel_has_them() {
        testns::run_isolated(
            "net::netlink::tests::creates_vlans_and_bonds_where_the_kernel_has_them",
            || {
                let mut nl = Netlink::open().unwrap();
                testns::veth("veth0", "veth1");
                let s = |t: &str| t.to_string();
                match nl.apply(&Op::CreateVlan {
                    name: s("veth0.7"),
                    parent: s("veth0"),
                    id: 7,
                }) {
                    Err(NetlinkError::Op(_, e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
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
                    Err(NetlinkError::Op(_, e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
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
