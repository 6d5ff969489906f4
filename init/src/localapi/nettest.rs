//! The console's network tests: ICMP echo, a DNS A query, a TCP connection.
//!
//! Names are resolved with our own DNS query over UDP rather than getaddrinfo: a static glibc
//! binary cannot load the NSS modules getaddrinfo relies on (it warns at link time and may fail
//! at run time), and the test must ask exactly the name server the operator configured.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::types::TestResult;

/// Why a test failed.
#[derive(Debug, thiserror::Error)]
pub enum NetTestError {
    /// {0:?} is not an IPv4 address
    #[error("{0:?} is not an IPv4 address")]
    NotIpv4(String),
    /// {0:?} is not a valid DNS name
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    /// {0:?} is not host:port
    #[error("{0:?} is not host:port")]
    BadEndpoint(String),
    /// Cannot open an ICMP socket: {0}
    #[error("Cannot open an ICMP socket: {0}")]
    Socket(io::Error),
    /// No reply from {0} within {1} ms
    #[error("No reply from {0} within {1} ms")]
    Timeout(String, u128),
    /// Network error talking to {0}: {1}
    #[error("Network error talking to {0}: {1}")]
    Io(String, io::Error),
    /// The name server {0} answered: {1}
    #[error("The name server {0} answered: {1}")]
    Dns(String, String),
}

const ICMP_ECHO_REQUEST: u8 = 8;

/// 16 changing bits to tell our answers from stale ones.
fn nonce() -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| (d.subsec_nanos() >> 8) as u16)
}
const ICMP_ECHO_REPLY: u8 = 0;

/// The internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with its checksum.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"keel-console-ping");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Whether `packet` (starting at the ICMP header) is the reply to our request. A datagram ICMP
/// socket replaces the identifier with its own, so only `raw` sockets check it.
pub fn is_reply(packet: &[u8], id: u16, seq: u16, raw: bool) -> bool {
    packet.len() >= 8
        && packet[0] == ICMP_ECHO_REPLY
        && u16::from_be_bytes([packet[6], packet[7]]) == seq
        && (!raw || u16::from_be_bytes([packet[4], packet[5]]) == id)
}

/// An unprivileged ping socket when ping_group_range allows it, else a raw socket (root).
fn icmp_socket() -> Result<(OwnedFd, bool), NetTestError> {
    let mut last = io::Error::from_raw_os_error(libc::EPERM);
    for (kind, raw) in [(libc::SOCK_DGRAM, false), (libc::SOCK_RAW, true)] {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd >= 0 {
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, raw));
        }
        last = io::Error::last_os_error();
    }
    Err(NetTestError::Socket(last))
}

/// Sends one ICMP echo to `addr` and waits for the reply; returns the round-trip time.
pub fn ping(addr: Ipv4Addr, timeout: Duration) -> Result<Duration, NetTestError> {
    let (fd, raw) = icmp_socket()?;
    let io_err = |e| NetTestError::Io(addr.to_string(), e);
    let id = (std::process::id() & 0xffff) as u16;
    let seq = nonce() | 1;
    let packet = echo_request(id, seq);
    // SAFETY: sockaddr_in is plain old data; all-zero is valid before filling it.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(addr).to_be();
    let started = Instant::now();
    // SAFETY: packet and sin are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::from_ref(&sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(NetTestError::Timeout(addr.to_string(), timeout.as_millis()));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: pfd is one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            continue;
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Err(io_err(io::Error::last_os_error()));
        };
        let icmp = if raw {
            // A raw socket delivers the IP header too.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            buf.get(ihl..n).unwrap_or_default()
        } else {
            &buf[..n]
        };
        if is_reply(icmp, id, seq, raw) {
            return Ok(started.elapsed());
        }
    }
}

/// Pings `addr` once a second until a reply arrives or `timeout` passes; returns the round
/// trip. Send errors while there is no route or neighbour yet count as no reply.
pub fn ping_until(addr: Ipv4Addr, timeout: Duration) -> Result<Duration, NetTestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetTestError::Timeout(addr.to_string(), timeout.as_millis()));
        }
        let attempt = Instant::now();
        match ping(addr, left.min(Duration::from_secs(1))) {
            Ok(rtt) => return Ok(rtt),
            Err(e @ NetTestError::Socket(_)) => return Err(e),
            Err(_) => std::thread::sleep(
                Duration::from_millis(200)
                    .saturating_sub(attempt.elapsed())
                    .min(deadline.saturating_duration_since(Instant::now())),
            ),
        }
    }
}

