//! DHCPv4 client (RFC 2131): a pure state machine over packet bytes and a millisecond clock
//! (`Client`); `keeper.rs` does the packet I/O and keeps the lease on the interface.
//!
//! INIT → DISCOVER → OFFER → REQUEST → ACK = BOUND; at T1 a unicast REQUEST renews, at T2 a
//! broadcast REQUEST rebinds, at expiry the address is dropped and discovery starts again; a NAK
//! restarts discovery at once.

use std::net::Ipv4Addr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BOOTP_LEN: usize = 236;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

const OPT_SUBNET: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_NTP: u8 = 42;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_MAX_SIZE: u8 = 57;
const OPT_T1: u8 = 58;
const OPT_T2: u8 = 59;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;
const OPT_PAD: u8 = 0;

/// First retransmission delay; doubles up to `MAX_RETRY_MS` (RFC 2131 4.1).
const FIRST_RETRY_MS: u64 = 2_000;
const MAX_RETRY_MS: u64 = 32_000;
/// REQUESTs sent for one OFFER before discovery starts over.
const REQUEST_TRIES: u32 = 4;
/// Shortest wait between renewal attempts (RFC 2131 4.4.5: half the remaining time, ≥ 60 s).
const MIN_RENEW_RETRY_MS: u64 = 60_000;

pub use keel_api::net::Lease;

/// What the socket side must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Broadcast this DHCP payload from 0.0.0.0 (or `from`) to 255.255.255.255.
    Broadcast { payload: Vec<u8>, from: Ipv4Addr },
    /// Unicast to the server from the leased address.
    Unicast {
        payload: Vec<u8>,
        from: Ipv4Addr,
        to: Ipv4Addr,
    },
    /// Put the lease's address and route on the interface (replacing `old`, if different).
    Configure { lease: Lease, old: Option<Lease> },
    /// Remove the lease's address and route.
    Deconfigure(Lease),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Init,
    Selecting {
        xid: u32,
        tries: u32,
        next_ms: u64,
    },
    Requesting {
        xid: u32,
        offer: Lease,
        tries: u32,
        next_ms: u64,
    },
    Bound {
        lease: Lease,
        since_ms: u64,
    },
    Renewing {
        lease: Lease,
        since_ms: u64,
        xid: u32,
        next_ms: u64,
    },
    Rebinding {
        lease: Lease,
        since_ms: u64,
        xid: u32,
        next_ms: u64,
    },
}

/// The state machine. Times are milliseconds of a monotonic clock the caller supplies.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    phase: Phase,
    next_xid: u32,
}

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    kind: u8,
    xid: u32,
    lease: Lease,
}

fn retry_delay(tries: u32) -> u64 {
    FIRST_RETRY_MS
        .saturating_mul(1 << tries.min(5))
        .min(MAX_RETRY_MS)
}

