//! Zero-touch registration: the host announces itself to the manager named on the kernel command
//! line (`keel.manager=`), trusting only a server whose chain reaches the pinned manager CA
//! (`keel.manager_ca=`, see `keel_trust::ca_pin`), and carrying the join token
//! (`keel.join_token=`) that lets the manager adopt it without asking anyone.
//!
//! The registrar retries with capped exponential back-off while the manager is unreachable or
//! refuses, and announces again whenever the host's addresses or its adoption token change (a
//! new DHCP lease; the manager adopted or released it). Its state is in the agent's API
//! (`GET /v1/registration`) for managers and the console.

use super::api::{
    self, RegistrationRequest, RegistrationResponse, RegistrationSource, RegistrationState,
    RegistrationStatus,
};
use super::backoff::Backoff;
use super::hostinfo;
use super::server::Agent;
use crate::sys::atomic::{write_atomic, AtomicError};
use keel_trust::ca_pin::{
    ca_pin_mismatch, pinned_ca_client_config, probe_ca_client_config, probed_ca,
};
use keel_trust::client::{ClientError, HostClient};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The host ID, in the agent's state directory.
pub const HOST_ID_FILE: &str = "host-id";
/// The manager's port when `keel.manager=` names none.
pub const DEFAULT_PORT: u16 = 443;
/// First retry delay, and the ceiling it doubles up to.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a registered host looks for changed addresses or adoption.
pub const WATCH_EVERY: Duration = Duration::from_secs(3);
/// How often a registered host announces itself when nothing changed: a manager that lost its
/// records, or failed to adopt it, hears from it again.
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(600);

/// Why registration cannot start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// keel.manager={0:?} is not an https://host[:port][/path] URL
    #[error("keel.manager={0:?} is not an https://host[:port][/path] URL")]
    Url(String),
    /// keel.manager_ca={0:?} is not the manager CA certificate's fingerprint, sha256:<64 hex digits>
    #[error("keel.manager_ca={0:?} is not the manager CA certificate's fingerprint, sha256:<64 hex digits>")]
    Pin(String),
    /// keel.manager= is given without keel.manager_ca=: the host registers only with a manager whose CA it pins
    #[error("keel.manager= is given without keel.manager_ca=: the host registers only with a manager whose CA it pins")]
    NoPin,
    /// keel.manager_ca= or keel.join_token= is given without keel.manager=
    #[error("keel.manager_ca= or keel.join_token= is given without keel.manager=")]
    NoManager,
}

/// Why the host ID cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum HostIdError {
    /// Cannot read the host ID {0}: {1}
    #[error("Cannot read the host ID {0}: {1}")]
    Read(PathBuf, io::Error),
    /// The host ID {0} holds {1:?}, not a UUID; remove it to make a new one
    #[error("The host ID {0} holds {1:?}, not a UUID; remove it to make a new one")]
    Bad(PathBuf, String),
    /// Cannot read random bytes from the kernel
    #[error("Cannot read random bytes from the kernel")]
    Random,
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// `keel.manager=`: `https://host[:port][/path]`, host a DNS name, an IPv4 address or `[IPv6]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerUrl {
    text: String,
    host: String,
    port: u16,
    /// The base path without a trailing '/', empty for the root.
    base: String,
}

impl FromStr for ManagerUrl {
    type Err = SettingsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::Url(text.to_string());
        let rest = text.strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
                addr.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                (addr, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => DEFAULT_PORT,
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        let path_ok = path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"?#".contains(&b));
        if !host_ok || !path_ok || ServerName::try_from(host).is_err() {
            return Err(bad());
        }
        Ok(Self {
            text: text.to_string(),
            host: host.to_string(),
            port,
            base: path.trim_end_matches('/').to_string(),
        })
    }
}

impl ManagerUrl {
    /// The name the manager's certificate must hold.
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).ok()
    }

    /// Where registrations go.
    pub fn register_path(&self) -> String {
        format!("{}{}", self.base, api::REGISTER)
    }

    /// The manager's socket address (resolved at each attempt: DNS may come up late).
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `host:port` (`[v6]:port`), as the network tests and the network rollback check take it.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The registration parameters from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub manager: ManagerUrl,
    pub manager_ca: Fingerprint,
    pub join_token: Option<String>,
}

impl Settings {
    /// `None` when registration is not asked for.
    pub fn from_params(
        manager: Option<&str>,
        manager_ca: Option<&str>,
        join_token: Option<&str>,
    ) -> Result<Option<Self>, SettingsError> {
        let Some(manager) = manager else {
            return match manager_ca.or(join_token) {
                Some(_) => Err(SettingsError::NoManager),
                None => Ok(None),
            };
        };
        let manager = manager.parse()?;
        let manager_ca = manager_ca
            .ok_or(SettingsError::NoPin)?
            .parse()
            .map_err(|_| SettingsError::Pin(manager_ca.unwrap_or_default().to_string()))?;
        Ok(Some(Self {
            manager,
            manager_ca,
            join_token: join_token.map(String::from),
        }))
    }
}

