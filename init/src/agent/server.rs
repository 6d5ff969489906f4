//! The agent's HTTPS service: the adoption state machine behind the API routes, persisted in the
//! state directory, served over TLS with a thread per connection.
//!
//! Authorisation is by TLS client certificate: once adopted, the TLS layer verifies any client
//! certificate against the pinned manager CA, and the routes for `Access::Manager` answer only
//! connections that presented one (verified under the CA still in force).

use super::adoption::{AdoptError, Adopted, Adoption, AdoptionRecord};
use super::api::StoreKind;
use super::api::{self, AdoptionPhase};
use super::clock::Clock;
use super::hostinfo::{self, Sampler};
use super::http::server::{serve_tcp, Guarded, Pool, PoolLimits, Protection, Slot};
use super::http::{self, Limits, Request, Response, Route};
use super::identity::{HostIdentity, IdentityError};
use super::images::{Store, StoreError};
use super::ratelimit::RateLimiter;
use super::vms::{VmError, VmPaths, Vms};
use crate::jail::Jailer;
use crate::sys::atomic::{remove_durable, write_atomic, AtomicError};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use keel_trust::tls::{self, TlsError};
use keel_trust::token::{Secret, Token, TokenError};
use rustls::pki_types::CertificateDer;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[path = "handlers.rs"]
mod handlers;
#[path = "host_logs.rs"]
mod host_logs;
#[path = "host_network.rs"]
mod host_network;
pub use handlers::OPENAPI_JSON;

/// The adoption record in the state directory.
pub const ADOPTION_FILE: &str = "adoption.json";

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Holds the host key, its self-signed certificate and the adoption record.
    pub state_dir: PathBuf,
    /// Host names and addresses, for the certificates.
    pub names: Vec<String>,
    /// `keel.adopt_token=`, used instead of a random token at start.
    pub preset_token: Option<String>,
    /// How long an adoption token stays valid (`None`: until used).
    pub token_ttl: Option<Duration>,
    /// How long a manager has between begin and completion.
    pub session_ttl: Duration,
    pub http: Limits,
    /// From accept to the end of the request head, TLS handshake included: a slow client is
    /// cut off after this, however it trickles its bytes.
    pub head_timeout: Duration,
    /// Read and write timeout of a connection after its head, so a stalled client cannot hold a
    /// thread.
    pub io_timeout: Duration,
    /// Least average upload rate (bytes per second over 30 s) before an upload is cut.
    pub min_body_rate: u64,
    /// Connections not (yet) authenticated as the manager's, served at once: when they are
    /// all taken, the oldest gives way to a new one.
    pub max_connections: usize,
    /// Of those, from one peer address.
    pub max_per_peer: usize,
    /// Connections authenticated by the manager's client certificate, served at once, in slots
    /// of their own that other peers cannot take.
    pub max_manager_connections: usize,
    /// VM definitions (`<state_dir>/vms` by default).
    pub vm_defs: PathBuf,
    /// Per-VM runtime directories (control and console sockets, logs).
    pub run_dir: PathBuf,
    /// The image store's directory and what backs it.
    pub data_dir: PathBuf,
    pub store_kind: StoreKind,
    /// The keel-vmm binary.
    pub vmm: PathBuf,
    /// Where keel-vmm jails go; `None` runs it unjailed (in-process tests only).
    pub jail: Option<Jailer>,
    /// The process to signal for host reboot and power-off (PID 1); `None` refuses them.
    pub power_pid: Option<i32>,
}

impl AgentConfig {
    /// Defaults: tokens for 24 h, sessions for 5 min, 10 s for handshake and head, 10 s I/O
    /// timeout, 1 KiB/s uploads, 32 unauthenticated connections (8 per peer), 32 manager
    /// connections.
    pub fn new(state_dir: PathBuf, names: Vec<String>) -> Self {
        Self {
            names,
            preset_token: None,
            token_ttl: Some(Duration::from_secs(24 * 3600)),
            session_ttl: Duration::from_secs(300),
            http: Limits::default(),
            head_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            max_connections: 32,
            max_per_peer: 8,
            max_manager_connections: 32,
            vm_defs: state_dir.join("vms"),
            run_dir: state_dir.join("run"),
            data_dir: state_dir.join("data"),
            store_kind: StoreKind::Ram,
            vmm: PathBuf::from("/usr/bin/keel-vmm"),
            jail: None,
            power_pid: None,
            state_dir,
        }
    }
}

