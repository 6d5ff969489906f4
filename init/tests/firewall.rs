//! The firewall for real (needs root): loaded into a fresh network namespace, read back over
//! netlink, and checked with TCP connections: the agent port answers, another port is dropped.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use keel_init::firewall::{self, nft, Match};

/// Runs `f` on a thread of its own in a new network namespace (namespaces are per thread, so the
/// rest of the test process keeps the host's network).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        loopback_up();
        f()
    })
    .join()
    .unwrap()
}

fn loopback_up() {
    // SAFETY: a plain socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: req is a valid ifreq naming "lo"; flags are read then written back with IFF_UP.
    unsafe {
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0);
        libc::close(fd);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn reaches(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
}

#[test]
fn the_ruleset_loads_and_reads_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let loaded = in_new_netns(|| {
        firewall::apply().unwrap();
        // Loading twice replaces the table instead of adding a second copy of each rule.
        firewall::apply().unwrap();
        nft::read_back(firewall::TABLE).unwrap()
    });
    assert_eq!(loaded, nft::expected(&firewall::ruleset()));
}

#[test]
fn only_allowed_ports_answer() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_new_netns(|| {
        let _agent = TcpListener::bind((Ipv4Addr::LOCALHOST, firewall::AGENT_PORT)).unwrap();
        let _other = TcpListener::bind((Ipv4Addr::LOCALHOST, 9000)).unwrap();
        assert!(
            reaches(firewall::AGENT_PORT) && reaches(9000),
            "before the firewall"
        );
        // Loopback is trusted by the real ruleset; without that rule, loopback traffic is judged
        // like traffic from the network.
        let mut ruleset = firewall::ruleset();
        ruleset.chains[0]
            .rules
            .retain(|r| r.matches != Match::Loopback);
        nft::load(&ruleset).unwrap();
        assert!(reaches(firewall::AGENT_PORT), "the agent port is open");
        assert!(!reaches(9000), "port 9000 is dropped");
        firewall::apply().unwrap();
        assert!(reaches(9000), "loopback is trusted");
    });
}

#[test]
fn a_refused_batch_names_the_message_and_changes_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (err, loaded) = in_new_netns(|| {
        firewall::apply().unwrap();
        // A chain name longer than nf_tables allows (NFT_CHAIN_MAXNAMELEN, 256 with the NUL).
        let mut ruleset = firewall::ruleset();
        ruleset.chains[0].name = "c".repeat(300).leak();
        let err = nft::load(&ruleset).unwrap_err();
        (err, nft::read_back(firewall::TABLE).unwrap())
    });
    let text = err.to_string();
    assert!(text.starts_with("the kernel refused chain ccc"), "{text}");
    // The kernel's extended ack points at the attribute: NFTA_CHAIN_NAME.
    assert!(text.contains("(attribute type 3 at byte "), "{text}");
    assert!(err.errno().is_some(), "{err:?}");
    // The batch is one transaction: the table loaded before is still in force.
    assert_eq!(loaded, nft::expected(&firewall::ruleset()));
}
