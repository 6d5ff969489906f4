//! Tap devices for jailed VMMs. keel-vmm cannot make its own inside the jail: creating a tap
//! (`TUNSETIFF` on a new name), bringing a link up and joining a bridge all need CAP_NET_ADMIN,
//! which the jail drops. So, as Firecracker's jailer users do, the agent (root) makes a
//! persistent tap owned by the VM's uid and gid, brings it up and attaches it to the bridge;
//! keel-vmm, inside the jail, only attaches to it (`TUNSETIFF` on an existing tap its uid owns
//! needs no capability). The agent deletes the tap when the run ends.

use crate::net::plan::Op;
use crate::net::rtnetlink::Rtnetlink;
use keel_api::net::{IfName, MacAddr};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `_IOW('T', 202..206, int)` (include/uapi/linux/if_tun.h).
const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETPERSIST: u64 = 0x4004_54cb;
const TUNSETOWNER: u64 = 0x4004_54cc;
const TUNSETGROUP: u64 = 0x4004_54ce;
/// keel-vmm opens its taps with these flags; a persistent tap keeps IFF_TAP | IFF_NO_PI, and
/// IFF_VNET_HDR is per open file.
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
/// `SIOCSIFHWADDR` (include/uapi/linux/sockios.h) and `ARPHRD_ETHER`.
const SIOCSIFHWADDR: u64 = 0x8924;
const ARPHRD_ETHER: u16 = 1;

/// Why a tap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Cannot load the tun module: {0}
    #[error("Cannot load the tun module: {0}")]
    Module(String),
    /// Cannot {0} tap {1}: {2}
    #[error("Cannot {0} tap {1}: {2}")]
    Io(&'static str, String, io::Error),
    /// Cannot attach tap {0} to bridge {1:?}: {2}
    #[error("Cannot attach tap {0} to bridge {1:?}: {2}")]
    Bridge(String, String, String),
}

/// The tap's own MAC address: the guest's with 0xfe as its first byte. A Linux bridge without a
/// MAC of its own takes the lowest of its ports'; a tap with a random MAC could become the
/// bridge's address and take it away again when it goes, leaving neighbours (the management
/// LAN's router) with a stale entry for the host. 0xfe sorts above every vendor MAC (libvirt
/// does the same).
pub fn host_side_mac(guest: MacAddr) -> [u8; 6] {
    let mut mac = guest.octets();
    mac[0] = 0xfe;
    mac
}