/// Why the agent could not start or change state.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// Cannot create or read {0}: {1}
    #[error("Cannot create or read {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error(transparent)]
    Vms(#[from] VmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The adoption record {0} is invalid ({1}); reset the adoption from the console
    #[error("The adoption record {0} is invalid ({1}); reset the adoption from the console")]
    BadRecord(PathBuf, String),
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: IpAddr,
    /// Presented a client certificate that the current manager CA verified.
    pub manager: bool,
}

struct State {
    adoption: Adoption,
    limiter: RateLimiter,
}

/// The TLS configuration in force; `generation` changes with every swap, so a connection
/// verified under a previous manager CA is not taken for the current manager.
#[derive(Clone)]
struct Tls {
    generation: u64,
    config: Arc<ServerConfig>,
}

/// The host agent.
pub struct Agent {
    config: AgentConfig,
    identity: HostIdentity,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    tls: RwLock<Tls>,
    vms: Arc<Vms>,
    store: Arc<Store>,
    sampler: Mutex<Sampler>,
    registration: RwLock<api::RegistrationStatus>,
}

type Handler = fn(&Agent, &Request) -> Response;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Anyone,
    /// Anyone, within the failure rate limit: the route checks a secret.
    RateLimited,
    /// Only a client with a certificate from the current manager CA.
    Manager,
}

const fn endpoint(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: Handler,
) -> Route<(Access, Handler)> {
    Route {
        method,
        path,
        handler: (access, handler),
    }
}

const ROUTES: &[Route<(Access, Handler)>] = &[
    endpoint("GET", api::HEALTH, Access::Anyone, Agent::health),
    endpoint(
        "GET",
        api::REGISTRATION,
        Access::Anyone,
        Agent::registration_route,
    ),
    endpoint("POST", api::ADOPT, Access::RateLimited, Agent::adopt),
    endpoint(
        "POST",
        api::ADOPT_COMPLETE,
        Access::RateLimited,
        Agent::complete,
    ),
    endpoint("POST", api::RELEASE, Access::Manager, Agent::release),
    endpoint("GET", api::HOST, Access::Manager, Agent::host),
    endpoint("GET", api::HOST_STATS, Access::Manager, Agent::host_stats),
    endpoint(
        "POST",
        api::HOST_REBOOT,
        Access::Manager,
        Agent::host_reboot,
    ),
    endpoint(
        "POST",
        api::HOST_POWEROFF,
        Access::Manager,
        Agent::host_poweroff,
    ),
    endpoint("GET", api::HOST_STATE, Access::Manager, Agent::host_state),
    endpoint(
        "POST",
        api::HOST_STATE,
        Access::Manager,
        Agent::host_state_create,
    ),
    endpoint(
        "GET",
        api::HOST_FIREWALL,
        Access::Manager,
        Agent::host_firewall,
    ),
    endpoint(
        "GET",
        keel_api::logs::HOST_LOGS,
        Access::Manager,
        Agent::host_logs,
    ),
    endpoint(
        "GET",
        api::HOST_NETWORK,
        Access::Manager,
        Agent::network_get,
    ),
    endpoint(
        "POST",
        api::HOST_NETWORK,
        Access::Manager,
        Agent::network_apply,
    ),
    endpoint(
        "POST",
        api::HOST_NETWORK_PREVIEW,
        Access::Manager,
        Agent::network_preview,
    ),
    endpoint(
        "POST",
        api::HOST_NETWORK_CONFIRM,
        Access::Manager,
        Agent::network_confirm,
    ),
    endpoint("GET", api::METRICS, Access::Manager, Agent::metrics),
    endpoint("GET", api::OPENAPI, Access::Manager, Agent::openapi),
    endpoint("GET", api::VMS, Access::Manager, Agent::vm_list),
    endpoint("POST", api::VMS, Access::Manager, Agent::vm_define),
    endpoint("GET", api::VM, Access::Manager, Agent::vm_get),
    endpoint("DELETE", api::VM, Access::Manager, Agent::vm_delete),
    endpoint("POST", api::VM_START, Access::Manager, Agent::vm_start),
    endpoint(
        "POST",
        api::VM_SHUTDOWN,
        Access::Manager,
        Agent::vm_shutdown,
    ),
    endpoint(
        "POST",
        api::VM_POWEROFF,
        Access::Manager,
        Agent::vm_poweroff,
    ),
    endpoint("POST", api::VM_PAUSE, Access::Manager, Agent::vm_pause),
    endpoint("POST", api::VM_RESUME, Access::Manager, Agent::vm_resume),
    endpoint("GET", api::VM_CONSOLE, Access::Manager, Agent::vm_console),
    endpoint("GET", api::IMAGES, Access::Manager, Agent::image_list),
    endpoint("PUT", api::IMAGE, Access::Manager, Agent::image_upload),
    endpoint("DELETE", api::IMAGE, Access::Manager, Agent::image_delete),
];