/// Formats 16 random bytes as a version 4 UUID.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = bytes[6] & 0x0f | 0x40;
    bytes[8] = bytes[8] & 0x3f | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Whether `text` is a UUID as `uuid_v4` writes it (any version).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// The host ID in `dir`, made at first call.
pub fn load_or_create_host_id(dir: &Path) -> Result<String, HostIdError> {
    let path = dir.join(HOST_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if is_uuid(id) {
                Ok(id.to_string())
            } else {
                Err(HostIdError::Bad(path, id.chars().take(64).collect()))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| HostIdError::Random)?;
            let id = uuid_v4(bytes);
            write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)?;
            Ok(id)
        }
        Err(e) => Err(HostIdError::Read(path, e)),
    }
}

/// The host's addresses worth announcing: not loopback, not link-local, sorted.
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(state) = crate::net::rtnetlink::Rtnetlink::open().and_then(|mut n| n.state()) else {
        return Vec::new();
    };
    let mut addrs: Vec<IpAddr> = state
        .links
        .iter()
        .flat_map(|link| &link.addrs)
        .map(|net| net.addr)
        .filter(|a| announceable(*a))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

fn announceable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying soon: no route, no answer, a server error.
    Unreachable(String),
    /// Needs someone to fix the manager or the parameters (wrong CA, refused registration).
    Refused(String),
}

impl Failure {
    fn state(&self) -> (RegistrationState, &str) {
        match self {
            Self::Unreachable(r) => (RegistrationState::Pending, r),
            Self::Refused(r) => (RegistrationState::Error, r),
        }
    }
}

/// Sorts a failed call into retry-soon or needs-fixing, with a reason a person can act on.
pub fn classify(manager: &str, err: &ClientError) -> Failure {
    match err {
        ClientError::Connect(..) => Failure::Unreachable(format!("manager unreachable: {err}")),
        ClientError::Tls(_, tls) => {
            let why = match ca_pin_mismatch(tls) {
                Some(mismatch) => mismatch.to_string(),
                None => format!("TLS with {manager} failed: {tls}"),
            };
            match tls {
                rustls::Error::InvalidCertificate(_) => {
                    Failure::Refused(format!("{why}; nothing was sent"))
                }
                _ => Failure::Unreachable(why),
            }
        }
        ClientError::Status { status, message } if *status < 500 => Failure::Refused(format!(
            "the manager refused the registration ({status}): {message}"
        )),
        ClientError::Status { .. } | ClientError::Http(..) => {
            Failure::Unreachable(format!("manager unavailable: {err}"))
        }
        other => Failure::Refused(other.to_string()),
    }
}

/// The fingerprint of the CA that the manager at `url` chains its server certificate to, found
/// in a TLS handshake that ends before any request: the operator compares it with the manager's
/// before the host pins it and sends anything.
pub fn probe_ca(url: &ManagerUrl) -> Result<Fingerprint, String> {
    let text = url.as_str();
    let addr = url
        .resolve()
        .map_err(|e| format!("cannot resolve {text}: {e}"))?;
    let config = probe_ca_client_config().map_err(|e| e.to_string())?;
    // The pin is not used: the probe configuration verifies nothing against it.
    let mut client = HostClient::with_config(addr, Fingerprint::of_spki(b""), config);
    if let Some(name) = url.server_name() {
        client = client.with_server_name(name);
    }
    let error = match client.handshake() {
        Ok(()) => return Err(format!("{text} finished a handshake it should not have")),
        Err(e) => e,
    };
    match &error {
        ClientError::Tls(_, tls) => match probed_ca(tls) {
            Some(ca) => Ok(ca),
            None => Err(match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    format!("{text} sent no CA certificate that its server certificate chains to")
                }
                rustls::Error::InvalidCertificate(_) => {
                    format!("{text} has no valid certificate for that address: {tls}")
                }
                _ => format!("TLS with {text} failed: {tls}"),
            }),
        },
        ClientError::Connect(..) => Err(format!("manager unreachable: {error}")),
        other => Err(other.to_string()),
    }
}

/// The host's side of registration, run on a thread of its own.
pub struct Registrar {
    pub settings: Settings,
    pub source: RegistrationSource,
    pub host_id: String,
    pub hostname: Option<String>,
    pub api_port: u16,
    pub agent: Arc<Agent>,
    /// The addresses to announce (`host_addresses` on a real host).
    pub addresses: fn() -> Vec<IpAddr>,
    /// How long an unchanged registration stands before it is sent again (`REANNOUNCE_EVERY`).
    pub reannounce: Duration,
}