/// `struct ifreq` with a name and the flags short.
fn ifreq(name: &str, flags: i16) -> Result<[u8; 40], TapError> {
    let mut req = [0u8; 40];
    let checked = IfName::new(name).map_err(|e| {
        TapError::Io(
            "name",
            name.into(),
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    // At most 15 bytes: the name and its NUL fit the 16 of `ifr_name`.
    let bytes = checked.as_str().as_bytes();
    req[..bytes.len()].copy_from_slice(bytes);
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    Ok(req)
}

/// Opens /dev/net/tun attached to tap `name` (creating it if missing).
fn attach(name: &str) -> Result<std::fs::File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| TapError::Io("open /dev/net/tun for", name.into(), e))?;
    let mut req = ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    // SAFETY: TUNSETIFF reads and writes a 40-byte struct ifreq, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) } < 0 {
        return Err(TapError::Io(
            "create",
            name.into(),
            io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

fn set(
    file: &std::fs::File,
    name: &str,
    request: u64,
    value: u64,
    what: &'static str,
) -> Result<(), TapError> {
    // SAFETY: these TUN ioctls take an integer argument by value, no pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), request as _, value) } < 0 {
        return Err(TapError::Io(what, name.into(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets the MAC address of interface `name`.
fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), TapError> {
    let err = |e| TapError::Io("set the MAC address of", name.into(), e);
    // SAFETY: plain socket(2); the result is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name, 0)?;
    req[16..18].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
    req[18..24].copy_from_slice(&mac);
    // SAFETY: SIOCSIFHWADDR reads a 40-byte struct ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFHWADDR as _, req.as_mut_ptr()) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes persistent tap `name` with MAC `mac`, owned by `uid`:`gid`, up, and in `bridge`. A tap
/// of that name left by a lost run is taken over.
pub fn create(name: &str, mac: [u8; 6], uid: u32, gid: u32, bridge: &str) -> Result<(), TapError> {
    let file = attach(name)?;
    set(&file, name, TUNSETOWNER, u64::from(uid), "set the owner of")?;
    set(&file, name, TUNSETGROUP, u64::from(gid), "set the group of")?;
    set(&file, name, TUNSETPERSIST, 1, "make persistent")?;
    drop(file);
    if let Err(e) = set_mac(name, mac) {
        remove(name);
        return Err(e);
    }
    let result = Rtnetlink::open()
        .map_err(|e| e.to_string())
        .and_then(|mut nl| {
            nl.apply(&Op::SetMaster {
                name: name.into(),
                master: bridge.into(),
            })
            .and_then(|()| nl.apply(&Op::SetUp { name: name.into() }))
            .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        remove(name);
        return Err(TapError::Bridge(name.into(), bridge.into(), e));
    }
    Ok(())
}

/// Whether `name` is one of the agent's taps (`kt<8 hex digits>n<digits>`,
/// `vm_devices::tap_name`).
pub fn is_vm_tap(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("kt")
        .and_then(|rest| rest.split_once('n'))
        .is_some_and(|(hash, index)| {
            hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && digits(index)
        })
}

/// Deletes every agent tap but `keep`: those of runs that ended while no agent watched them.
pub fn sweep(keep: &[String]) -> Vec<String> {
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let stale: Vec<String> = links
        .flatten()
        .map(|l| l.file_name().to_string_lossy().into_owned())
        .filter(|n| is_vm_tap(n) && !keep.contains(n))
        .collect();
    stale.iter().for_each(|t| remove(t));
    stale
}

/// Deletes tap `name` if it exists (the run that used it is over).
pub fn remove(name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    if let Ok(file) = attach(name) {
        let _ = set(&file, name, TUNSETPERSIST, 0, "make transient");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_and_addresses() {
        assert!(ifreq(&super::super::vm_devices::tap_name("a-long-vm-name", 7), 0).is_ok());
        assert!(ifreq("a-name-longer-than-15", 0).is_err());
        for (name, want) in [
            ("kt0123abcdn0", true),
            ("kt0123ABCDn12", true),
            ("kt0123abcn0", false),
            ("kt0123abcdn", false),
            ("kt0123abcgn0", false),
            ("keelbr0", false),
            ("kv1n2", false),
        ] {
            assert_eq!(is_vm_tap(name), want, "{name}");
        }
        assert_eq!(
            host_side_mac("52:54:00:ab:cd:01".parse().unwrap()),
            [0xfe, 0x54, 0x00, 0xab, 0xcd, 0x01]
        );
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
    }

    /// Needs root and /dev/net/tun (a build machine with tun loaded); says so and passes
    /// without them.
    #[test]
    fn a_tap_is_made_for_the_vm_uid_and_removed() {
        if !Path::new("/dev/net/tun").exists() || euid() != 0 {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let name = format!("kvt{}", std::process::id() % 100_000);
        // No such bridge: the tap is made, then removed again, and the error names the bridge.
        let mac = host_side_mac("52:54:00:00:01:02".parse().unwrap());
        let err = create(&name, mac, 123_456, 123_457, "no-such-br0").unwrap_err();
        assert!(err.to_string().contains("no-such-br0"), "{err}");
        assert!(!Path::new("/sys/class/net").join(&name).exists());
        let file = attach(&name).unwrap();
        set(&file, &name, TUNSETOWNER, 123_456, "own").unwrap();
        set(&file, &name, TUNSETPERSIST, 1, "persist").unwrap();
        drop(file);
        set_mac(&name, mac).unwrap();
        let owner = std::fs::read_to_string(format!("/sys/class/net/{name}/owner")).unwrap();
        assert_eq!(owner.trim(), "123456");
        let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
        assert_eq!(mac.trim(), "fe:54:00:00:01:02");
        remove(&name);
        assert!(!Path::new("/sys/class/net").join(&name).exists());
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }
}