impl Client {
    /// `seed` seeds the transaction ids (use something random, e.g. from the MAC and the clock).
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u32) -> Client {
        Client {
            mac,
            hostname,
            phase: Phase::Init,
            next_xid: seed,
        }
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.phase {
            Phase::Bound { lease, .. }
            | Phase::Renewing { lease, .. }
            | Phase::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// The phase's name, for status displays.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Init => "init",
            Phase::Selecting { .. } => "selecting",
            Phase::Requesting { .. } => "requesting",
            Phase::Bound { .. } => "bound",
            Phase::Renewing { .. } => "renewing",
            Phase::Rebinding { .. } => "rebinding",
        }
    }

    fn xid(&mut self) -> u32 {
        // A 32-bit LCG step: distinct ids per transaction, seeded per client.
        self.next_xid = self
            .next_xid
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.next_xid
    }

    /// When `poll` next has something to do.
    pub fn deadline(&self) -> u64 {
        match &self.phase {
            Phase::Init => 0,
            Phase::Selecting { next_ms, .. } | Phase::Requesting { next_ms, .. } => *next_ms,
            Phase::Bound { lease, since_ms } => since_ms + u64::from(lease.t1_secs) * 1000,
            Phase::Renewing { next_ms, .. } | Phase::Rebinding { next_ms, .. } => *next_ms,
        }
    }

    /// Advances timers: (re)transmits, renews, rebinds, expires.
    pub fn poll(&mut self, now: u64) -> Vec<Action> {
        if now < self.deadline() {
            return Vec::new();
        }
        match self.phase.clone() {
            Phase::Init => {
                let xid = self.xid();
                self.phase = Phase::Selecting {
                    xid,
                    tries: 1,
                    next_ms: now + retry_delay(0),
                };
                vec![self.broadcast(self.message(DISCOVER, xid, None, None, None))]
            }
            Phase::Selecting { xid, tries, .. } => {
                self.phase = Phase::Selecting {
                    xid,
                    tries: tries + 1,
                    next_ms: now + retry_delay(tries),
                };
                vec![self.broadcast(self.message(DISCOVER, xid, None, None, None))]
            }
            Phase::Requesting {
                xid, offer, tries, ..
            } => {
                if tries >= REQUEST_TRIES {
                    self.phase = Phase::Init;
                    return self.poll(now);
                }
                let payload =
                    self.message(REQUEST, xid, None, Some(offer.address), Some(offer.server));
                self.phase = Phase::Requesting {
                    xid,
                    offer,
                    tries: tries + 1,
                    next_ms: now + retry_delay(tries),
                };
                vec![self.broadcast(payload)]
            }
            Phase::Bound { lease, since_ms }
            | Phase::Renewing {
                lease, since_ms, ..
            }
            | Phase::Rebinding {
                lease, since_ms, ..
            } => self.renew_or_rebind(lease, since_ms, now),
        }
    }

    fn renew_or_rebind(&mut self, lease: Lease, since_ms: u64, now: u64) -> Vec<Action> {
        let at = |secs: u32| since_ms + u64::from(secs) * 1000;
        let (t2, expiry) = (at(lease.t2_secs), at(lease.lease_secs));
        if now >= expiry {
            self.phase = Phase::Init;
            let mut actions = vec![Action::Deconfigure(lease)];
            actions.extend(self.poll(now));
            return actions;
        }
        let rebinding = now >= t2;
        let xid = match &self.phase {
            Phase::Renewing { xid, .. } if !rebinding => *xid,
            Phase::Rebinding { xid, .. } => *xid,
            _ => self.xid(),
        };
        // Retry at half the time left to the next milestone, at least a minute, never past it.
        let milestone = if rebinding { expiry } else { t2 };
        let next_ms = (now + ((milestone - now) / 2).max(MIN_RENEW_RETRY_MS)).min(milestone);
        let payload = self.message(REQUEST, xid, Some(lease.address), None, None);
        let action = if rebinding {
            Action::Broadcast {
                payload,
                from: lease.address,
            }
        } else {
            Action::Unicast {
                payload,
                from: lease.address,
                to: lease.server,
            }
        };
        self.phase = if rebinding {
            Phase::Rebinding {
                lease,
                since_ms,
                xid,
                next_ms,
            }
        } else {
            Phase::Renewing {
                lease,
                since_ms,
                xid,
                next_ms,
            }
        };
        vec![action]
    }

    /// Handles a DHCP payload received on port 68.
    pub fn receive(&mut self, packet: &[u8], now: u64) -> Vec<Action> {
        let Some(reply) = parse_reply(packet, &self.mac) else {
            return Vec::new();
        };
        match (self.phase.clone(), reply.kind) {
            (Phase::Selecting { xid, .. }, OFFER) if reply.xid == xid => {
                let payload = self.message(
                    REQUEST,
                    xid,
                    None,
                    Some(reply.lease.address),
                    Some(reply.lease.server),
                );
                self.phase = Phase::Requesting {
                    xid,
                    offer: reply.lease,
                    tries: 1,
                    next_ms: now + retry_delay(0),
                };
                vec![self.broadcast(payload)]
            }
            (Phase::Requesting { xid, .. }, ACK) if reply.xid == xid => {
                self.phase = Phase::Bound {
                    lease: reply.lease.clone(),
                    since_ms: now,
                };
                vec![Action::Configure {
                    lease: reply.lease,
                    old: None,
                }]
            }
            (Phase::Renewing { xid, lease, .. } | Phase::Rebinding { xid, lease, .. }, ACK)
                if reply.xid == xid =>
            {
                self.phase = Phase::Bound {
                    lease: reply.lease.clone(),
                    since_ms: now,
                };
                vec![Action::Configure {
                    lease: reply.lease,
                    old: Some(lease),
                }]
            }
            (Phase::Requesting { xid, .. }, NAK) if reply.xid == xid => {
                self.phase = Phase::Init;
                self.poll(now)
            }
            (Phase::Renewing { xid, lease, .. } | Phase::Rebinding { xid, lease, .. }, NAK)
                if reply.xid == xid =>
            {
                self.phase = Phase::Init;
                let mut actions = vec![Action::Deconfigure(lease)];
                actions.extend(self.poll(now));
                actions
            }
            _ => Vec::new(),
        }
    }

    fn broadcast(&self, payload: Vec<u8>) -> Action {
        Action::Broadcast {
            payload,
            from: Ipv4Addr::UNSPECIFIED,
        }
    }

    /// A client message. `ciaddr` when renewing/rebinding; `requested`/`server` when selecting.
    fn message(
        &self,
        kind: u8,
        xid: u32,
        ciaddr: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let mut p = vec![0u8; BOOTP_LEN];
        p[0] = 1; // BOOTREQUEST
        p[1] = 1; // Ethernet
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        if ciaddr.is_none() {
            // Ask for broadcast replies: before it has an address the client cannot take unicast.
            p[10] = 0x80;
        }
        p[12..16].copy_from_slice(&ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
        p[28..34].copy_from_slice(&self.mac);
        p.extend_from_slice(&MAGIC);
        let mut opt = |code: u8, data: &[u8]| {
            p.push(code);
            p.push(data.len() as u8);
            p.extend_from_slice(data);
        };
        opt(OPT_MSG_TYPE, &[kind]);
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.mac);
        opt(OPT_CLIENT_ID, &client_id);
        opt(OPT_MAX_SIZE, &1500u16.to_be_bytes());
        if let Some(ip) = requested {
            opt(OPT_REQUESTED_IP, &ip.octets());
        }
        if let Some(ip) = server {
            opt(OPT_SERVER_ID, &ip.octets());
        }
        if let Some(name) = &self.hostname {
            let bytes = name.as_bytes();
            opt(OPT_HOSTNAME, &bytes[..bytes.len().min(63)]);
        }
        opt(
            OPT_PARAMS,
            &[
                OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_DOMAIN, OPT_NTP, OPT_LEASE, OPT_T1, OPT_T2,
            ],
        );
        p.push(OPT_END);
        p
    }
}

