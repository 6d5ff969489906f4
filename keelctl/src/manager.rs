//! `keelctl manager serve`: the reference manager end of zero-touch registration.
//!
//! Hosts booted with `keel.manager=https://<this>`, `keel.manager_ca=<keelctl ca fingerprint>`
//! and optionally `keel.join_token=` POST their registration here (`/v1/register`, schemas in the
//! agent's OpenAPI document). The server certificate is issued by the keelctl CA at start, for
//! the names hosts use (`--name`), and sent with the CA certificate so hosts can match their pin.
//! Registrations go into the database (`db`). A host with a valid join token is adopted at once,
//! on a thread of its own, exactly as `keelctl host adopt` does (`crate::adopt_host`); the others
//! wait for `keelctl host approve`.

use crate::config::{Config, HostEntry};
use crate::db::{Db, HostState, Registration, DB_FILE};
use crate::Error;
use keel_api::agent::{self as api, ManagerVerdict, RegistrationRequest, RegistrationResponse};
use keel_init::agent::ca::Validity;
use keel_init::agent::ca_pin::manager_server_config;
use keel_init::agent::client::HostClient;
use keel_init::agent::fingerprint::Fingerprint;
use keel_init::agent::http::{self, Limits, Request, Response};
use keel_init::agent::tls::parse_cert_pem;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Connections served at once; more are closed.
const MAX_CONNECTIONS: usize = 64;
/// Validity of the server certificate made at each start.
const SERVER_CERT_DAYS: u32 = 365;

/// `FROM=TO`: reach a host that announces `FROM` (address:port) at `TO` instead (NAT, port
/// forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressMap {
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl FromStr for AddressMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not FROM=TO, both address:port");
        let (from, to) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            from: from.parse().map_err(|_| bad())?,
            to: to.parse().map_err(|_| bad())?,
        })
    }
}

