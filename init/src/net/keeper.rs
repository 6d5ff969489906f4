//! The DHCP client's socket side: a thread per interface that runs `dhcp::Client`, sends and
//! receives over an AF_PACKET socket (the interface has no address to bind a UDP socket to until
//! the lease arrives), and puts the lease's address and default route on the interface.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dhcp::{Action, Client, Lease, CLIENT_PORT, SERVER_PORT};
use super::plan::{IpNet, PROTO_DHCP};
use super::rtnetlink::Rtnetlink;

const ETH_P_IP: u16 = 0x0800;
/// How often the thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(500);

/// What a keeper reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Bound(Lease),
    Lost(Lease),
    Error(String),
}

/// Hears a keeper's events: the interface and what happened.
pub type Report = Arc<dyn Fn(&str, Event) + Send + Sync>;

/// An AF_PACKET socket on one interface carrying IPv4.
struct PacketSocket {
    fd: OwnedFd,
    index: u32,
}

/// An IPv4/UDP datagram around `payload` (UDP checksum 0: optional over IPv4).
pub fn udp_packet(
    from: Ipv4Addr,
    to: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    let sum = crate::localapi::nettest::checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The UDP payload of an IPv4 packet addressed to `port`, if it is one.
pub fn udp_payload(packet: &[u8], port: u16) -> Option<&[u8]> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || *packet.get(9)? != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let total =
        usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?])).min(packet.len());
    let udp = packet.get(ihl..total)?;
    let dst = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (dst == port && len >= 8).then_some(())?;
    udp.get(8..len.min(udp.len()))
}

impl PacketSocket {
    fn open(index: u32) -> io::Result<PacketSocket> {
        let proto = ETH_P_IP.to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = Self::address(index, [0; 6]);
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, index })
    }

    fn address(index: u32, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; zero is a valid value for every field.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        addr
    }

    fn broadcast(&self, packet: &[u8]) -> io::Result<()> {
        let addr = Self::address(self.index, [0xff; 6]);
        // SAFETY: packet and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for a packet; Ok(None) on timeout.
    fn receive(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(err)
            };
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(n as usize))
    }
}

