//! Just enough networking without tools, for the guest `/init` and the in-host runner: bring an
//! interface up with an IPv4 address, create a bridge, and ping (ICMP echo over a raw socket).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCSIFFLAGS: u64 = 0x8914;
const SIOCSIFADDR: u64 = 0x8916;
const SIOCSIFNETMASK: u64 = 0x891c;
const SIOCBRADDBR: u64 = 0x89a0;
const IFF_UP: i16 = 1;

#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let mut req = IfReq::default();
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::other(format!("bad interface name {name:?}")));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(req)
}

fn socket(kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl<T>(fd: &OwnedFd, request: u64, arg: *mut T, what: &str) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live argument of the size `request` expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut sa = [0u8; 16];
    sa[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    sa[4..8].copy_from_slice(&addr.octets());
    sa
}

/// Gives `name` the address `addr/prefix` and brings it up.
pub fn configure(name: &str, addr: Ipv4Addr, prefix: u32) -> io::Result<()> {
    let sock = socket(libc::SOCK_DGRAM, 0)?;
    let mut req = ifreq(name)?;
    req.data[..16].copy_from_slice(&sockaddr_in(addr));
    ioctl(
        &sock,
        SIOCSIFADDR,
        &mut req,
        &format!("set address of {name}"),
    )?;
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
    let mut req = ifreq(name)?;
    req.data[..16].copy_from_slice(&sockaddr_in(mask));
    ioctl(
        &sock,
        SIOCSIFNETMASK,
        &mut req,
        &format!("set netmask of {name}"),
    )?;
    let mut req = ifreq(name)?;
    ioctl(&sock, SIOCGIFFLAGS, &mut req, &format!("flags of {name}"))?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | IFF_UP;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&sock, SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
}

/// Creates Linux bridge `name` (an existing one is fine).
pub fn create_bridge(name: &str) -> io::Result<()> {
    let sock = socket(libc::SOCK_DGRAM, 0)?;
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: SIOCBRADDBR takes a NUL-terminated name.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR as _, cname.as_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("create bridge {name}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Pings `to` once a second until a reply arrives or `timeout` passes; returns the round trip.
pub fn ping(to: Ipv4Addr, timeout: Duration) -> io::Result<Duration> {
    keel_init::localapi::nettest::ping_until(to, timeout).map_err(io::Error::other)
}