/// The routes the API serves, as (method, path pattern, needs the manager's certificate): for
/// the OpenAPI and authorisation checks.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str, bool)> {
    ROUTES
        .iter()
        .map(|r| (r.method, r.path, r.handler.0 == Access::Manager))
}

fn adopt_error(e: &AdoptError) -> Response {
    let status = match e {
        AdoptError::Token(_) | AdoptError::BadSession | AdoptError::SessionExpired(_) => 401,
        AdoptError::AlreadyAdopted | AdoptError::NotAdopting => 409,
        AdoptError::Certificate(_)
        | AdoptError::Key(_)
        | AdoptError::WrongKey { .. }
        | AdoptError::ChainTooLong(_) => 400,
    };
    Response::error(status, &e.to_string())
}

fn internal(e: &dyn std::error::Error) -> Response {
    Response::error(500, &e.to_string())
}

impl Agent {
    /// Loads (or makes) the host identity and the adoption state from the state directory.
    pub fn open(config: AgentConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, AgentError> {
        let dir = &config.state_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AgentError::Read(dir.clone(), e))?;
        let identity = HostIdentity::load_or_create(dir, &config.names)?;
        let record_path = dir.join(ADOPTION_FILE);
        let adoption = match std::fs::read(&record_path) {
            Ok(bytes) => {
                let bad = |e: String| AgentError::BadRecord(record_path.clone(), e);
                let record: AdoptionRecord =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                let adopted = Adopted::from_record(record, identity.fingerprint(), clock.wall())
                    .map_err(|e| bad(e.to_string()))?;
                Adoption::Adopted(adopted)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = match &config.preset_token {
                    Some(text) => Secret::preset(text)?,
                    None => Secret::random()?,
                };
                Adoption::NotAdopted {
                    token: Token::new(secret, clock.now(), config.token_ttl),
                }
            }
            Err(e) => return Err(AgentError::Read(record_path, e)),
        };
        let tls = Tls {
            generation: 0,
            config: Self::tls_for(&identity, &adoption)?,
        };
        let store = Arc::new(Store::open(config.data_dir.clone(), config.store_kind)?);
        let paths = VmPaths {
            vmm: config.vmm.clone(),
            defs: config.vm_defs.clone(),
            run: config.run_dir.clone(),
            jail: config.jail.clone(),
        };
        let vms = Vms::open(paths, Arc::clone(&store))?;
        Ok(Arc::new(Self {
            vms,
            store,
            sampler: Mutex::new(Sampler::default()),
            registration: RwLock::new(api::RegistrationStatus::default()),
            config,
            identity,
            clock,
            state: Mutex::new(State {
                adoption,
                limiter: RateLimiter::default(),
            }),
            tls: RwLock::new(tls),
        }))
    }