/// What a registered host last announced, and when: a change of either is announced at once,
/// and the same again after `Registrar::reannounce`.
pub type Announced = ((Vec<IpAddr>, Option<String>), Instant);

impl Registrar {
    /// The registration document as of now.
    pub fn document(&self, addresses: Vec<IpAddr>) -> RegistrationRequest {
        RegistrationRequest {
            host_id: self.host_id.clone(),
            fingerprint: self.agent.fingerprint(),
            hostname: self.hostname.clone(),
            hardware: hostinfo::hardware(),
            nics: hostinfo::nics(),
            addresses,
            api_port: self.api_port,
            keel_version: crate::pid1::VERSION.to_string(),
            join_token: self.settings.join_token.clone(),
            adopt_token: self.agent.token(),
        }
    }

    /// Sends one registration.
    pub fn send(&self, doc: &RegistrationRequest) -> Result<RegistrationResponse, Failure> {
        let url = self.settings.manager.as_str();
        let addr = self
            .settings
            .manager
            .resolve()
            .map_err(|e| Failure::Unreachable(format!("cannot resolve {url}: {e}")))?;
        let config = pinned_ca_client_config(self.settings.manager_ca)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let mut client = HostClient::with_config(addr, self.settings.manager_ca, config);
        if let Some(name) = self.settings.manager.server_name() {
            client = client.with_server_name(name);
        }
        client
            .call("POST", &self.settings.manager.register_path(), Some(doc))
            .map_err(|e| classify(url, &e))
    }

    fn status(&self) -> RegistrationStatus {
        RegistrationStatus {
            state: RegistrationState::Pending,
            manager: Some(self.settings.manager.as_str().to_string()),
            manager_ca: Some(self.settings.manager_ca.to_string()),
            source: Some(self.source),
            host_id: Some(self.host_id.clone()),
            ..RegistrationStatus::default()
        }
    }

    /// One round: announces when something changed since `announced`; returns how long to wait.
    pub fn step(
        &self,
        announced: &mut Option<Announced>,
        backoff: &mut Backoff,
        status: &mut RegistrationStatus,
    ) -> Duration {
        let addresses = (self.addresses)();
        let now = (addresses.clone(), self.agent.token());
        let current = announced
            .as_ref()
            .is_some_and(|(what, at)| *what == now && at.elapsed() < self.reannounce);
        if addresses.is_empty() || current {
            return WATCH_EVERY;
        }
        let doc = self.document(addresses);
        status.attempts = status.attempts.saturating_add(1);
        let url = self.settings.manager.as_str();
        match self.send(&doc) {
            Ok(answer) => {
                let line = format!(
                    "keel-agent: registered with {url} as {}: {}",
                    self.host_id, answer.message
                );
                if status.reason.as_deref() != Some(answer.message.as_str())
                    || status.state != RegistrationState::Registered
                {
                    log::info!("{line}");
                }
                status.state = RegistrationState::Registered;
                status.verdict = Some(answer.state);
                status.reason = Some(answer.message);
                *announced = Some((now, Instant::now()));
                backoff.reset();
                self.agent.set_registration(status.clone());
                WATCH_EVERY
            }
            Err(failure) => {
                let (state, reason) = failure.state();
                let delay = backoff.fail();
                if status.reason.as_deref() != Some(reason) {
                    log::warn!(
                        "keel-agent: registration with {url}: {reason}; retrying (every {} s at most)",
                        RETRY_MAX.as_secs()
                    );
                }
                status.state = state;
                status.reason = Some(reason.to_string());
                self.agent.set_registration(status.clone());
                delay
            }
        }
    }

