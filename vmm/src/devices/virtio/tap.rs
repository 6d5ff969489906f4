//! Tap devices for virtio-net: `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every
//! frame carries the virtio-net header and checksum/segmentation offloads pass through unchanged
//! (as Firecracker's and Cloud Hypervisor's `net_util::Tap`). Opened at build time, before the
//! seccomp filters, together with the interface ioctls (link up, joining a bridge).

use keel_api::IfName;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)` and friends (include/uapi/linux/if_tun.h).
pub const TUNSETIFF: u64 = 0x4004_54ca;
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_UP: i16 = 0x1;
/// Socket ioctls (include/uapi/linux/sockios.h).
const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCSIFFLAGS: u64 = 0x8914;
const SIOCGIFINDEX: u64 = 0x8933;
const SIOCBRADDIF: u64 = 0x89a2;
/// TUNSETOFFLOAD bits.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
/// The virtio-net header of a VERSION_1 device (`virtio_net_hdr_v1`, with num_buffers).
pub const VNET_HDR_LEN: usize = 12;

/// `struct ifreq`: a name and a 24-byte union (flags, index, address).
#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        let mut req = IfReq::default();
        let name = IfName::new(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "interface name {name:?} must be 1 to 15 bytes, without '/', ':' or spaces"
                ),
            )
        })?;
        let name = name.as_str().as_bytes();
        // IfName holds at most 15 bytes: the NUL-terminated name fits.
        req.name[..name.len()].copy_from_slice(name);
        Ok(req)
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `ioctl(fd, request, arg)` with the error as an io::Error naming the request.
fn ioctl<T>(fd: RawFd, request: u64, arg: *mut T, what: &str) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live, properly sized argument for `request`.
    let rc = unsafe { libc::ioctl(fd, request as _, arg) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// An AF_INET datagram socket, the handle interface ioctls go through.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) tap `name`, with virtio-net headers, non-blocking, link up, and
    /// joins `bridge` if given. A jailed keel-vmm has no CAP_NET_ADMIN: it can only attach to a
    /// persistent tap its uid owns, which the agent made, brought up and bridged (no `bridge`
    /// then), so the link is only set up when it is down.
    pub fn open(name: &str, bridge: Option<&str>) -> io::Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")))?;
        let mut req = IfReq::new(name)?;
        req.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        ioctl(file.as_raw_fd(), TUNSETIFF, &mut req, "TUNSETIFF")?;
        let mut hdr_len = VNET_HDR_LEN as i32;
        ioctl(
            file.as_raw_fd(),
            TUNSETVNETHDRSZ,
            &mut hdr_len,
            "TUNSETVNETHDRSZ",
        )?;
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        let sock = control_socket()?;
        let mut req = IfReq::new(name)?;
        ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS")?;
        if req.short() & IFF_UP == 0 {
            req.set_short(req.short() | IFF_UP);
            ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS")?;
        }
        if let Some(bridge) = bridge {
            let mut req = IfReq::new(name)?;
            ioctl(sock.as_raw_fd(), SIOCGIFINDEX, &mut req, "SIOCGIFINDEX")?;
            let index = req.int();
            let mut req = IfReq::new(bridge)?;
            req.set_int(index);
            ioctl(
                sock.as_raw_fd(),
                SIOCBRADDIF,
                &mut req,
                &format!("add {name} to bridge {bridge}"),
            )?;
        }
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads the guest accepts on received frames (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // TUNSETOFFLOAD takes the flags by value.
        // SAFETY: the request takes an integer argument, no pointer.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD as _, flags as u64) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for the event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        (&self.file).write(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_WRITE};

    #[test]
    fn ioctl_numbers_match_the_headers() {
        let t = u32::from(b'T');
        let int = 4;
        assert_eq!(TUNSETIFF, ioctl_expr(_IOC_WRITE, t, 202, int));
        assert_eq!(TUNSETOFFLOAD, ioctl_expr(_IOC_WRITE, t, 208, int));
        assert_eq!(TUNSETVNETHDRSZ, ioctl_expr(_IOC_WRITE, t, 216, int));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for name in ["", "sixteen-chars-xx"] {
            let err = Tap::open(name, None).unwrap_err();
            assert!(err.to_string().contains("1 to 15 bytes") || err.to_string().contains("tun"));
        }
    }

    /// Needs CAP_NET_ADMIN and /dev/net/tun; skipped with a message where they are missing.
    #[test]
    fn tap_round_trip_with_offloads() {
        let tap = match Tap::open("keeltaptest0", None) {
            Ok(tap) => tap,
            Err(e) => {
                eprintln!("cannot create a tap here ({e}): skipping");
                return;
            }
        };
        assert_eq!(tap.name(), "keeltaptest0");
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            .unwrap();
        let mut buf = [0u8; 2048];
        // Nothing queued: non-blocking read says so.
        let err = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A frame with a zero virtio-net header goes out.
        let mut frame = vec![0u8; VNET_HDR_LEN + 60];
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].fill(0xff);
        assert_eq!(tap.write_frame(&frame).unwrap(), frame.len());
    }
}
