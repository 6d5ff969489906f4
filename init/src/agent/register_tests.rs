//! The registrar against a manager endpoint in the same process, over real TLS on loopback:
//! registration, the CA pin (nothing sent to a server outside it), the name check, back-off while
//! the manager is down, and announcing again when the addresses change. The OpenAPI document's
//! registration schemas are checked against the wire types.

#![allow(clippy::unwrap_used)]

use super::api::{
    self, ManagerVerdict, RegistrationRequest, RegistrationResponse, RegistrationState,
    RegistrationStatus,
};
use super::atomic::testdir::TestDir;
use super::backoff::Backoff;
use super::ca::{ManagerCa, Validity};
use super::ca_pin::manager_server_config;
use super::clock::ManualClock;
use super::fingerprint::Fingerprint;
use super::http::{self, Limits, Response};
use super::register::{Registrar, Settings, RETRY_FIRST, RETRY_MAX, WATCH_EVERY};
use super::server::{Agent, AgentConfig, OPENAPI_JSON};
use super::tls::parse_cert_pem;
use rustls::{ServerConnection, StreamOwned};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const TOKEN: &str = "preset-token-0123456789";

type Received = Arc<Mutex<Vec<RegistrationRequest>>>;

/// A manager endpoint with a server certificate from `ca` for `names`, recording what arrives.
fn manager(ca: &ManagerCa, names: &[&str]) -> (SocketAddr, Received) {
    let validity = Validity::days_from(SystemTime::now(), 30);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (mut chain, key) = ca
        .issue_server_cert(&names, validity)
        .unwrap()
        .tls_auth()
        .unwrap();
    chain.push(parse_cert_pem("ca", &ca.cert_pem()).unwrap());
    let config = manager_server_config(chain, key).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let mut tls = StreamOwned::new(ServerConnection::new(config.clone()).unwrap(), tcp);
            let _ =
                http::serve_one(&mut tls, &Limits::default(), |_, request| match request
                    .json::<RegistrationRequest>(
                ) {
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
                });
            tls.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut tls);
        }
    });
    (addr, received)
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
        host_id: "00000000-0000-4000-8000-000000000001".into(),
        hostname: Some("node-1".into()),
        api_port: 8443,
        agent: Arc::clone(agent),
        addresses: || vec![IpAddr::from([10, 0, 2, 15])],
        log: |_| {},
    }
}

struct Run {
    announced: Option<(Vec<IpAddr>, Option<String>)>,
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

#[test]
fn registers_with_the_pinned_manager_and_announces_changes() {
    let dir = TestDir::new("register-ok");
    let agent = agent(&dir);
    let ca = ca();
    let (addr, received) = manager(&ca, &["127.0.0.1"]);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let mut r = registrar(&agent, &url, &pin_of(&ca), Some("join-token"));
    let mut run = Run::new();
    assert_eq!(run.step(&r), WATCH_EVERY);
    let status = agent.registration();
    assert_eq!(status.state, RegistrationState::Registered, "{status:?}");
    assert_eq!(status.verdict, Some(ManagerVerdict::Pending));
    assert_eq!(status.reason.as_deref(), Some("waiting for approval"));
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
    // Nothing changed: nothing is sent.
    run.step(&r);
    assert_eq!(received.lock().unwrap().len(), 1);
    // A new address is announced.
    r.addresses = || vec![IpAddr::from([10, 0, 2, 16])];
    run.step(&r);
    let got = received.lock().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].addresses, vec![IpAddr::from([10, 0, 2, 16])]);
    assert_eq!(run.status.attempts, 2);
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