    /// Registers, and keeps the registration current, until `wait` (given how long to wait
    /// before the next round) says to stop.
    pub fn run(&self, mut wait: impl FnMut(Duration) -> bool) {
        let mut status = self.status();
        self.agent.set_registration(status.clone());
        let mut announced = None;
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let delay = self.step(&mut announced, &mut backoff, &mut status);
            if !wait(delay) {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    const FP: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn manager_urls() {
        let ok: [(&str, &str, u16, &str); 6] = [
            ("https://10.0.2.2:8444", "10.0.2.2", 8444, "/v1/register"),
            (
                "https://manager.example",
                "manager.example",
                443,
                "/v1/register",
            ),
            (
                "https://m.example/keel/",
                "m.example",
                443,
                "/keel/v1/register",
            ),
            (
                "https://[fd00::1]:9000/x",
                "fd00::1",
                9000,
                "/x/v1/register",
            ),
            ("https://[fd00::1]", "fd00::1", 443, "/v1/register"),
            ("https://m:1/a/b", "m", 1, "/a/b/v1/register"),
        ];
        for (text, host, port, path) in ok {
            let url: ManagerUrl = text.parse().unwrap();
            assert_eq!((url.host.as_str(), url.port), (host, port), "{text}");
            assert_eq!(url.register_path(), path, "{text}");
            assert_eq!(url.as_str(), text);
            assert!(url.server_name().is_some(), "{text}");
        }
        for (text, endpoint) in [
            ("https://10.0.2.2:8444/x", "10.0.2.2:8444"),
            ("https://manager.example", "manager.example:443"),
            ("https://[fd00::1]:9000", "[fd00::1]:9000"),
        ] {
            assert_eq!(text.parse::<ManagerUrl>().unwrap().endpoint(), endpoint);
        }
        let bad = [
            "",
            "http://10.0.2.2",
            "https://",
            "https://:8443",
            "https://m:0",
            "https://m:99999",
            "https://m:x",
            "https://[fd00::1",
            "https://[nope]:1",
            "https://bad host",
            "https://m/a?b",
            "https://user@m",
            "ftp://m",
        ];
        for text in bad {
            assert_eq!(
                text.parse::<ManagerUrl>(),
                Err(SettingsError::Url(text.into())),
                "{text}"
            );
        }
    }

    /// `keel.manager=`, `keel.manager_ca=`, `keel.join_token=`, and whether registration starts.
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Result<bool, SettingsError>,
    );

    #[test]
    fn settings_from_params() {
        let m = Some("https://10.0.2.2:8444");
        let cases: [Case; 7] = [
            (None, None, None, Ok(false)),
            (m, Some(FP), None, Ok(true)),
            (m, Some(FP), Some("j"), Ok(true)),
            (m, None, Some("j"), Err(SettingsError::NoPin)),
            (
                m,
                Some("sha256:00"),
                None,
                Err(SettingsError::Pin("sha256:00".into())),
            ),
            (None, Some(FP), None, Err(SettingsError::NoManager)),
            (None, None, Some("j"), Err(SettingsError::NoManager)),
        ];
        for (manager, ca, join, want) in cases {
            let got = Settings::from_params(manager, ca, join).map(|s| s.is_some());
            assert_eq!(got, want, "{manager:?} {ca:?} {join:?}");
        }
        let s = Settings::from_params(m, Some(FP), Some("j"))
            .unwrap()
            .unwrap();
        assert_eq!(s.manager_ca.to_string(), FP);
        assert_eq!(s.join_token.as_deref(), Some("j"));
    }

    #[test]
    fn host_id_is_made_once_and_checked() {
        let dir = TestDir::new("register-id");
        let id = load_or_create_host_id(dir.path()).unwrap();
        assert!(is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert_eq!(load_or_create_host_id(dir.path()).unwrap(), id);
        let other = TestDir::new("register-id-2");
        assert_ne!(load_or_create_host_id(other.path()).unwrap(), id);
        std::fs::write(dir.path().join(HOST_ID_FILE), "junk\n").unwrap();
        let err = load_or_create_host_id(dir.path()).unwrap_err();
        assert!(
            matches!(err, HostIdError::Bad(_, ref s) if s == "junk"),
            "{err}"
        );
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn announceable_addresses() {
        let cases = [
            ("10.0.2.15", true),
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("0.0.0.0", false),
            ("fd00::5", true),
            ("fe80::1", false),
            ("::1", false),
        ];
        for (text, want) in cases {
            assert_eq!(announceable(text.parse().unwrap()), want, "{text}");
        }
    }

    #[test]
    fn failures_are_sorted() {
        let addr: SocketAddr = "10.0.2.2:8444".parse().unwrap();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let mismatch = keel_trust::ca_pin::CaPinMismatch {
            expected: FP.parse().unwrap(),
            presented: vec![],
        };
        let pin = keel_trust::tls::refuse(mismatch);
        let status = |status| ClientError::Status {
            status,
            message: "no".into(),
        };
        let cases: Vec<(ClientError, bool, &str)> = vec![
            (
                ClientError::Connect(addr, refused),
                false,
                "manager unreachable",
            ),
            (
                ClientError::Tls(addr, pin),
                true,
                "does not hold the pinned CA",
            ),
            (
                ClientError::Tls(
                    addr,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
                ),
                true,
                "nothing was sent",
            ),
            (
                ClientError::Tls(addr, rustls::Error::DecryptError),
                false,
                "TLS with",
            ),
            (status(403), true, "refused the registration (403): no"),
            (status(503), false, "manager unavailable"),
        ];
        for (err, refused, want) in cases {
            let got = classify("https://m", &err);
            let (is_refused, reason) = match &got {
                Failure::Refused(r) => (true, r),
                Failure::Unreachable(r) => (false, r),
            };
            assert_eq!(is_refused, refused, "{got:?}");
            assert!(reason.contains(want), "{got:?}");
        }
    }
}
