//! The registrar against a manager endpoint in the same process, over real TLS on loopback:
//! registration, the CA pin (nothing sent to a server outside it), the name check, back-off while
//! the manager is down, and announcing again when the addresses change. The OpenAPI document's
//! registration schemas are checked against the wire types.

#![allow(clippy::unwrap_used)]

use super::api::{
    self, ManagerVerdict, RegistrationRequest, RegistrationResponse, RegistrationSource,
    RegistrationState, RegistrationStatus,
};
use super::backoff::Backoff;
use super::clock::ManualClock;
use super::http::{self, Limits, Response};
use super::register::{Announced, Registrar, Settings, RETRY_FIRST, RETRY_MAX, WATCH_EVERY};
use super::server::{Agent, AgentConfig, OPENAPI_JSON};
use crate::sys::atomic::testdir::TestDir;
use keel_trust::ca::{ManagerCa, Validity};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use keel_trust::tls::{parse_cert_pem, server_config};
use rustls::{ServerConnection, StreamOwned};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const TOKEN: &str = "preset-token-0123456789";

type Received = Arc<Mutex<Vec<RegistrationRequest>>>;

/// A manager endpoint with a server certificate from `ca` for `names`, recording what arrives.
fn manager(ca: &ManagerCa, names: &[&str]) -> (SocketAddr, Received) {
    manager_answering(ca, names, false)
}

/// As `manager`; with `chunked`, every answer is sent with `Transfer-Encoding: chunked` in
/// small chunks with extensions and a trailer, as a proxy in front of a manager may.
fn manager_answering(ca: &ManagerCa, names: &[&str], chunked: bool) -> (SocketAddr, Received) {
    let validity = Validity::days_from(SystemTime::now(), 30);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (mut chain, key) = ca
        .issue_server_cert(&names, validity)
        .unwrap()
        .tls_auth()
        .unwrap();
    chain.push(parse_cert_pem("ca", &ca.cert_pem()).unwrap());
    let config = server_config(chain, key).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let mut tls = StreamOwned::new(ServerConnection::new(config.clone()).unwrap(), tcp);
            let Ok(request) = http::read_request(&mut tls, &Limits::default()) else {
                continue;
            };
            let response = match request.json::<RegistrationRequest>() {
                Ok(doc) if request.path == api::REGISTER => {
                    log.lock().unwrap().push(doc);
                    let answer = RegistrationResponse {
                        state: ManagerVerdict::Pending,
                        message: "waiting for approval".into(),
                    };
                    Response::json(200, &answer)
                }
                Ok(_) => Response::error(404, "no such route"),
                Err(response) => response,
            };
            if chunked {
                send_chunked(&mut tls, &response);
            } else {
                let _ = http::write_response(&mut tls, &response);
            }
            tls.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut tls);
        }
    });
    (addr, received)
}

