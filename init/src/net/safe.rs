//! Safe changes: after a change from the console or the API, the host waits for a confirmation;
//! if none comes in time and the change cut it off (the gateway, or the manager when one is
//! named, no longer answers), the previous configuration comes back. The decision is pure; the
//! probes are a real ICMP echo to the gateway and a TCP connect to the manager.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What the probes found; `None` where there was nothing to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub gateway: Option<bool>,
    pub manager: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep waiting for a confirmation.
    Wait,
    /// Keep the change and save it.
    Commit,
    /// Put the previous configuration back.
    RollBack,
}

/// `reach` is only consulted once the deadline passed without a confirmation.
pub fn decide(confirmed: bool, expired: bool, reach: Option<Reach>) -> Decision {
    if confirmed {
        return Decision::Commit;
    }
    if !expired {
        return Decision::Wait;
    }
    match reach {
        Some(r) if r.gateway == Some(false) || r.manager == Some(false) => Decision::RollBack,
        _ => Decision::Commit,
    }
}

/// Sends ICMP echo requests to an IPv4 `target` until one is answered or `timeout` passes.
pub fn ping(target: std::net::Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    use crate::localapi::nettest::{ping_until, NetTestError};
    match ping_until(target, timeout) {
        Ok(_) => Ok(true),
        Err(NetTestError::Socket(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Whether a TCP connection to `manager` (`host:port`) opens within `timeout`.
pub fn connects(manager: &str, timeout: Duration) -> bool {
    let addrs: Vec<SocketAddr> = manager
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, timeout).is_ok())
}

/// Probes the gateway (None: nothing to probe; Some(None): one was expected and is missing, as
/// when DHCP got no lease) and the manager.
pub fn probe(gateway: Option<Option<IpAddr>>, manager: Option<&str>, timeout: Duration) -> Reach {
    let gateway = gateway.map(|gw| match gw {
        Some(IpAddr::V4(v4)) => ping(v4, timeout).unwrap_or(false),
        // IPv6 gateways: no ICMPv6 probe yet; the manager probe still guards the change.
        Some(IpAddr::V6(_)) => true,
        None => false,
    });
    Reach {
        gateway,
        manager: manager.map(|m| connects(m, timeout)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::plan::{IpNet, Op};
    use crate::net::rtnetlink::Rtnetlink;
    use crate::net::testns;

    #[test]
    fn decides() {
        let r = |gateway, manager| Some(Reach { gateway, manager });
        let cases = [
            (true, false, None, Decision::Commit),
            (true, true, r(Some(false), Some(false)), Decision::Commit),
            (false, false, r(Some(false), None), Decision::Wait),
            (false, true, r(Some(true), None), Decision::Commit),
            (false, true, r(Some(true), Some(true)), Decision::Commit),
            (false, true, r(None, None), Decision::Commit),
            (false, true, r(Some(false), None), Decision::RollBack),
            (false, true, r(Some(true), Some(false)), Decision::RollBack),
            (false, true, r(None, Some(false)), Decision::RollBack),
        ];
        for (confirmed, expired, reach, want) in cases {
            assert_eq!(
                decide(confirmed, expired, reach),
                want,
                "{confirmed} {expired} {reach:?}"
            );
        }
    }

    /// Real probes in a private namespace: a veth pair with an address at each end answers; an
    /// address nobody has does not; a listening TCP port connects, a closed one does not.
    #[test]
    fn probes_for_real() {
        testns::run_isolated("net::safe::tests::probes_for_real", || {
            let mut nl = Rtnetlink::open().unwrap();
            testns::veth("a0", "b0");
            let net = |t: &str| IpNet {
                addr: t.parse().unwrap(),
                prefix: 24,
            };
            for (name, addr) in [("a0", "192.0.2.1"), ("b0", "192.0.2.2")] {
                nl.apply(&Op::SetUp { name: name.into() }).unwrap();
                nl.apply(&Op::AddAddr {
                    name: name.into(),
                    addr: net(addr),
                })
                .unwrap();
            }
            nl.apply(&Op::SetUp { name: "lo".into() }).unwrap();
            let timeout = Duration::from_millis(1500);
            assert!(ping("192.0.2.2".parse().unwrap(), timeout).unwrap());
            assert!(!ping("192.0.2.99".parse().unwrap(), timeout).unwrap());
            assert!(!ping("198.51.100.1".parse().unwrap(), timeout).unwrap());
            let listener = std::net::TcpListener::bind("192.0.2.2:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert!(connects(&format!("192.0.2.2:{port}"), timeout));
            drop(listener);
            assert!(!connects(&format!("192.0.2.2:{port}"), timeout));
            let reach = probe(Some(Some("192.0.2.2".parse().unwrap())), None, timeout);
            assert_eq!(
                reach,
                Reach {
                    gateway: Some(true),
                    manager: None
                }
            );
            assert_eq!(
                probe(Some(None), Some("192.0.2.2:1"), timeout),
                Reach {
                    gateway: Some(false),
                    manager: Some(false)
                }
            );
        });
    }
}
