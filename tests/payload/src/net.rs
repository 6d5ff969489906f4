//! Just enough networking without tools, for the guest `/init` and the in-host runner: bring an
//! interface up with an IPv4 address, create a bridge, and ping (ICMP echo over a raw socket).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// The Internet checksum.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with identifier `id` and sequence `seq`.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"keel-ping-payload-0123456789abcd");
    let sum = inet_checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` (IPv4 header included, as a raw socket delivers it) is the echo reply to
/// (`id`, `seq`).
pub fn is_echo_reply(packet: &[u8], id: u16, seq: u16) -> bool {
    let Some(ihl) = packet.first().map(|b| usize::from(b & 0xf) * 4) else {
        return false;
    };
    let Some(icmp) = packet.get(ihl..) else {
        return false;
    };
    icmp.len() >= 8
        && icmp[0] == 0
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

/// Pings `to` once a second until a reply arrives or `timeout` passes; returns the round trip.
pub fn ping(to: Ipv4Addr, timeout: Duration) -> io::Result<Duration> {
    let sock = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let dest = sockaddr_in(to);
    let id = std::process::id() as u16;
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    while Instant::now() < deadline {
        seq = seq.wrapping_add(1);
        let packet = echo_request(id, seq);
        let sent_at = Instant::now();
        // SAFETY: sends `packet` to the sockaddr_in in `dest`; both outlive the call.
        unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                dest.as_ptr().cast(),
                16,
            );
        }
        while sent_at.elapsed() < Duration::from_secs(1) {
            let mut buf = [0u8; 1500];
            // SAFETY: receives at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && is_echo_reply(&buf[..n as usize], id, seq) {
                return Ok(sent_at.elapsed());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no echo reply from {to} within {timeout:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_replies_match() {
        let req = echo_request(0x1234, 7);
        assert_eq!(inet_checksum(&req), 0);
        let mut reply = vec![0x45u8];
        reply.extend_from_slice(&[0; 19]);
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert!(is_echo_reply(&reply, 0x1234, 7));
        assert!(!is_echo_reply(&reply, 0x1234, 8));
        assert!(!is_echo_reply(&reply[..22], 0x1234, 7));
        assert!(!is_echo_reply(&[], 1, 1));
    }
}
