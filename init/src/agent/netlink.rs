//! The host's IPv4 addresses, and a deliberately minimal static address set-up over rtnetlink.
//!
//! Host networking (DHCP, bonds, bridges) belongs to the network service, which is not in the image
//! yet. Until it is, `keel agent --static-ip eth0=10.0.2.15/24` brings one interface up with one
//! address so the agent is reachable (the test image uses it under QEMU's user network). Nothing
//! else here touches the network configuration.

use std::io;
use std::net::Ipv4Addr;

/// Why the address could not be set.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad --static-ip {0:?}: expected IFACE=A.B.C.D/PREFIX
    #[error("Bad --static-ip {0:?}: expected IFACE=A.B.C.D/PREFIX")]
    Spec(String),
    /// No network interface named {0}
    #[error("No network interface named {0}")]
    NoInterface(String),
    /// Netlink request {what} failed: {err}
    #[error("Netlink request {what} failed: {err}")]
    Netlink { what: &'static str, err: io::Error },
}

/// One interface, one address: `eth0=10.0.2.15/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for StaticIp {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::Spec(s.to_string());
        let (iface, cidr) = s.split_once('=').ok_or_else(bad)?;
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let name_ok = !iface.is_empty()
            && iface.len() < libc::IFNAMSIZ
            && iface.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if !name_ok {
            return Err(bad());
        }
        Ok(Self {
            iface: iface.to_string(),
            addr,
            prefix,
        })
    }
}

/// The first IPv4 address that is not loopback, in interface order.
pub fn first_ipv4() -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cur };
        cur = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least its family's size.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && !ip.is_unspecified() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

const NLMSG_HDR: usize = 16;

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A netlink message: header, then `payload`; flags always ask for an acknowledgement.
fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + payload.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// `ifinfomsg` setting IFF_UP on `index`.
fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.push(libc::AF_UNSPEC as u8);
    p.push(0);
    p.extend_from_slice(&0u16.to_ne_bytes());
    p.extend_from_slice(&(index as i32).to_ne_bytes());
    p.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    p.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    message(libc::RTM_NEWLINK, 0, seq, &p)
}

/// `ifaddrmsg` adding `ip` to `index` (replacing an identical one).
fn add_address(index: u32, ip: &StaticIp, seq: u32) -> Vec<u8> {
    let mut p = vec![libc::AF_INET as u8, ip.prefix, 0, libc::RT_SCOPE_UNIVERSE];
    p.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut p, libc::IFA_LOCAL, &ip.addr.octets());
    push_attr(&mut p, libc::IFA_ADDRESS, &ip.addr.octets());
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    message(libc::RTM_NEWADDR, flags, seq, &p)
}

/// The error code of an NLMSG_ERROR acknowledgement (0 is success).
fn ack_code(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != libc::NLMSG_ERROR as u16 {
        return None;
    }
    Some(i32::from_ne_bytes(
        reply.get(NLMSG_HDR..NLMSG_HDR + 4)?.try_into().ok()?,
    ))
}

/// Brings `ip.iface` up and gives it `ip.addr/ip.prefix`.
pub fn configure(ip: &StaticIp) -> Result<(), NetError> {
    let name =
        std::ffi::CString::new(ip.iface.as_str()).map_err(|_| NetError::Spec(ip.iface.clone()))?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(NetError::NoInterface(ip.iface.clone()));
    }
    let sock = Netlink::open().map_err(|err| NetError::Netlink { what: "open", err })?;
    sock.request(&link_up(index, 1))
        .map_err(|err| NetError::Netlink {
            what: "link up",
            err,
        })?;
    sock.request(&add_address(index, ip, 2))
        .map_err(|err| NetError::Netlink {
            what: "add address",
            err,
        })
}

struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn request(&self, msg: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        // SAFETY: msg is a valid buffer; the kernel is the default destination of a netlink socket.
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        // SAFETY: reply is a writable buffer of the given length.
        let n = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match ack_code(&reply[..n as usize]) {
            Some(0) => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code)),
            None => Err(io::Error::other("unexpected netlink reply")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_static_ip() {
        let ok: StaticIp = "eth0=10.0.2.15/24".parse().unwrap();
        assert_eq!(
            ok,
            StaticIp {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24
            }
        );
        for bad in [
            "eth0",
            "eth0=10.0.2.15",
            "=10.0.2.15/24",
            "eth0=10.0.2/24",
            "eth0=10.0.2.15/33",
            "a/b=10.0.2.15/24",
            "averyveryverylongname=1.2.3.4/8",
        ] {
            let err = bad.parse::<StaticIp>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn messages_are_framed() {
        let ip: StaticIp = "eth0=10.0.2.15/24".parse().unwrap();
        let msg = add_address(3, &ip, 7);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(&msg[NLMSG_HDR..NLMSG_HDR + 2], &[libc::AF_INET as u8, 24]);
        assert!(msg.windows(4).any(|w| w == [10, 0, 2, 15]));
        let up = link_up(3, 1);
        assert_eq!(up.len(), NLMSG_HDR + 16);
        let mut err = message(libc::NLMSG_ERROR as u16, 0, 1, &(-17i32).to_ne_bytes());
        assert_eq!(ack_code(&err), Some(-17));
        err[4] = 0;
        assert_eq!(ack_code(&err), None);
    }

    #[test]
    fn loopback_is_never_the_first_address() {
        assert!(first_ipv4().is_none_or(|ip| !ip.is_loopback()));
    }

    #[test]
    fn configuring_a_missing_interface_names_it() {
        let ip: StaticIp = "nosuch0=10.9.9.9/24".parse().unwrap();
        let err = configure(&ip).unwrap_err().to_string();
        assert!(err.contains("nosuch0"), "{err}");
    }
}