    fn tls_for(
        identity: &HostIdentity,
        adoption: &Adoption,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        match adoption.adopted() {
            Some(a) => adopted_server_config(identity, a.chain.clone(), &a.manager_ca),
            None => unadopted_server_config(identity),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave State half-updated: every change is one assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current_tls(&self) -> Tls {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn swap_tls(&self, config: Arc<ServerConfig>) {
        let mut tls = self.tls.write().unwrap_or_else(|p| p.into_inner());
        tls.generation += 1;
        tls.config = config;
    }

    /// Stops the running VMs (host shutdown); see `Vms::stop_all`.
    pub fn stop_vms(&self, grace: Duration) -> usize {
        self.vms.stop_all(grace)
    }

    /// The host key fingerprint, for the console.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    pub fn phase(&self) -> AdoptionPhase {
        self.state().adoption.phase()
    }

    /// The adoption token to show on the console and announce to the manager, while the host
    /// can be adopted. An expired one is replaced (and the new one logged) first: a host that
    /// waits days for approval would otherwise announce a token nobody can use, while the
    /// registrar announces a changed token again on its own.
    pub fn token(&self) -> Option<String> {
        let mut state = self.state();
        let now = self.clock.now();
        let expired = match &state.adoption {
            Adoption::NotAdopted { token } => token.expired(now),
            _ => false,
        };
        if expired {
            if let Ok(secret) = Secret::random() {
                let token = Token::new(secret, now, self.config.token_ttl);
                log::info!(
                    "keel-agent: the adoption token expired; the new one is {}",
                    token.secret().expose()
                );
                state.adoption.release(token);
            }
        }
        state
            .adoption
            .token()
            .map(|t| t.secret().expose().to_string())
    }

    /// The key fingerprint of the manager's CA, once adopted: how the console names the manager.
    pub fn manager_ca(&self) -> Option<Fingerprint> {
        let state = self.state();
        let adopted = state.adoption.adopted()?;
        Fingerprint::of_cert(&adopted.manager_ca).ok()
    }

    /// The VMs and their states, for the console.
    pub fn vm_statuses(&self) -> Vec<api::VmStatus> {
        self.vms.list()
    }

    /// Forgets the manager (or the pending adoption) with a new random token: the console's
    /// reset, and the manager's release.
    pub fn reset(&self) -> Result<(), AgentError> {
        let mut state = self.state();
        self.forget(&mut state)
    }

    fn forget(&self, state: &mut State) -> Result<(), AgentError> {
        let token = Token::new(Secret::random()?, self.clock.now(), self.config.token_ttl);
        let tls = unadopted_server_config(&self.identity)?;
        remove_durable(&self.config.state_dir.join(ADOPTION_FILE))?;
        state.adoption.release(token);
        self.swap_tls(tls);
        Ok(())
    }

    /// Answers one request from `peer`.
    pub fn handle(&self, request: &Request, peer: &Peer) -> Response {
        let (access, handler) = match http::route(ROUTES, request) {
            Ok(found) => *found,
            Err(response) => return response,
        };
        match access {
            Access::Anyone => handler(self, request),
            Access::RateLimited => self.limited(request, peer.addr, handler),
            Access::Manager if peer.manager => handler(self, request),
            Access::Manager => Self::needs_manager(),
        }
    }

    /// Runs an endpoint that checks a secret, within the failure rate limit of `addr`.
    fn limited(&self, request: &Request, addr: IpAddr, handler: Handler) -> Response {
        let now = self.clock.now();
        if let Err(limited) = self.state().limiter.check(addr, now) {
            let secs = limited.retry_after.as_secs().max(1).to_string();
            return Response::error(429, &limited.to_string()).with_header("Retry-After", &secs);
        }
        let response = handler(self, request);
        if response.status == 401 {
            self.state().limiter.record_failure(addr, now);
        }
        response
    }

    /// Where the host is in registering with its manager (`register`), for the API and the
    /// console. Adoption, however it happened, is reported as such.
    pub fn registration(&self) -> api::RegistrationStatus {
        let mut status = self
            .registration
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if status.state != api::RegistrationState::Disabled
            && self.phase() == AdoptionPhase::Adopted
        {
            status.state = api::RegistrationState::Adopted;
        }
        status
    }

    /// Records the registrar's progress.
    pub fn set_registration(&self, status: api::RegistrationStatus) {
        *self.registration.write().unwrap_or_else(|p| p.into_inner()) = status;
    }

    fn registration_route(&self, _: &Request) -> Response {
        Response::json(200, &self.registration())
    }

    fn health(&self, _: &Request) -> Response {
        let health = api::HealthResponse {
            status: "ok".into(),
            adoption: self.phase(),
        };
        Response::json(200, &health)
    }

    fn adopt(&self, request: &Request) -> Response {
        let body: api::AdoptRequest = match request.json() {
            Ok(body) => body,
            Err(response) => return response,
        };
        let csr_pem = match self.identity.csr_pem(&self.config.names) {
            Ok(csr) => csr,
            Err(e) => return internal(&e),
        };
        let session = match Secret::random() {
            Ok(s) => s,
            Err(e) => return internal(&e),
        };
        let session_id = session.expose().to_string();
        let now = self.clock.now();
        let ttl = self.config.session_ttl;
        if let Err(e) =
            self.state()
                .adoption
                .begin(&body.token, &body.manager_ca_pem, session, now, ttl)
        {
            return adopt_error(&e);
        }
        let answer = api::AdoptResponse {
            session_id,
            csr_pem,
            fingerprint: self.fingerprint(),
        };
        Response::json(200, &answer)
    }

    fn complete(&self, request: &Request) -> Response {
        let body: api::CompleteRequest = match request.json() {
            Ok(body) => body,
            Err(response) => return response,
        };
        let mut state = self.state();
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let adopted = match state
            .adoption
            .verify_completion(&body, self.fingerprint(), now, wall)
        {
            Ok(adopted) => adopted,
            Err(e) => return adopt_error(&e),
        };
        let tls =
            match adopted_server_config(&self.identity, adopted.chain.clone(), &adopted.manager_ca)
            {
                Ok(tls) => tls,
                Err(e) => return Response::error(400, &e.to_string()),
            };
        let record = match serde_json::to_vec_pretty(&adopted.record) {
            Ok(json) => json,
            Err(e) => return internal(&e),
        };
        let path = self.config.state_dir.join(ADOPTION_FILE);
        if let Err(e) = write_atomic(&path, &record, 0o600) {
            return internal(&e);
        }
        state.adoption.commit(adopted);
        self.swap_tls(tls);
        Response::json(
            200,
            &api::CompleteResponse {
                fingerprint: self.fingerprint(),
            },
        )
    }

    fn release(&self, _: &Request) -> Response {
        let mut state = self.state();
        match self.forget(&mut state) {
            Ok(()) => Response::json(
                200,
                &api::ReleaseResponse {
                    adoption: state.adoption.phase(),
                },
            ),
            Err(e) => internal(&e),
        }
    }

    fn host(&self, _: &Request) -> Response {
        let info = api::HostInfo {
            fingerprint: self.fingerprint(),
            names: self.config.names.clone(),
            capabilities: hostinfo::capabilities(&hostinfo::vmm_version(&self.config.vmm)),
            hardware: hostinfo::hardware(),
        };
        Response::json(200, &info)
    }

    /// How connections are protected from slow clients.
    fn protection(&self) -> Protection {
        Protection {
            head_timeout: self.config.head_timeout,
            io_timeout: self.config.io_timeout,
            min_body_rate: self.config.min_body_rate,
            ..Protection::default()
        }
    }

    /// Serves one TLS connection: one request, one response (or a stream). The handshake and
    /// the head run under the head deadline; a connection whose client certificate verified
    /// against the manager CA moves to the manager's slots once the handshake is done.
    pub fn serve_connection(&self, tcp: TcpStream, slot: &mut Slot) {
        let Ok(addr) = tcp.peer_addr().map(|a| a.ip()) else {
            return;
        };
        let Ok(guarded) = Guarded::new(tcp, self.protection()) else {
            return;
        };
        let Tls { generation, config } = self.current_tls();
        let Ok(conn) = ServerConnection::new(config) else {
            return;
        };
        let mut stream = StreamOwned::new(conn, guarded);
        while stream.conn.is_handshaking() {
            // Handshake failures and clients too slow for the deadline end here.
            if stream.conn.complete_io(&mut stream.sock).is_err() {
                return;
            }
        }
        if stream.conn.peer_certificates().is_some() && self.current_tls().generation == generation
        {
            slot.authenticate();
        }
        let served = self.serve_stream(&mut stream, addr, generation);
        // Clients that went away end here; they get nothing more.
        if served.is_ok() {
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    }

    /// Serves `listener` on a thread until the returned handle is stopped or dropped.
    pub fn spawn(self: &Arc<Self>, listener: TcpListener) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = Arc::clone(self);
        let stopping = Arc::clone(&stop);
        let pool = Pool::new(PoolLimits {
            pending: self.config.max_connections,
            per_peer: self.config.max_per_peer,
            authenticated: self.config.max_manager_connections,
        });
        let thread = thread::Builder::new()
            .name("keel-agent".into())
            .spawn(move || {
                let serve = Arc::new(move |tcp, mut slot: Slot| {
                    agent.serve_connection(tcp, &mut slot);
                });
                serve_tcp(&listener, &pool, &stopping, "keel-agent-conn", serve);
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// A running agent listener.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    /// Stops accepting: raises the flag, then wakes the blocked accept with a connection of its
    /// own. Connections being served finish on their own threads.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The host's TLS configuration before adoption: its self-signed certificate.
fn unadopted_server_config(identity: &HostIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    tls::server_config(
        vec![identity.self_signed_cert().clone()],
        identity.private_key_der(),
    )
}

/// The host's TLS configuration after adoption: the manager-signed `chain`, and client
/// certificates from the manager CA `ca`.
fn adopted_server_config(
    identity: &HostIdentity,
    chain: Vec<CertificateDer<'static>>,
    ca: &CertificateDer<'_>,
) -> Result<Arc<ServerConfig>, TlsError> {
    tls::adopted_server_config(chain, identity.private_key_der(), ca)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Routing and authorisation without TLS; the TLS paths are in `e2e_tests`.

    use super::super::clock::ManualClock;
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    fn agent(dir: &TestDir) -> Arc<Agent> {
        let mut config = AgentConfig::new(dir.path().join("state"), vec!["127.0.0.1".into()]);
        config.preset_token = Some("preset-token-0123456789".into());
        Agent::open(config, Arc::new(ManualClock::new())).unwrap()
    }

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn route_table_and_authorisation() {
        let dir = TestDir::new("server-routes");
        let agent = agent(&dir);
        let anyone = Peer {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            manager: false,
        };
        let manager = Peer {
            manager: true,
            ..anyone
        };
        let cases = [
            ("GET", api::HEALTH, "", anyone, 200),
            ("POST", api::HEALTH, "", anyone, 405),
            ("GET", "/nope", "", anyone, 404),
            ("GET", api::HOST, "", anyone, 403),
            ("GET", api::HOST, "", manager, 200),
            ("POST", api::RELEASE, "", anyone, 403),
            ("POST", api::ADOPT, "{", anyone, 400),
            ("POST", api::ADOPT, r#"{"token":"x"}"#, anyone, 400),
            (
                "POST",
                api::ADOPT,
                r#"{"token":"x","manager_ca_pem":""}"#,
                anyone,
                401,
            ),
            (
                "POST",
                api::ADOPT_COMPLETE,
                r#"{"session_id":"s","certificate_pem":""}"#,
                anyone,
                409,
            ),
        ];
        for (method, path, body, peer, want) in cases {
            let got = agent.handle(&request(method, path, body), &peer);
            assert_eq!(
                got.status,
                want,
                "{method} {path} {body}: {:?}",
                String::from_utf8_lossy(&got.body)
            );
            let json: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            assert_eq!(json.get("error").is_some(), want != 200, "{json}");
        }
    }

    #[test]
    fn preset_token_is_used_and_validated() {
        let dir = TestDir::new("server-preset");
        assert_eq!(
            agent(&dir).token().as_deref(),
            Some("preset-token-0123456789")
        );
        let mut config = AgentConfig::new(dir.path().join("other"), vec![]);
        config.preset_token = Some("has spaces in it, too".into());
        let err = Agent::open(config, Arc::new(ManualClock::new()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("' ' at position 3"), "{err}");
    }

    #[test]
    fn a_corrupt_record_stops_the_agent_with_a_clear_error() {
        let dir = TestDir::new("server-corrupt");
        let state = dir.path().join("state");
        drop(agent(&dir));
        std::fs::write(state.join(ADOPTION_FILE), "{}").unwrap();
        let config = AgentConfig::new(state, vec![]);
        let err = Agent::open(config, Arc::new(ManualClock::new()))
            .err()
            .unwrap();
        assert!(matches!(err, AgentError::BadRecord(..)), "{err}");
        assert!(err.to_string().contains(ADOPTION_FILE), "{err}");
    }

    #[test]
    fn an_expired_token_is_replaced() {
        let dir = TestDir::new("server-expiry");
        let mut config = AgentConfig::new(dir.path().join("state"), vec!["127.0.0.1".into()]);
        config.token_ttl = Some(Duration::from_secs(60));
        let clock = Arc::new(ManualClock::new());
        let agent = Agent::open(config, clock.clone()).unwrap();
        let first = agent.token().unwrap();
        clock.advance(Duration::from_secs(59));
        assert_eq!(agent.token().unwrap(), first);
        clock.advance(Duration::from_secs(1));
        let second = agent.token().unwrap();
        assert_ne!(second, first);
        assert_eq!(agent.token().unwrap(), second);
        assert_eq!(agent.phase(), AdoptionPhase::NotAdopted);
    }

    #[test]
    fn reset_gives_a_new_token() {
        let dir = TestDir::new("server-reset");
        let agent = agent(&dir);
        let before = agent.token().unwrap();
        agent.reset().unwrap();
        let after = agent.token().unwrap();
        assert_ne!(before, after);
        assert_eq!(agent.phase(), AdoptionPhase::NotAdopted);
    }
}