/// Option code and data.
type Options = Vec<(u8, Vec<u8>)>;

/// The options of a DHCP message, in order (later duplicates are appended, per RFC 3396).
fn options(packet: &[u8]) -> Options {
    let mut out: Options = Vec::new();
    let mut rest = packet.get(BOOTP_LEN + 4..).unwrap_or(&[]);
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            OPT_PAD => rest = tail,
            OPT_END => break,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    break;
                };
                let Some(data) = tail.get(..len as usize) else {
                    break;
                };
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, existing)) => existing.extend_from_slice(data),
                    None => out.push((code, data.to_vec())),
                }
                rest = &tail[len as usize..];
            }
        }
    }
    out
}

fn addrs(data: &[u8]) -> Vec<Ipv4Addr> {
    data.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

fn parse_reply(packet: &[u8], mac: &[u8; 6]) -> Option<Reply> {
    if packet.len() < BOOTP_LEN + 4
        || packet[0] != 2
        || packet[28..34] != mac[..]
        || packet[BOOTP_LEN..BOOTP_LEN + 4] != MAGIC
    {
        return None;
    }
    let xid = u32::from_be_bytes(packet[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let opts = options(packet);
    let get = |code: u8| {
        opts.iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    };
    let kind = *get(OPT_MSG_TYPE)?.first()?;
    let secs = |code: u8| {
        get(code)
            .and_then(|d| d.get(..4))
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let server = get(OPT_SERVER_ID)
        .and_then(|d| addrs(d).first().copied())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let lease_secs = secs(OPT_LEASE).unwrap_or(3600).max(60);
    let t1_secs = secs(OPT_T1).unwrap_or(lease_secs / 2).min(lease_secs);
    let t2_secs = secs(OPT_T2)
        .unwrap_or(lease_secs / 8 * 7)
        .clamp(t1_secs, lease_secs);
    let prefix = get(OPT_SUBNET)
        .and_then(|d| addrs(d).first().copied())
        .and_then(super::validate::netmask_prefix)
        .unwrap_or(24);
    let lease = Lease {
        address: yiaddr,
        prefix,
        router: get(OPT_ROUTER).and_then(|d| addrs(d).first().copied()),
        dns: get(OPT_DNS).map(addrs).unwrap_or_default(),
        domain: get(OPT_DOMAIN)
            .map(|d| {
                String::from_utf8_lossy(d)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .filter(|d| super::validate::dns_name(d)),
        ntp: get(OPT_NTP).map(addrs).unwrap_or_default(),
        server,
        lease_secs,
        t1_secs,
        t2_secs,
    };
    if kind != NAK && (yiaddr.is_unspecified() || yiaddr.is_broadcast()) {
        return None;
    }
    Some(Reply { kind, xid, lease })
}

/// Fuzz entry (the `dhcp_reply` target in vmm/fuzz). `data` is tried twice: as a whole payload,
/// and as the variable part of a BOOTREPLY (transaction id, your-address, then the options after
/// the magic cookie), which a fuzzer would otherwise first have to find.
#[doc(hidden)]
pub fn fuzz_reply(data: &[u8]) {
    fuzz_reply_packet(data);
    let (head, opts) = data.split_at(data.len().min(8));
    let mut packet = vec![0u8; BOOTP_LEN];
    packet[..3].copy_from_slice(&[2, 1, 6]);
    let (xid, yiaddr) = head.split_at(head.len().min(4));
    packet[4..4 + xid.len()].copy_from_slice(xid);
    packet[16..16 + yiaddr.len()].copy_from_slice(yiaddr);
    packet[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    packet.extend_from_slice(&MAGIC);
    packet.extend_from_slice(opts);
    fuzz_reply_packet(&packet);
}

/// `packet` parsed as a reply to the MAC it names, then handed, with the transaction id it
/// carries, to a client in each phase that waits for a reply, whose timers are then run once.
fn fuzz_reply_packet(packet: &[u8]) {
    let mut mac = [0u8; 6];
    if let Some(m) = packet.get(28..34) {
        mac.copy_from_slice(m);
    }
    let xid = packet
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let now = 1_000_000;
    let lease = parse_reply(packet, &mac).map_or(
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: None,
            dns: Vec::new(),
            domain: None,
            ntp: Vec::new(),
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_secs: 3600,
            t1_secs: 1800,
            t2_secs: 3150,
        },
        |r| r.lease,
    );
    let next_ms = now + FIRST_RETRY_MS;
    let phases = [
        Phase::Selecting {
            xid,
            tries: 1,
            next_ms,
        },
        Phase::Requesting {
            xid,
            offer: lease.clone(),
            tries: 1,
            next_ms,
        },
        Phase::Renewing {
            lease: lease.clone(),
            since_ms: now,
            xid,
            next_ms,
        },
        Phase::Rebinding {
            lease,
            since_ms: now,
            xid,
            next_ms,
        },
    ];
    for phase in phases {
        let mut client = Client {
            mac,
            hostname: Some("fuzz".into()),
            phase,
            next_xid: xid,
        };
        let _ = client.receive(packet, now);
        let _ = client.poll(client.deadline());
    }
}

/// A server reply (for tests and the test server): `kind` with `lease` to the client `mac`.
#[cfg(test)]
pub(crate) fn server_reply(kind: u8, xid: u32, mac: &[u8; 6], lease: &Lease) -> Vec<u8> {
    let mut p = vec![0u8; BOOTP_LEN];
    p[0] = 2;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[16..20].copy_from_slice(&lease.address.octets());
    p[28..34].copy_from_slice(mac);
    p.extend_from_slice(&MAGIC);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(lease.prefix))
        .unwrap_or(0);
    let mut opt = |code: u8, data: &[u8]| {
        p.push(code);
        p.push(data.len() as u8);
        p.extend_from_slice(data);
    };
    opt(OPT_MSG_TYPE, &[kind]);
    opt(OPT_SERVER_ID, &lease.server.octets());
    opt(OPT_LEASE, &lease.lease_secs.to_be_bytes());
    opt(OPT_T1, &lease.t1_secs.to_be_bytes());
    opt(OPT_T2, &lease.t2_secs.to_be_bytes());
    opt(OPT_SUBNET, &mask.to_be_bytes());
    if let Some(r) = lease.router {
        opt(OPT_ROUTER, &r.octets());
    }
    let dns: Vec<u8> = lease.dns.iter().flat_map(|a| a.octets()).collect();
    if !dns.is_empty() {
        opt(OPT_DNS, &dns);
    }
    if let Some(d) = &lease.domain {
        opt(OPT_DOMAIN, d.as_bytes());
    }
    p.push(OPT_END);
    p
}

/// The message type and transaction id of a client message (for tests and the test server).
#[cfg(test)]
pub(crate) fn client_message(packet: &[u8]) -> Option<(u8, u32, Options)> {
    (packet.len() > BOOTP_LEN + 4 && packet[0] == 1).then_some(())?;
    let opts = options(packet);
    let kind = opts
        .iter()
        .find(|(c, _)| *c == OPT_MSG_TYPE)?
        .1
        .first()
        .copied()?;
    Some((
        kind,
        u32::from_be_bytes(packet[4..8].try_into().ok()?),
        opts,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: Some("example.com".into()),
            ntp: vec![],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_secs: 1000,
            t1_secs: 500,
            t2_secs: 875,
        }
    }

    fn sent(actions: &[Action]) -> Vec<(u8, u32, &'static str, Options)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast { payload, .. } => {
                    client_message(payload).map(|(k, x, o)| (k, x, "broadcast", o))
                }
                Action::Unicast { payload, .. } => {
                    client_message(payload).map(|(k, x, o)| (k, x, "unicast", o))
                }
                _ => None,
            })
            .collect()
    }

    fn opt(opts: &[(u8, Vec<u8>)], code: u8) -> Option<Vec<u8>> {
        opts.iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.clone())
    }

    /// Runs the client through DISCOVER/OFFER/REQUEST/ACK; returns the client and the xid.
    fn bound(now: u64) -> (Client, u32) {
        let mut c = Client::new(MAC, Some("keelhost".into()), 7);
        let out = sent(&c.poll(now));
        let (kind, xid, how, opts) = out[0].clone();
        assert_eq!((kind, how), (DISCOVER, "broadcast"));
        assert_eq!(opt(&opts, OPT_HOSTNAME).unwrap(), b"keelhost");
        let out = c.receive(&server_reply(OFFER, xid, &MAC, &lease()), now + 10);
        let out = sent(&out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, REQUEST);
        assert_eq!(out[0].1, xid);
        assert_eq!(opt(&out[0].3, OPT_REQUESTED_IP).unwrap(), [10, 0, 2, 15]);
        assert_eq!(opt(&out[0].3, OPT_SERVER_ID).unwrap(), [10, 0, 2, 2]);
        let out = c.receive(&server_reply(ACK, xid, &MAC, &lease()), now + 20);
        assert_eq!(
            out,
            [Action::Configure {
                lease: lease(),
                old: None
            }]
        );
        assert_eq!(c.phase_name(), "bound");
        (c, xid)
    }

    #[test]
    fn acquires_a_lease() {
        bound(0);
    }

    #[test]
    fn renews_at_t1_and_rebinds_at_t2() {
        let (mut c, _) = bound(0);
        let since = 20;
        assert_eq!(c.deadline(), since + 500_000);
        assert!(c.poll(since + 499_999).is_empty());
        let out = c.poll(since + 500_000);
        let msgs = sent(&out);
        assert_eq!((msgs[0].0, msgs[0].2), (REQUEST, "unicast"));
        assert!(opt(&msgs[0].3, OPT_REQUESTED_IP).is_none());
        assert!(matches!(&out[0], Action::Unicast { to, .. } if *to == Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(c.phase_name(), "renewing");
        // No answer: retries while renewing, then broadcasts at T2.
        let retry = c.deadline();
        assert!(retry > since + 500_000 && retry <= since + 875_000);
        assert_eq!(sent(&c.poll(retry))[0].2, "unicast");
        let out = c.poll(since + 875_000);
        assert_eq!(sent(&out)[0].2, "broadcast");
        assert_eq!(c.phase_name(), "rebinding");
        // An ACK while rebinding restarts the lease clock.
        let xid = sent(&out)[0].1;
        let mut renewed = lease();
        renewed.dns = vec![Ipv4Addr::new(10, 0, 2, 4)];
        let out = c.receive(&server_reply(ACK, xid, &MAC, &renewed), since + 900_000);
        assert_eq!(
            out,
            [Action::Configure {
                lease: renewed,
                old: Some(lease())
            }]
        );
        assert_eq!(c.deadline(), since + 900_000 + 500_000);
    }

    #[test]
    fn expiry_and_nak_restart_discovery() {
        let (mut c, _) = bound(0);
        c.poll(20 + 500_000);
        let out = c.poll(20 + 1_000_000);
        assert_eq!(out[0], Action::Deconfigure(lease()));
        assert_eq!(sent(&out)[0].0, DISCOVER);
        assert_eq!(c.phase_name(), "selecting");

        let (mut c, _) = bound(0);
        let xid = sent(&c.poll(20 + 500_000))[0].1;
        let out = c.receive(&server_reply(NAK, xid, &MAC, &lease()), 20 + 500_001);
        assert_eq!(out[0], Action::Deconfigure(lease()));
        assert_eq!(sent(&out)[0].0, DISCOVER);
    }

    #[test]
    fn ignores_what_is_not_for_it() {
        let mut c = Client::new(MAC, None, 1);
        let xid = sent(&c.poll(0))[0].1;
        let other_mac = [2, 0, 0, 0, 0, 1];
        let mut short = server_reply(OFFER, xid, &MAC, &lease());
        short.truncate(200);
        let mut zero = lease();
        zero.address = Ipv4Addr::UNSPECIFIED;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("wrong xid", server_reply(OFFER, xid ^ 1, &MAC, &lease())),
            (
                "other client",
                server_reply(OFFER, xid, &other_mac, &lease()),
            ),
            (
                "ACK while selecting",
                server_reply(ACK, xid, &MAC, &lease()),
            ),
            ("truncated", short),
            ("no address", server_reply(OFFER, xid, &MAC, &zero)),
            ("garbage", vec![0xff; 300]),
            ("empty", vec![]),
        ];
        for (what, packet) in cases {
            assert_eq!(c.receive(&packet, 5), [], "{what}");
            assert_eq!(c.phase_name(), "selecting", "{what}");
        }
    }

    #[test]
    fn retransmits_with_backoff_and_gives_up_requesting() {
        let mut c = Client::new(MAC, None, 1);
        c.poll(0);
        let deadlines: Vec<u64> = (0..7)
            .map(|_| {
                let d = c.deadline();
                assert_eq!(sent(&c.poll(d))[0].0, DISCOVER);
                d
            })
            .collect();
        assert_eq!(
            deadlines,
            [2_000, 6_000, 14_000, 30_000, 62_000, 94_000, 126_000]
        );
        let xid = sent(&c.poll(c.deadline()))[0].1;
        c.receive(&server_reply(OFFER, xid, &MAC, &lease()), 200_000);
        for _ in 1..REQUEST_TRIES {
            assert_eq!(sent(&c.poll(c.deadline()))[0].0, REQUEST);
        }
        assert_eq!(sent(&c.poll(c.deadline()))[0].0, DISCOVER);
    }

    #[test]
    fn parses_options() {
        let mut reply = server_reply(ACK, 1, &MAC, &lease());
        // Without T1/T2/subnet the defaults apply: T1 = lease/2, T2 = 7/8 lease, /24.
        reply.truncate(BOOTP_LEN + 4);
        reply.extend_from_slice(&[
            OPT_PAD,
            OPT_MSG_TYPE,
            1,
            ACK,
            OPT_LEASE,
            4,
            0,
            0,
            0x0e,
            0x10,
            OPT_DNS,
            4,
            1,
            1,
            1,
            1,
            OPT_DNS,
            4,
            8,
            8,
            8,
            8,
            OPT_END,
        ]);
        let r = parse_reply(&reply, &MAC).unwrap();
        assert_eq!(
            (
                r.lease.lease_secs,
                r.lease.t1_secs,
                r.lease.t2_secs,
                r.lease.prefix
            ),
            (3600, 1800, 3150, 24)
        );
        assert_eq!(
            r.lease.dns,
            [Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
        );
        assert_eq!(r.lease.router, None);
    }

    /// The fuzz target's entry point over every reply kind, whole and cut at every length.
    #[test]
    fn fuzz_entry_survives_replies() {
        for kind in [OFFER, ACK, NAK, DISCOVER, 0, 255] {
            let reply = server_reply(kind, 42, &MAC, &lease());
            for n in 0..=reply.len() {
                fuzz_reply(&reply[..n]);
            }
        }
    }
}