/// `response` with its body in chunks of 5 bytes, each with an extension, then a trailer.
fn send_chunked(w: &mut impl std::io::Write, response: &Response) {
    let mut wire = format!(
        "HTTP/1.1 {} OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        response.status
    )
    .into_bytes();
    for piece in response.body.chunks(5) {
        wire.extend_from_slice(format!("{:x};piece=\"yes\"\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nX-Checked: by-a-proxy\r\n\r\n");
    // The client may be gone (a refused pin): nothing to do about it.
    let _ = w.write_all(&wire).and_then(|()| w.flush());
}

fn ca() -> ManagerCa {
    ManagerCa::generate("manager", Validity::days_from(SystemTime::now(), 30)).unwrap()
}

fn pin_of(ca: &ManagerCa) -> String {
    Fingerprint::of_certificate(&parse_cert_pem("ca", &ca.cert_pem()).unwrap()).to_string()
}

fn agent(dir: &TestDir) -> Arc<Agent> {
    let mut config = AgentConfig::new(dir.path().join("state"), vec!["127.0.0.1".into()]);
    config.preset_token = Some(TOKEN.into());
    Agent::open(config, Arc::new(ManualClock::new())).unwrap()
}

fn registrar(agent: &Arc<Agent>, url: &str, pin: &str, join: Option<&str>) -> Registrar {
    Registrar {
        settings: Settings::from_params(Some(url), Some(pin), join)
            .unwrap()
            .unwrap(),
        source: RegistrationSource::CommandLine,
        host_id: "00000000-0000-4000-8000-000000000001".into(),
        hostname: Some("node-1".into()),
        api_port: 8443,
        agent: Arc::clone(agent),
        addresses: || vec![IpAddr::from([10, 0, 2, 15])],
        reannounce: super::register::REANNOUNCE_EVERY,
    }
}

struct Run {
    announced: Option<Announced>,
    backoff: Backoff,
    status: RegistrationStatus,
}

impl Run {
    fn new() -> Self {
        Self {
            announced: None,
            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
            status: RegistrationStatus::default(),
        }
    }

    fn step(&mut self, r: &Registrar) -> std::time::Duration {
        r.step(&mut self.announced, &mut self.backoff, &mut self.status)
    }
}

/// An agent that registered once with a manager (answering chunked or not) and was told to wait.
fn registered_once(tag: &str, chunked: bool) -> (TestDir, Arc<Agent>, Registrar, Run, Received) {
    let dir = TestDir::new(tag);
    let agent = agent(&dir);
    let ca = ca();
    let (addr, received) = manager_answering(&ca, &["127.0.0.1"], chunked);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let r = registrar(&agent, &url, &pin_of(&ca), Some("join-token"));
    let mut run = Run::new();
    assert_eq!(run.step(&r), WATCH_EVERY);
    let status = agent.registration();
    assert_eq!(status.state, RegistrationState::Registered, "{status:?}");
    assert_eq!(status.verdict, Some(ManagerVerdict::Pending));
    assert_eq!(status.reason.as_deref(), Some("waiting for approval"));
    (dir, agent, r, run, received)
}

#[test]
fn registers_with_the_pinned_manager_and_announces_changes() {
    let (_dir, agent, mut r, mut run, received) = registered_once("register-ok", false);
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1);
        let doc = &got[0];
        assert_eq!(doc.fingerprint, agent.fingerprint());
        assert_eq!(doc.adopt_token.as_deref(), Some(TOKEN));
        assert_eq!(doc.join_token.as_deref(), Some("join-token"));
        assert_eq!(doc.host_id, r.host_id);
        assert_eq!(doc.hostname.as_deref(), Some("node-1"));
        assert_eq!(doc.addresses, vec![IpAddr::from([10, 0, 2, 15])]);
        assert_eq!(
            (doc.api_port, doc.keel_version.as_str()),
            (8443, crate::pid1::VERSION)
        );
    }
    // Nothing changed: nothing is sent, until it is time to announce again anyway.
    run.step(&r);
    assert_eq!(received.lock().unwrap().len(), 1);
    r.reannounce = std::time::Duration::ZERO;
    run.step(&r);
    assert_eq!(received.lock().unwrap().len(), 2);
    // A new address is announced.
    r.addresses = || vec![IpAddr::from([10, 0, 2, 16])];
    run.step(&r);
    let got = received.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].addresses, vec![IpAddr::from([10, 0, 2, 16])]);
    assert_eq!(run.status.attempts, 3);
}