/// A DNS query for the A records of `name`, recursion desired.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, NetTestError> {
    let bad = || NetTestError::BadName(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    let mut q = Vec::with_capacity(18 + trimmed.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in trimmed.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

/// The offset just past the (possibly compressed) name at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return (pos + 2 <= msg.len()).then_some(pos + 2),
            l if l & 0xc0 == 0 => pos += 1 + usize::from(l),
            _ => return None,
        }
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// The A records of a response to query `id`; an error names what the server said.
pub fn parse_response(id: u16, msg: &[u8]) -> Result<Vec<Ipv4Addr>, String> {
    let malformed = || String::from("a malformed response");
    if msg.len() < 12 || u16_at(msg, 0) != Some(id) || msg[2] & 0x80 == 0 {
        return Err(malformed());
    }
    match msg[3] & 0x0f {
        0 => {}
        2 => return Err("server failure (SERVFAIL)".into()),
        3 => return Err("no such name (NXDOMAIN)".into()),
        5 => return Err("refused (REFUSED)".into()),
        code => return Err(format!("error code {code}")),
    }
    let questions = u16_at(msg, 4).ok_or_else(malformed)?;
    let answers = u16_at(msg, 6).ok_or_else(malformed)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(msg, pos).ok_or_else(malformed)? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        pos = skip_name(msg, pos).ok_or_else(malformed)?;
        let kind = u16_at(msg, pos).ok_or_else(malformed)?;
        let class = u16_at(msg, pos + 2).ok_or_else(malformed)?;
        let len = usize::from(u16_at(msg, pos + 8).ok_or_else(malformed)?);
        let data = msg.get(pos + 10..pos + 10 + len).ok_or_else(malformed)?;
        if kind == 1 && class == 1 && len == 4 {
            found.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + len;
    }
    if found.is_empty() {
        return Err("no address for that name".into());
    }
    Ok(found)
}

/// Asks `server` for the A records of `name`.
pub fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, NetTestError> {
    let id = nonce() ^ (std::process::id() as u16);
    let query = encode_query(id, name)?;
    let io_err = |e| NetTestError::Io(server.to_string(), e);
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(io_err)?;
    socket.connect(server).map_err(io_err)?;
    socket.send(&query).map_err(io_err)?;
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(NetTestError::Timeout(
                server.to_string(),
                timeout.as_millis(),
            ));
        }
        socket.set_read_timeout(Some(left)).map_err(io_err)?;
        match socket.recv(&mut buf) {
            Ok(n) if u16_at(&buf[..n], 0) == Some(id) => {
                return parse_response(id, &buf[..n])
                    .map_err(|why| NetTestError::Dns(server.to_string(), why))
            }
            // A late answer to someone else's query: keep waiting for ours.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn split_endpoint(endpoint: &str) -> Result<(&str, u16), NetTestError> {
    let bad = || NetTestError::BadEndpoint(endpoint.to_string());
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Opens a TCP connection to `endpoint` (`host:port`), resolving a name through `dns`.
pub fn connect(
    endpoint: &str,
    dns: Option<SocketAddr>,
    timeout: Duration,
) -> Result<(SocketAddr, Duration), NetTestError> {
    let (host, port) = split_endpoint(endpoint)?;
    let ip = match (host.parse::<IpAddr>(), dns) {
        (Ok(ip), _) => ip,
        (Err(_), Some(server)) => IpAddr::V4(resolve(server, host, timeout)?[0]),
        (Err(_), None) => return Err(NetTestError::Dns("(none)".into(), "no name server".into())),
    };
    let addr = SocketAddr::new(ip, port);
    let started = Instant::now();
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => NetTestError::Timeout(addr.to_string(), timeout.as_millis()),
        _ => NetTestError::Io(addr.to_string(), e),
    })?;
    Ok((addr, started.elapsed()))
}