/// Where to try reaching a registered host's API, in order: each address it announced (mapped),
/// then the address its registration came from.
pub fn candidates(reg: &Registration, map: &[AddressMap]) -> Vec<SocketAddr> {
    let port = reg.document.api_port;
    let peer = reg.peer.parse::<IpAddr>().ok();
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in reg.document.addresses.iter().copied().chain(peer) {
        let announced = SocketAddr::new(ip, port);
        let addr = map
            .iter()
            .find(|m| m.from == announced)
            .map_or(announced, |m| m.to);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Adopts a registered host: finds where its API answers with the key it registered, adopts it
/// with the adoption token it sent, and records the outcome. Returns the name it is saved as.
pub fn adopt_registered(
    config: &Config,
    db: &Db,
    reg: &Registration,
    reach: &[SocketAddr],
    days: u32,
) -> Result<String, Error> {
    let outcome = try_adopt(config, reg, reach, days);
    let (state, reason) = match &outcome {
        Ok(_) => (HostState::Adopted, None),
        Err(e) => (HostState::Failed, Some(e.to_string())),
    };
    db.set_state(&reg.id, state, reason.as_deref())?;
    outcome
}

fn try_adopt(
    config: &Config,
    reg: &Registration,
    reach: &[SocketAddr],
    days: u32,
) -> Result<String, Error> {
    let doc = &reg.document;
    let token = doc
        .adopt_token
        .as_deref()
        .ok_or_else(|| Error::NoAdoptToken(reg.id.clone()))?;
    let pin = doc.fingerprint;
    let addr = reach
        .iter()
        .copied()
        .find(|addr| answers(*addr, pin))
        .ok_or_else(|| Error::Unreachable {
            id: reg.id.clone(),
            tried: reach
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    crate::adopt_host(config, addr, pin, token, &reg.id, days)?;
    Ok(reg.id.clone())
}

/// Whether the host's API answers at `addr` with the pinned key.
fn answers(addr: SocketAddr, pin: Fingerprint) -> bool {
    HostClient::new(addr, pin, None).is_ok_and(|c| c.health().is_ok())
}

/// One line of the manager's log on stdout; a closed stdout does not stop the service.
fn log(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// What the manager does after answering a registration.
enum Then {
    Nothing,
    Adopt(Registration),
    /// An adopted host moved: find its API again.
    Relocate(Registration),
}

/// The manager service.
pub struct Manager {
    pub config: Config,
    pub map: Vec<AddressMap>,
    pub days: u32,
}

impl Manager {
    fn db(&self) -> Result<Db, Error> {
        Ok(Db::open(&self.config.dir().join(DB_FILE))?)
    }

    /// The TLS configuration: a fresh server certificate from the CA for `names`, then the CA.
    pub fn tls(&self, names: &[String]) -> Result<Arc<ServerConfig>, Error> {
        let ca = self.config.ca()?;
        let validity = Validity::days_from(SystemTime::now(), SERVER_CERT_DAYS);
        let server = ca
            .issue_server_cert(names, validity)
            .map_err(|e| Error::Manager(e.to_string()))?;
        let (mut chain, key) = server
            .tls_auth()
            .map_err(|e| Error::Manager(e.to_string()))?;
        chain.push(
            parse_cert_pem("ca.pem", &ca.cert_pem()).map_err(|e| Error::Manager(e.to_string()))?,
        );
        manager_server_config(chain, key).map_err(|e| Error::Manager(e.to_string()))
    }

    /// Serves registrations until the process is stopped.
    pub fn serve(self: Arc<Self>, listener: &TcpListener, tls: Arc<ServerConfig>) {
        let active = Arc::new(AtomicUsize::new(0));
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (manager, tls, active) = (Arc::clone(&self), Arc::clone(&tls), Arc::clone(&active));
            let spawned = std::thread::Builder::new().spawn(move || {
                manager.connection(tcp, tls);
                active.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn connection(self: &Arc<Self>, tcp: TcpStream, tls: Arc<ServerConfig>) {
        let Ok(peer) = tcp.peer_addr().map(|a| a.ip()) else {
            return;
        };
        let timeout = Some(Duration::from_secs(10));
        if tcp.set_read_timeout(timeout).is_err() || tcp.set_write_timeout(timeout).is_err() {
            return;
        }
        let Ok(conn) = ServerConnection::new(tls) else {
            return;
        };
        let mut stream = StreamOwned::new(conn, tcp);
        let served = http::serve_one(&mut stream, &Limits::default(), |_, request| {
            self.handle(request, peer)
        });
        if served.is_ok() {
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    }

    fn handle(self: &Arc<Self>, request: &Request, peer: IpAddr) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", api::REGISTER) => match request.json::<RegistrationRequest>() {
                Ok(doc) => self.register(&doc, peer),
                Err(response) => response,
            },
            (_, api::REGISTER) => Response::error(405, "Only POST is allowed here"),
            _ => Response::error(404, "No such route; hosts register at POST /v1/register"),
        }
    }

    fn register(self: &Arc<Self>, doc: &RegistrationRequest, peer: IpAddr) -> Response {
        match self.decide(doc, peer) {
            Ok((answer, then)) => {
                log(&format!(
                    "keelctl manager: {} ({}, {}) from {peer}: {}",
                    doc.host_id,
                    doc.hostname.as_deref().unwrap_or("no name"),
                    doc.fingerprint,
                    answer.message
                ));
                let manager = Arc::clone(self);
                match then {
                    Then::Nothing => {}
                    Then::Adopt(reg) => {
                        std::thread::spawn(move || manager.adopt_in_background(&reg));
                    }
                    Then::Relocate(reg) => {
                        std::thread::spawn(move || manager.relocate(&reg));
                    }
                }
                Response::json(200, &answer)
            }
            Err(e) => {
                log(&format!(
                    "keelctl manager: refused {} from {peer}: {e}",
                    doc.host_id
                ));
                let status = match e {
                    Error::Db(crate::db::DbError::KeyChanged { .. }) => 409,
                    _ => 500,
                };
                Response::error(status, &e.to_string())
            }
        }
    }

    /// Records the registration and decides what happens to the host: the answer, and what the
    /// manager does next.
    fn decide(
        &self,
        doc: &RegistrationRequest,
        peer: IpAddr,
    ) -> Result<(RegistrationResponse, Then), Error> {
        let db = self.db()?;
        let now = SystemTime::now();
        let before = db.get(&doc.host_id)?;
        let reg = db.record(doc, &peer.to_string(), now)?;
        let moved =
            before.is_some_and(|b| b.document.addresses != doc.addresses || b.peer != reg.peer);
        let joined = match &doc.join_token {
            Some(token) => db.join_token_valid(token, now)?,
            None => false,
        };
        let answer = |state, message: &str| RegistrationResponse {
            state,
            message: message.to_string(),
        };
        let adoptable = doc.adopt_token.is_some();
        Ok(match reg.state {
            HostState::Adopted if !adoptable && moved => (
                answer(
                    ManagerVerdict::Adopted,
                    "adopted by this manager; new address noted",
                ),
                Then::Relocate(reg),
            ),
            HostState::Adopted | HostState::Adopting if !adoptable => (
                answer(ManagerVerdict::Adopted, "adopted by this manager"),
                Then::Nothing,
            ),
            HostState::Adopting => (
                answer(ManagerVerdict::Adopting, "adoption in progress"),
                Then::Nothing,
            ),
            // New, pending, failed, or adopted before and released since (it has a token again).
            _ if joined && adoptable => {
                db.set_state(&reg.id, HostState::Adopting, None)?;
                let reg = db.require(&reg.id)?;
                (
                    answer(ManagerVerdict::Adopting, "join token accepted: adopting"),
                    Then::Adopt(reg),
                )
            }
            _ => {
                if reg.state == HostState::Adopted {
                    let why = Some("released; announced again");
                    db.set_state(&reg.id, HostState::Pending, why)?;
                }
                let why = match (&doc.join_token, adoptable) {
                    (Some(_), true) => "join token unknown or expired; ",
                    (_, false) => "no adoption token sent; ",
                    _ => "",
                };
                let message = format!("{why}waiting for approval: keelctl host approve {}", reg.id);
                (answer(ManagerVerdict::Pending, &message), Then::Nothing)
            }
        })
    }

    /// An adopted host announced new addresses: remember where its API answers now.
    fn relocate(&self, reg: &Registration) {
        let pin = reg.document.fingerprint;
        let reach = candidates(reg, &self.map);
        let Some(addr) = reach.iter().copied().find(|a| answers(*a, pin)) else {
            log(&format!(
                "keelctl manager: {} moved, but does not answer at any of {reach:?}",
                reg.id
            ));
            return;
        };
        let entry = HostEntry {
            addr: addr.to_string(),
            fingerprint: pin,
        };
        match self.config.update_host(&reg.id, &entry) {
            Ok(()) => log(&format!("keelctl manager: {} is now at {addr}", reg.id)),
            Err(e) => log(&format!("keelctl manager: {}: {e}", reg.id)),
        }
    }

    fn adopt_in_background(&self, reg: &Registration) {
        let outcome = self.db().and_then(|db| {
            adopt_registered(
                &self.config,
                &db,
                reg,
                &candidates(reg, &self.map),
                self.days,
            )
        });
        match outcome {
            Ok(name) => log(&format!("keelctl manager: adopted {name}")),
            Err(e) => log(&format!("keelctl manager: cannot adopt {}: {e}", reg.id)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keel_api::host::Hardware;
    use keel_init::agent::fingerprint::FingerprintOf;

    fn reg(addresses: &[&str], peer: &str) -> Registration {
        Registration {
            id: "h".into(),
            state: HostState::Pending,
            reason: None,
            peer: peer.into(),
            first_seen: 0,
            last_seen: 0,
            document: RegistrationRequest {
                host_id: "h".into(),
                fingerprint: Fingerprint::of_spki(b""),
                hostname: None,
                hardware: Hardware::default(),
                nics: vec![],
                addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                api_port: 8443,
                keel_version: "0".into(),
                join_token: None,
                adopt_token: None,
            },
        }
    }

    fn then_kind(t: &Then) -> &'static str {
        match t {
            Then::Nothing => "nothing",
            Then::Adopt(_) => "adopt",
            Then::Relocate(_) => "relocate",
        }
    }

    #[test]
    fn what_the_manager_does_with_each_registration() {
        let dir = std::env::temp_dir().join(format!("keelctl-decide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let manager = Manager {
            config: Config::locate(Some(dir.clone())).unwrap(),
            map: vec![],
            days: 1,
        };
        let join = manager
            .db()
            .unwrap()
            .create_join_token(SystemTime::now(), None)
            .unwrap();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let base = reg(&["10.0.0.5"], "192.0.2.1").document;
        let with = |join_token: Option<&str>, adopt_token: Option<&str>, addr: &str| {
            let mut doc = base.clone();
            doc.join_token = join_token.map(String::from);
            doc.adopt_token = adopt_token.map(String::from);
            doc.addresses = vec![addr.parse().unwrap()];
            doc
        };
        let j = Some(join.as_str());
        let t = Some("adopt-token");
        // In order: each row starts from the state the previous ones left. `Some(state)` first
        // sets the host's state, as an adoption thread would. The last row: the token is spent,
        // so the adoption went through even if the thread has not recorded it yet.
        let cases = [
            (
                None,
                with(None, t, "10.0.0.5"),
                ManagerVerdict::Pending,
                "nothing",
                "waiting for approval",
            ),
            (
                None,
                with(Some("wrong"), t, "10.0.0.5"),
                ManagerVerdict::Pending,
                "nothing",
                "unknown or expired",
            ),
            (
                None,
                with(j, t, "10.0.0.5"),
                ManagerVerdict::Adopting,
                "adopt",
                "join token accepted",
            ),
            (
                None,
                with(j, t, "10.0.0.5"),
                ManagerVerdict::Adopting,
                "nothing",
                "in progress",
            ),
            (
                Some(HostState::Adopted),
                with(j, None, "10.0.0.5"),
                ManagerVerdict::Adopted,
                "nothing",
                "adopted by this manager",
            ),
            (
                None,
                with(j, None, "10.0.0.6"),
                ManagerVerdict::Adopted,
                "relocate",
                "new address",
            ),
            (
                None,
                with(None, t, "10.0.0.6"),
                ManagerVerdict::Pending,
                "nothing",
                "waiting for approval",
            ),
            (
                Some(HostState::Failed),
                with(j, t, "10.0.0.6"),
                ManagerVerdict::Adopting,
                "adopt",
                "join token accepted",
            ),
            (
                None,
                with(None, None, "10.0.0.6"),
                ManagerVerdict::Adopted,
                "nothing",
                "adopted by this manager",
            ),
        ];
        for (i, (state, doc, verdict, then, message)) in cases.into_iter().enumerate() {
            if let Some(state) = state {
                manager
                    .db()
                    .unwrap()
                    .set_state(&doc.host_id, state, None)
                    .unwrap();
            }
            let (answer, next) = manager.decide(&doc, peer).unwrap();
            assert_eq!(answer.state, verdict, "row {i}: {answer:?}");
            assert_eq!(then_kind(&next), then, "row {i}");
            assert!(answer.message.contains(message), "row {i}: {answer:?}");
        }
        let released = manager.db().unwrap().require("h").unwrap();
        assert_eq!(released.state, HostState::Adopting);
        let mut stranger = base.clone();
        stranger.fingerprint = Fingerprint::of_spki(b"another key");
        let err = manager.decide(&stranger, peer).err().unwrap();
        assert!(err.to_string().contains("refused"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn address_maps() {
        let m: AddressMap = "10.0.2.15:8443=127.0.0.1:40000".parse().unwrap();
        assert_eq!(m.to, "127.0.0.1:40000".parse().unwrap());
        for bad in ["", "10.0.2.15:8443", "10.0.2.15=127.0.0.1:1", "a=b"] {
            assert!(bad.parse::<AddressMap>().is_err(), "{bad}");
        }
    }

    /// Announced addresses, where the registration came from, the map, the addresses tried.
    type Case<'a> = (&'a [&'a str], &'a str, &'a [AddressMap], &'a [&'a str]);

    #[test]
    fn hosts_are_tried_at_their_addresses_then_where_they_came_from() {
        let map: Vec<AddressMap> = vec!["10.0.2.15:8443=127.0.0.1:40000".parse().unwrap()];
        let s = |list: Vec<SocketAddr>| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let cases: [Case; 4] = [
            (&["10.0.0.5"], "10.0.0.5", &[], &["10.0.0.5:8443"]),
            (
                &["10.0.0.5", "fd00::5"],
                "192.0.2.1",
                &[],
                &["10.0.0.5:8443", "[fd00::5]:8443", "192.0.2.1:8443"],
            ),
            (
                &["10.0.2.15"],
                "127.0.0.1",
                &map,
                &["127.0.0.1:40000", "127.0.0.1:8443"],
            ),
            (&[], "junk", &[], &[]),
        ];
        for (addrs, peer, map, want) in cases {
            assert_eq!(
                s(candidates(&reg(addrs, peer), map)),
                want,
                "{addrs:?} {peer}"
            );
        }
    }
}