#[test]
fn registers_with_a_manager_that_answers_chunked() {
    let (_dir, _agent, _r, _run, received) = registered_once("register-chunked", true);
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[test]
fn a_manager_outside_the_pin_gets_nothing() {
    let dir = TestDir::new("register-pin");
    let agent = agent(&dir);
    let (ca, other) = (ca(), ca());
    let (addr, received) = manager(&ca, &["127.0.0.1"]);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let cases = [
        (pin_of(&other), "does not hold the pinned CA"),
        // The right CA, but the certificate is not for the address the host was given.
        (pin_of(&ca), "not valid for name"),
    ];
    for (pin, want) in cases {
        let wrong_name = pin == pin_of(&ca);
        let url = if wrong_name {
            format!("https://localhost:{}", addr.port())
        } else {
            url.clone()
        };
        let r = registrar(&agent, &url, &pin, Some("join-token"));
        let mut run = Run::new();
        assert_eq!(run.step(&r), RETRY_FIRST);
        let status = agent.registration();
        assert_eq!(status.state, RegistrationState::Error, "{status:?}");
        let reason = status.reason.unwrap_or_default();
        assert!(reason.contains(want), "{reason}");
        assert!(reason.contains("nothing was sent"), "{reason}");
        assert_eq!(received.lock().unwrap().len(), 0);
    }
}

#[test]
fn retries_with_back_off_until_the_manager_answers() {
    let dir = TestDir::new("register-down");
    let agent = agent(&dir);
    let ca = ca();
    // A port that was free a moment ago: the manager is not there yet.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let r = registrar(&agent, &url, &pin_of(&ca), None);
    let mut run = Run::new();
    let delays: Vec<u64> = (0..3).map(|_| run.step(&r).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4]);
    let status = agent.registration();
    assert_eq!(status.state, RegistrationState::Pending, "{status:?}");
    assert!(status
        .reason
        .unwrap_or_default()
        .contains("manager unreachable"));
    // The manager comes up on another port; the host is pointed at it (same registrar state).
    let (addr, received) = manager(&ca, &["127.0.0.1"]);
    let r = registrar(
        &agent,
        &format!("https://127.0.0.1:{}", addr.port()),
        &pin_of(&ca),
        None,
    );
    assert_eq!(run.step(&r), WATCH_EVERY);
    assert_eq!(agent.registration().state, RegistrationState::Registered);
    assert_eq!(received.lock().unwrap()[0].join_token, None);
    assert_eq!(run.status.attempts, 4);
}