fn result(outcome: Result<String, NetTestError>) -> TestResult {
    match outcome {
        Ok(detail) => TestResult { ok: true, detail },
        Err(e) => TestResult {
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// `ping` as a test result.
pub fn ping_text(addr: &str, timeout: Duration) -> TestResult {
    result(
        addr.parse::<Ipv4Addr>()
            .map_err(|_| NetTestError::NotIpv4(addr.to_string()))
            .and_then(|ip| ping(ip, timeout))
            .map(|rtt| format!("reply from {addr} in {} ms", rtt.as_millis())),
    )
}

/// `resolve` as a test result; `server` is an address (port 53).
pub fn resolve_text(server: &str, name: &str, timeout: Duration) -> TestResult {
    result(
        server
            .parse::<IpAddr>()
            .map_err(|_| NetTestError::NotIpv4(server.to_string()))
            .and_then(|ip| resolve(SocketAddr::new(ip, 53), name, timeout))
            .map(|ips| {
                let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
                format!("{name} is {} (asked {server})", list.join(", "))
            }),
    )
}

/// `connect` as a test result; `dns` is the name server's address.
pub fn connect_text(endpoint: &str, dns: Option<&str>, timeout: Duration) -> TestResult {
    let dns = dns
        .and_then(|d| d.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53));
    result(
        connect(endpoint, dns, timeout)
            .map(|(addr, t)| format!("connected to {addr} in {} ms", t.as_millis())),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn checksums() {
        // RFC 1071's example.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        let packet = echo_request(0x1234, 7);
        assert_eq!(
            checksum(&packet),
            0,
            "a packet with its checksum sums to zero"
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn replies() {
        let mut reply = echo_request(9, 5);
        reply[0] = ICMP_ECHO_REPLY;
        let cases = [
            (reply.clone(), 9, 5, true, true),
            (reply.clone(), 8, 5, true, false),
            (reply.clone(), 8, 5, false, true),
            (reply.clone(), 9, 6, false, false),
            (echo_request(9, 5), 9, 5, true, false),
            (reply[..7].to_vec(), 9, 5, false, false),
        ];
        for (packet, id, seq, raw, want) in cases {
            assert_eq!(is_reply(&packet, id, seq, raw), want, "{id} {seq} {raw}");
        }
    }

    #[test]
    fn pings_loopback() {
        let rtt = ping(Ipv4Addr::LOCALHOST, Duration::from_secs(2)).unwrap();
        assert!(rtt < Duration::from_secs(2));
        let r = ping_text("127.0.0.1", Duration::from_secs(2));
        assert!(
            r.ok && r.detail.starts_with("reply from 127.0.0.1 in "),
            "{r:?}"
        );
        let r = ping_text("gateway", Duration::from_secs(1));
        assert_eq!(r.detail, "\"gateway\" is not an IPv4 address");
    }

    #[test]
    fn queries() {
        let q = encode_query(0xabcd, "www.example.com.").unwrap();
        let mut want = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        assert_eq!(q, want);
        let long = "a".repeat(64);
        for bad in ["", ".", "a..b", long.as_str(), "sp ace.com", "ü.de"] {
            assert!(encode_query(1, bad).is_err(), "{bad:?}");
        }
    }

    /// A response to `query` with `answers` (type, rdata), names compressed to the question.
    fn answer(query: &[u8], rcode: u8, answers: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] |= 0x80;
        r[3] = 0x80 | rcode;
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (kind, data) in answers {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn responses() {
        let q = encode_query(7, "host.lan").unwrap();
        let cname: &[u8] = b"\x04real\xc0\x11";
        let ok = answer(
            &q,
            0,
            &[(5, cname), (1, &[10, 0, 0, 9]), (1, &[10, 0, 0, 8])],
        );
        assert_eq!(
            parse_response(7, &ok),
            Ok(vec![Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 8)])
        );
        let cases: [(Vec<u8>, &str); 6] = [
            (answer(&q, 3, &[]), "no such name (NXDOMAIN)"),
            (answer(&q, 2, &[]), "server failure (SERVFAIL)"),
            (answer(&q, 0, &[]), "no address for that name"),
            (q.clone(), "a malformed response"),
            (ok[..ok.len() - 2].to_vec(), "a malformed response"),
            (vec![0, 7, 0x80], "a malformed response"),
        ];
        for (msg, want) in cases {
            assert_eq!(parse_response(7, &msg), Err(want.to_string()));
        }
        assert!(parse_response(8, &ok).is_err(), "another query's id");
    }

    /// A name server on 127.0.0.1 answering `answers` once per query it gets, first with a
    /// stray answer for another id.
    fn dns_server(rcode: u8, answers: Vec<(u16, Vec<u8>)>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let list: Vec<(u16, &[u8])> =
                    answers.iter().map(|(k, d)| (*k, d.as_slice())).collect();
                let mut stray = answer(&buf[..n], 0, &list);
                stray[0] ^= 0xff;
                socket.send_to(&stray, peer).unwrap();
                socket
                    .send_to(&answer(&buf[..n], rcode, &list), peer)
                    .unwrap();
            }
        });
        addr
    }

    #[test]
    fn resolves_through_a_real_udp_server() {
        let server = dns_server(0, vec![(1, vec![192, 168, 7, 1])]);
        let ips = resolve(server, "manager.lan", Duration::from_secs(2)).unwrap();
        assert_eq!(ips, [Ipv4Addr::new(192, 168, 7, 1)]);
        let missing = dns_server(3, vec![]);
        let err = resolve(missing, "nope.lan", Duration::from_secs(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("The name server {missing} answered: no such name (NXDOMAIN)")
        );
        // A server that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = resolve(
            silent.local_addr().unwrap(),
            "x.lan",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, NetTestError::Timeout(..)), "{err}");
    }

    #[test]
    fn connects_by_address_and_by_name() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Duration::from_secs(2);
        let (addr, _) = connect(&format!("127.0.0.1:{port}"), None, t).unwrap();
        assert_eq!(addr.port(), port);
        let dns = dns_server(0, vec![(1, vec![127, 0, 0, 1])]);
        let r = connect_text(&format!("manager.lan:{port}"), None, t);
        assert!(!r.ok && r.detail.contains("no name server"), "{r:?}");
        let (addr, _) = connect(&format!("manager.lan:{port}"), Some(dns), t).unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));
        drop(listener);
        let r = connect_text(&format!("127.0.0.1:{port}"), None, t);
        assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
        for bad in ["nohost", ":80", "h:port", "h:99999"] {
            assert!(matches!(
                connect(bad, None, t),
                Err(NetTestError::BadEndpoint(_))
            ));
        }
        assert!(split_endpoint("[::1]:8443").unwrap() == ("::1", 8443));
    }
}