/// A running DHCP client thread. Dropping it does not stop it; call `stop`.
pub struct Keeper {
    pub interface: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping a lease on `interface`; `report` hears every change.
    pub fn spawn(interface: &str, hostname: Option<String>, report: Report) -> io::Result<Keeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = interface.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{interface}"))
            .spawn(move || run(&name, hostname, &flag, &report))?;
        Ok(Keeper {
            interface: interface.to_string(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (within one tick). The address stays.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    text.parse::<keel_api::MacAddr>()
        .ok()
        .map(|mac| mac.octets())
}

fn run(interface: &str, hostname: Option<String>, stop: &AtomicBool, report: &Report) {
    // The link may still be coming up: retry opening until stopped.
    let (mut nl, socket, mac) = loop {
        match open(interface) {
            Ok(parts) => break parts,
            Err(e) => {
                report(interface, Event::Error(e));
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(TICK);
                }
            }
        }
    };
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let seed = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ start.elapsed().subsec_nanos()
        ^ std::process::id();
    let mut client = Client::new(mac, hostname, seed);
    let mut buf = vec![0u8; 2048];
    // The same error every retransmission (a link without carrier) is reported once.
    let mut last_error = String::new();
    let mut report_error = |e: String| {
        if e != last_error {
            report(interface, Event::Error(e.clone()));
            last_error = e;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut actions = client.poll(now());
        let wait = Duration::from_millis(client.deadline().saturating_sub(now())).min(TICK);
        match socket.receive(&mut buf, wait) {
            Ok(Some(n)) => {
                if let Some(payload) = udp_payload(&buf[..n], CLIENT_PORT) {
                    actions.extend(client.receive(payload, now()));
                }
            }
            Ok(None) => {}
            Err(e) => report_error(format!("receive: {e}")),
        }
        for action in actions {
            if let Err(e) = perform(&mut nl, &socket, interface, &action, report) {
                report_error(e);
            }
        }
    }
}

fn open(interface: &str) -> Result<(Rtnetlink, PacketSocket, [u8; 6]), String> {
    let mut nl = Rtnetlink::open().map_err(|e| e.to_string())?;
    let state = nl.state().map_err(|e| e.to_string())?;
    let link = state
        .link(interface)
        .ok_or_else(|| format!("no link {interface}"))?;
    let mac = parse_mac(&link.mac).ok_or_else(|| format!("{interface} has no Ethernet address"))?;
    let socket = PacketSocket::open(link.index).map_err(|e| format!("packet socket: {e}"))?;
    Ok((nl, socket, mac))
}

fn unicast(interface: &str, from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> io::Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
    let name = interface.as_bytes();
    // SAFETY: name is valid for its length; SO_BINDTODEVICE takes the interface name.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket
        .send_to(payload, SocketAddrV4::new(to, SERVER_PORT))
        .map(|_| ())
}

fn lease_net(lease: &Lease) -> IpNet {
    IpNet {
        addr: lease.address.into(),
        prefix: lease.prefix,
    }
}

fn deconfigure(nl: &mut Rtnetlink, interface: &str, lease: &Lease) {
    if let Some(router) = lease.router {
        let _ = nl.default_route(false, interface, router.into(), PROTO_DHCP);
    }
    let _ = nl.address(false, interface, lease_net(lease));
}

fn perform(
    nl: &mut Rtnetlink,
    socket: &PacketSocket,
    interface: &str,
    action: &Action,
    report: &Report,
) -> Result<(), String> {
    let exists = |r: Result<(), crate::netlink::Error>| match r {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(|e| e.to_string()),
    };
    match action {
        Action::Broadcast { payload, from } => socket
            .broadcast(&udp_packet(
                *from,
                Ipv4Addr::BROADCAST,
                CLIENT_PORT,
                SERVER_PORT,
                payload,
            ))
            .map_err(|e| format!("send: {e}")),
        Action::Unicast { payload, from, to } => {
            unicast(interface, *from, *to, payload).map_err(|e| format!("send to {to}: {e}"))
        }
        Action::Configure { lease, old } => {
            if let Some(old) = old
                .as_ref()
                .filter(|o| o.address != lease.address || o.router != lease.router)
            {
                deconfigure(nl, interface, old);
            }
            exists(nl.address(true, interface, lease_net(lease)))?;
            if let Some(router) = lease.router {
                exists(nl.default_route(true, interface, router.into(), PROTO_DHCP))?;
            }
            report(interface, Event::Bound(lease.clone()));
            Ok(())
        }
        Action::Deconfigure(lease) => {
            deconfigure(nl, interface, lease);
            report(interface, Event::Lost(lease.clone()));
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::dhcp::{client_message, server_reply};
    use crate::net::plan::Op;
    use crate::net::testns;
    use std::sync::Mutex;

    #[test]
    fn udp_round_trip() {
        let p = udp_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, b"hello");
        assert_eq!(p.len(), 33);
        assert_eq!(
            crate::localapi::nettest::checksum(&p[..20]),
            0,
            "a header with its checksum sums to zero"
        );
        assert_eq!(udp_payload(&p, 67), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&p, 68), None);
        assert_eq!(udp_payload(&p[..10], 67), None);
        assert_eq!(udp_payload(&[0x60; 40], 67), None);
    }

    /// A DHCP exchange over a veth pair in a private network namespace: the keeper on one end, a
    /// minimal server (built from the same packet code) on the other; the lease must end up as an
    /// address and a default route on the client's link.
    #[test]
    fn keeps_a_lease_over_a_real_link() {
        testns::run_isolated("net::keeper::tests::keeps_a_lease_over_a_real_link", || {
            let mut nl = Rtnetlink::open().unwrap();
            testns::veth("cli0", "srv0");
            for name in ["cli0", "srv0"] {
                nl.apply(&Op::SetUp { name: name.into() }).unwrap();
            }
            let state = nl.state().unwrap();
            let srv = state.link("srv0").unwrap();
            let client_mac = parse_mac(&state.link("cli0").unwrap().mac).unwrap();
            let server = PacketSocket::open(srv.index).unwrap();
            let lease = Lease {
                address: Ipv4Addr::new(192, 0, 2, 50),
                prefix: 24,
                router: Some(Ipv4Addr::new(192, 0, 2, 1)),
                dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
                domain: None,
                ntp: vec![],
                server: Ipv4Addr::new(192, 0, 2, 1),
                lease_secs: 3600,
                t1_secs: 1800,
                t2_secs: 3000,
            };
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&events);
            let keeper = Keeper::spawn(
                "cli0",
                Some("t".into()),
                Arc::new(move |i: &str, e| sink.lock().unwrap().push((i.to_string(), e))),
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut buf = vec![0u8; 2048];
            while !events
                .lock()
                .unwrap()
                .iter()
                .any(|(_, e)| matches!(e, Event::Bound(_)))
            {
                assert!(
                    Instant::now() < deadline,
                    "no lease: {:?}",
                    events.lock().unwrap()
                );
                let Some(n) = server
                    .receive(&mut buf, Duration::from_millis(200))
                    .unwrap()
                else {
                    continue;
                };
                let Some((kind, xid, _)) =
                    udp_payload(&buf[..n], SERVER_PORT).and_then(client_message)
                else {
                    continue;
                };
                let answer = if kind == 1 { 2 } else { 5 };
                let reply = server_reply(answer, xid, &client_mac, &lease);
                server
                    .broadcast(&udp_packet(
                        lease.server,
                        Ipv4Addr::BROADCAST,
                        SERVER_PORT,
                        CLIENT_PORT,
                        &reply,
                    ))
                    .unwrap();
            }
            keeper.stop();
            assert_eq!(
                events.lock().unwrap().last().unwrap(),
                &("cli0".to_string(), Event::Bound(lease))
            );
            let state = nl.state().unwrap();
            let cli = state.link("cli0").unwrap();
            assert!(
                cli.addrs.iter().any(|a| a.to_string() == "192.0.2.50/24"),
                "{:?}",
                cli.addrs
            );
            assert!(
                state.routes.iter().any(|r| r.oif == cli.index
                    && r.protocol == PROTO_DHCP
                    && r.gateway.to_string() == "192.0.2.1"),
                "{:?}",
                state.routes
            );
        });
    }
}