/// The property names the OpenAPI document lists for `schema`.
fn documented(schema: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let mut names: Vec<String> = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

fn fields<T: serde::Serialize>(value: &T) -> Vec<String> {
    let mut names: Vec<String> = serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn the_openapi_document_describes_the_registration_messages() {
    let dir = TestDir::new("register-openapi");
    let agent = agent(&dir);
    let r = registrar(&agent, "https://m", &pin_of(&ca()), None);
    let request = r.document(vec![]);
    let response = RegistrationResponse {
        state: ManagerVerdict::Adopted,
        message: String::new(),
    };
    let cases = [
        ("RegistrationRequest", fields(&request)),
        ("RegistrationResponse", fields(&response)),
        ("RegistrationStatus", fields(&RegistrationStatus::default())),
    ];
    for (schema, want) in cases {
        assert_eq!(documented(schema), want, "{schema}");
    }
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let callbacks = doc["paths"][api::REGISTRATION]["get"]["callbacks"]["register"]
        .as_object()
        .unwrap();
    let (url, item) = callbacks.iter().next().unwrap();
    assert!(url.ends_with(api::REGISTER), "{url}");
    let body = &item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/RegistrationRequest");
}

/// Polls the agent's registration until `done` holds (the registrar runs on its own thread).
fn wait_registration(
    agent: &Agent,
    done: impl Fn(&RegistrationStatus) -> bool,
) -> RegistrationStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = agent.registration();
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_console_fetches_the_ca_then_chooses_the_manager_without_a_reboot() {
    use super::console_backend::AgentConsole;
    use super::registration::{CommandLine, ManagerChoice, Registration, SAVED_FILE};
    use crate::localapi::types::ManagerProbe;
    use crate::localapi::{self, ApiError, ConsoleBackend};
    use std::os::unix::fs::PermissionsExt;

    let dir = TestDir::new("register-console");
    let agent = agent(&dir);
    let state_dir = dir.path().join("state");
    let (ca, other) = (ca(), ca());
    let (first, first_got) = manager(&other, &["127.0.0.1"]);
    let (second, second_got) = manager(&ca, &["127.0.0.1"]);
    // The command line names the first manager; the console will move the host to the second.
    let cmdline = CommandLine {
        manager: Some(format!("https://127.0.0.1:{}", first.port())),
        manager_ca: Some(pin_of(&other)),
        join_token: None,
    };
    let addresses = || vec![IpAddr::from([10, 0, 2, 15])];
    let registration = Registration::start(
        Arc::clone(&agent),
        state_dir.clone(),
        &cmdline,
        None,
        8443,
        addresses,
    )
    .unwrap();
    let backend = Arc::new(AgentConsole::new());
    backend.attach(Arc::clone(&agent), Some(registration));
    let socket = dir.path().join("console.sock");
    let listener = localapi::server::bind(&socket).unwrap();
    let serving: Arc<dyn ConsoleBackend> = backend.clone();
    std::thread::spawn(move || localapi::server::serve_on(listener, serving));
    let console = localapi::Client::new(&socket);

    let status = wait_registration(&agent, |s| s.state == RegistrationState::Registered);
    assert_eq!(status.source, Some(RegistrationSource::CommandLine));
    assert_eq!(console.registration().unwrap(), agent.registration());
    assert_eq!(first_got.lock().unwrap().len(), 1);

    // The probe finds the second manager's CA and sends it nothing.
    let url = format!("https://127.0.0.1:{}", second.port());
    let probe = |manager: &str| {
        console.probe_manager(&ManagerProbe {
            manager: manager.into(),
        })
    };
    assert_eq!(probe(&url).unwrap().manager_ca, pin_of(&ca));
    assert!(second_got.lock().unwrap().is_empty());
    fn refused<T: std::fmt::Debug>(e: Result<T, ApiError>, field: &str) {
        match e {
            Err(ApiError::Invalid(errors)) => assert_eq!(errors[0].field, field),
            other => panic!("{other:?}"),
        }
    }
    refused(probe("http://127.0.0.1"), "manager");
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    match probe(&format!("https://127.0.0.1:{}", closed.port())) {
        Err(ApiError::Failed(m)) => assert!(m.contains("manager unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The right CA, but no certificate for the name asked for.
    match probe(&format!("https://localhost:{}", second.port())) {
        Err(ApiError::Failed(m)) => assert!(m.contains("no valid certificate"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Accepting saves the choice (0600: it holds the join token) and switches at once.
    let choice = ManagerChoice {
        manager: url.clone(),
        manager_ca: pin_of(&ca),
        join_token: Some("join-token".into()),
    };
    refused(
        console.choose_manager(&ManagerChoice {
            manager_ca: "sha256:00".into(),
            ..choice.clone()
        }),
        "manager_ca",
    );
    console.choose_manager(&choice).unwrap();
    let status = wait_registration(&agent, |s| {
        s.state == RegistrationState::Registered && s.manager.as_deref() == Some(url.as_str())
    });
    assert_eq!(status.source, Some(RegistrationSource::Console));
    assert_eq!(status.manager_ca, Some(pin_of(&ca)));
    let got = second_got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].join_token.as_deref(), Some("join-token"));
    let saved = state_dir.join(SAVED_FILE);
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: ManagerChoice = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(stored, choice);
    assert_eq!(
        first_got.lock().unwrap().len(),
        1,
        "the first manager hears no more"
    );
    drop(got);

    // Forgetting the console's choice brings the command line's manager back at once.
    console.forget_manager().unwrap();
    assert!(!saved.exists());
    let status = wait_registration(&agent, |s| {
        s.state == RegistrationState::Registered
            && s.source == Some(RegistrationSource::CommandLine)
    });
    assert_eq!(status.manager_ca, Some(pin_of(&other)));
    assert_eq!(first_got.lock().unwrap().len(), 2);
}

#[test]
fn forgetting_the_only_manager_stops_registering() {
    use super::registration::{CommandLine, ManagerChoice, Registration};

    let dir = TestDir::new("register-forget");
    let agent = agent(&dir);
    let ca = ca();
    let (addr, received) = manager(&ca, &["127.0.0.1"]);
    let registration = Registration::start(
        Arc::clone(&agent),
        dir.path().join("state"),
        &CommandLine::default(),
        None,
        8443,
        || vec![IpAddr::from([10, 0, 2, 15])],
    )
    .unwrap();
    wait_registration(&agent, |s| s.state == RegistrationState::Disabled);
    let choice = ManagerChoice {
        manager: format!("https://127.0.0.1:{}", addr.port()),
        manager_ca: pin_of(&ca),
        join_token: None,
    };
    registration.choose(&choice).unwrap();
    wait_registration(&agent, |s| s.state == RegistrationState::Registered);
    registration.forget().unwrap();
    let status = wait_registration(&agent, |s| s.state == RegistrationState::Disabled);
    assert_eq!(status, RegistrationStatus::default());
    assert!(registration.settings().is_none());
    assert_eq!(received.lock().unwrap().len(), 1);
}
