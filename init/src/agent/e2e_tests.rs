//! The agent and a manager in one process, over real TLS on loopback TCP.

#![allow(clippy::unwrap_used)]

use super::api::{self, AdoptionPhase};
use super::clock::ManualClock;
use super::http::{self, Response};
use super::server::{routes, Agent, AgentConfig, Server, OPENAPI_JSON};
use crate::sys::atomic::testdir::TestDir;
use keel_trust::ca::{ClientCert, ManagerCa, Validity};
use keel_trust::client::{ClientError, HostClient};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use keel_trust::tls::provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TOKEN: &str = "preset-token-0123456789";

struct Host {
    _dir: TestDir,
    agent: Arc<Agent>,
    server: Server,
    clock: Arc<ManualClock>,
}

fn start_in(dir: TestDir) -> Host {
    let mut config = AgentConfig::new(dir.path().join("state"), vec!["127.0.0.1".into()]);
    config.preset_token = Some(TOKEN.into());
    config.token_ttl = Some(Duration::from_secs(3600));
    let clock = Arc::new(ManualClock::new());
    let agent = Agent::open(config, clock.clone()).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let server = agent.spawn(listener).unwrap();
    Host {
        _dir: dir,
        agent,
        server,
        clock,
    }
}

fn start(tag: &str) -> Host {
    start_in(TestDir::new(tag))
}

fn manager(name: &str) -> (ManagerCa, ClientCert) {
    let validity = Validity::days_from(SystemTime::now(), 30);
    let ca = ManagerCa::generate(name, validity).unwrap();
    let cert = ca.issue_client_cert("keelctl", validity).unwrap();
    (ca, cert)
}

impl Host {
    fn client(&self, cert: Option<&ClientCert>) -> HostClient {
        HostClient::new(self.server.local_addr(), self.agent.fingerprint(), cert).unwrap()
    }

    fn status(
        &self,
        cert: Option<&ClientCert>,
        method: &str,
        path: &str,
    ) -> Result<u16, ClientError> {
        self.client(cert)
            .request::<()>(method, path, None)
            .map(|r| r.status)
    }

    fn adopt_raw(&self, token: &str, ca: &ManagerCa) -> Response {
        let body = api::AdoptRequest {
            token: token.into(),
            manager_ca_pem: ca.cert_pem(),
        };
        self.client(None)
            .request("POST", api::ADOPT, Some(&body))
            .unwrap()
    }
}

fn status_of(result: Result<api::CompleteResponse, ClientError>) -> u16 {
    match result {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn full_adoption_round_trip() {
    let host = start("e2e-adopt");
    let (ca, cert) = manager("manager");
    let anonymous = host.client(None);
    assert_eq!(
        anonymous.health().unwrap().adoption,
        AdoptionPhase::NotAdopted
    );

    let done = anonymous.adopt(TOKEN, &ca, 30).unwrap();
    assert_eq!(done.fingerprint, host.agent.fingerprint());
    assert_eq!(host.agent.phase(), AdoptionPhase::Adopted);
    assert_eq!(host.agent.token(), None);
    assert_eq!(anonymous.health().unwrap().adoption, AdoptionPhase::Adopted);

    let info: api::HostInfo = host
        .client(Some(&cert))
        .call::<(), _>("GET", api::HOST, None)
        .unwrap();
    assert_eq!(info.fingerprint, host.agent.fingerprint());

    // The host now serves the manager-signed certificate: a client that trusts only the
    // manager CA, checking the name as any TLS client does, gets through.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let (chain, key) = cert.tls_auth().unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let by_ca = HostClient::with_config(
        host.server.local_addr(),
        host.agent.fingerprint(),
        Arc::new(config),
    );
    assert_eq!(by_ca.health().unwrap().adoption, AdoptionPhase::Adopted);

    // And it still is after a restart from the state directory.
    let Host {
        _dir,
        agent,
        server,
        ..
    } = host;
    drop(server);
    drop(agent);
    let again = start_in(_dir);
    assert_eq!(again.agent.phase(), AdoptionPhase::Adopted);
    assert_eq!(again.agent.fingerprint(), done.fingerprint);
    assert_eq!(again.status(Some(&cert), "GET", api::HOST).unwrap(), 200);
    assert_eq!(again.status(None, "GET", api::HOST).unwrap(), 403);
}

#[test]
fn fingerprint_mismatch_is_refused_showing_both() {
    let host = start("e2e-pin");
    let wrong = Fingerprint::of_spki(b"not the host key");
    let client = HostClient::new(host.server.local_addr(), wrong, None).unwrap();
    let err = client.health().unwrap_err();
    let ClientError::Pin(mismatch) = &err else {
        panic!("expected a pin mismatch, got {err:?}");
    };
    assert_eq!(mismatch.expected, wrong);
    assert_eq!(mismatch.actual, host.agent.fingerprint());
    let text = err.to_string();
    assert!(text.contains(&wrong.to_string()), "{text}");
    assert!(
        text.contains(&host.agent.fingerprint().to_string()),
        "{text}"
    );
    // Nothing was adopted through it either.
    let (ca, _) = manager("manager");
    assert!(matches!(
        client.adopt(TOKEN, &ca, 1),
        Err(ClientError::Pin(_))
    ));
    assert_eq!(host.agent.phase(), AdoptionPhase::NotAdopted);
}

#[test]
fn wrong_and_expired_tokens_are_refused_and_rate_limited() {
    let host = start("e2e-token");
    let (ca, _) = manager("manager");
    for _ in 0..5 {
        let r = host.adopt_raw("wrong-token-0123456789", &ca);
        assert_eq!(r.status, 401);
        let body: http::ErrorBody = r.json_body().unwrap();
        assert_eq!(body.error, "The adoption token is wrong");
    }
    // Locked out, even with the right token, until the bucket refills.
    let r = host.adopt_raw(TOKEN, &ca);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("10"));
    host.clock.advance(Duration::from_secs(10));
    assert_eq!(host.adopt_raw("wrong-token-0123456789", &ca).status, 401);
    assert_eq!(host.adopt_raw(TOKEN, &ca).status, 429);

    // Past the token's lifetime the right token is refused as expired.
    host.clock.advance(Duration::from_secs(3600));
    let r = host.adopt_raw(TOKEN, &ca);
    assert_eq!(r.status, 401);
    let body: http::ErrorBody = r.json_body().unwrap();
    assert!(body.error.contains("expired"), "{}", body.error);
    assert_eq!(host.agent.phase(), AdoptionPhase::NotAdopted);
}

#[test]
fn second_adoption_is_refused_until_release() {
    let host = start("e2e-second");
    let (ca, cert) = manager("first");
    let (other_ca, other_cert) = manager("second");
    host.client(None).adopt(TOKEN, &ca, 30).unwrap();

    // The spent token adopts nothing more, for the same manager or another.
    assert_eq!(status_of(host.client(None).adopt(TOKEN, &ca, 30)), 409);
    assert_eq!(
        status_of(host.client(None).adopt(TOKEN, &other_ca, 30)),
        409
    );
    // Only the manager may release.
    assert_eq!(host.status(None, "POST", api::RELEASE).unwrap(), 403);
    assert!(host
        .status(Some(&other_cert), "POST", api::RELEASE)
        .is_err());

    let released: api::ReleaseResponse = host
        .client(Some(&cert))
        .call::<(), _>("POST", api::RELEASE, None)
        .unwrap();
    assert_eq!(released.adoption, AdoptionPhase::NotAdopted);
    assert_eq!(
        host.client(None).health().unwrap().adoption,
        AdoptionPhase::NotAdopted
    );
    // The old manager's certificate opens nothing now.
    assert_eq!(host.status(Some(&cert), "GET", api::HOST).unwrap(), 403);

    // The old token is dead; the new one (from the console) adopts for another manager.
    assert_eq!(
        status_of(host.client(None).adopt(TOKEN, &other_ca, 30)),
        401
    );
    let fresh = host.agent.token().unwrap();
    assert_ne!(fresh, TOKEN);
    host.client(None).adopt(&fresh, &other_ca, 30).unwrap();
    assert_eq!(
        host.status(Some(&other_cert), "GET", api::HOST).unwrap(),
        200
    );
    assert!(host.status(Some(&cert), "GET", api::HOST).is_err());
}

#[test]
fn protected_routes_need_the_managers_certificate() {
    let host = start("e2e-protected");
    let (ca, cert) = manager("manager");
    // Before adoption nobody is the manager.
    assert_eq!(host.status(None, "GET", api::HOST).unwrap(), 403);
    host.client(None).adopt(TOKEN, &ca, 30).unwrap();

    let self_signed = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        ClientCert {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    };
    let (_, foreign) = manager("another manager");

    let protected: Vec<(&str, String)> = routes()
        .filter(|(_, _, manager)| *manager)
        .map(|(method, pattern, _)| (method, concrete(pattern)))
        .collect();
    assert!(protected.len() > 15, "{protected:?}");
    for (method, path) in &protected {
        assert_eq!(
            host.status(None, method, path).unwrap(),
            403,
            "{method} {path}"
        );
        for (name, bad) in [("self-signed", &self_signed), ("other CA", &foreign)] {
            match host.status(Some(bad), method, path) {
                Err(ClientError::Tls(_, e)) => {
                    assert!(e.to_string().contains("alert"), "{name}: {e}");
                }
                other => {
                    panic!("{name} {method} {path}: expected a refused handshake, got {other:?}")
                }
            }
        }
    }
    assert_eq!(host.status(None, "GET", api::HEALTH).unwrap(), 200);
    assert_eq!(host.status(Some(&cert), "GET", api::HOST).unwrap(), 200);
}

#[test]
fn malformed_requests_over_tls_get_json_errors() {
    let host = start("e2e-malformed");
    let client = host.client(None);
    let cases: [(&[u8], u16); 4] = [
        (b"GET /v1/health HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (
            b"POST /v1/adopt HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
            413,
        ),
        (b"GET /v1/nothing HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /v1/health HTTP/1.1\r\n\r\n", 405),
    ];
    for (raw, want) in cases {
        let response = client
            .exchange(|stream| stream.write_all(raw).and_then(|()| stream.flush()))
            .unwrap();
        assert_eq!(response.status, want, "{}", String::from_utf8_lossy(raw));
        let body: http::ErrorBody = response.json_body().unwrap();
        assert!(!body.error.is_empty());
    }
    // A client that connects and says nothing is let go after the I/O timeout, and the agent
    // keeps serving others meanwhile.
    let _idle = std::net::TcpStream::connect(host.server.local_addr()).unwrap();
    assert_eq!(client.health().unwrap().adoption, AdoptionPhase::NotAdopted);
}

/// A route pattern with its `{…}` segments filled in.
fn concrete(pattern: &str) -> String {
    pattern.replace("{name}", "x").replace("{kind}", "kernel")
}

#[test]
fn the_openapi_document_and_the_router_agree() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = routes()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Every route says who may call it, as the router has it.
    for (method, path, manager) in routes() {
        let op = &paths[path][method.to_lowercase()];
        let want = if manager {
            "manager-certificate"
        } else {
            "none"
        };
        assert_eq!(op["x-keel-auth"], want, "{method} {path}");
    }
}

/// A client of an adopted host, as the manager.
fn adopted(tag: &str, vmm: &str) -> (Host, HostClient) {
    let (host, client, _, _) = adopted_with_certs(tag, vmm);
    (host, client)
}

/// As `adopted`, with the manager CA and the client certificate.
fn adopted_with_certs(tag: &str, vmm: &str) -> (Host, HostClient, ManagerCa, ClientCert) {
    adopted_configured(tag, vmm, |_| {})
}

/// As `adopted_with_certs`, with the configuration changed by `tweak` first.
fn adopted_configured(
    tag: &str,
    vmm: &str,
    tweak: impl FnOnce(&mut AgentConfig),
) -> (Host, HostClient, ManagerCa, ClientCert) {
    let dir = TestDir::new(tag);
    let mut config = AgentConfig::new(dir.path().join("state"), vec!["127.0.0.1".into()]);
    config.preset_token = Some(TOKEN.into());
    config.vmm = vmm.into();
    tweak(&mut config);
    let agent = Agent::open(config, Arc::new(ManualClock::new())).unwrap();
    let server = agent
        .spawn(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .unwrap();
    let host = Host {
        _dir: dir,
        agent,
        server,
        clock: Arc::new(ManualClock::new()),
    };
    let (ca, cert) = manager("manager");
    host.client(None).adopt(TOKEN, &ca, 30).unwrap();
    let client = host.client(Some(&cert));
    (host, client, ca, cert)
}

/// Not a test: `make fuzz-api` (tests/fuzz-api.sh) runs it to serve an adopted agent for
/// schemathesis. Writes `url`, `ca.pem`, `client.pem` and `client-key.pem` to `$KEEL_FUZZ_DIR`,
/// then serves until a file `stop` appears there (at most 30 minutes).
#[test]
#[ignore = "serves the API for make fuzz-api"]
fn serve_for_fuzzing() {
    let Some(dir) = std::env::var_os("KEEL_FUZZ_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    let (host, _, ca, cert) = adopted_with_certs("fuzz", "/bin/false");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("client-key.pem"), &cert.key_pem).unwrap();
    let url = format!("https://{}", host.server.local_addr());
    std::fs::write(dir.join("url.tmp"), url).unwrap();
    std::fs::rename(dir.join("url.tmp"), dir.join("url")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    while !dir.join("stop").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn upload(client: &HostClient, path: &str, digest: &str, body: &[u8]) -> Response {
    client
        .exchange(|s| {
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: h\r\n{}: {digest}\r\nContent-Length: {}\r\n\r\n",
                api::SHA256_HEADER,
                body.len()
            );
            s.write_all(head.as_bytes())?;
            s.write_all(body)?;
            s.flush()
        })
        .unwrap()
}

/// Sends each (method, path, body) and checks the status answered.
fn check_statuses(client: &HostClient, cases: Vec<(&str, &str, Option<serde_json::Value>, u16)>) {
    for (method, path, body, want) in cases {
        let got = client.request(method, path, body.as_ref()).unwrap();
        assert_eq!(
            got.status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
}

#[test]
fn images_and_vms_over_tls() {
    // `false` stands in for a keel-vmm that refuses its configuration at once.
    let (_host, client) = adopted("e2e-vms", "/bin/false");
    // Bigger than the in-memory body limit: the upload is streamed.
    let kernel = vec![7u8; 200 * 1024];
    let digest = super::images::hex(&<sha2::Sha256 as sha2::Digest>::digest(&kernel));
    let bad = upload(&client, "/v1/images/kernel/k", &"0".repeat(64), &kernel);
    assert_eq!(bad.status, 400, "{:?}", String::from_utf8_lossy(&bad.body));
    let ok = upload(&client, "/v1/images/kernel/k", &digest, &kernel);
    assert_eq!(ok.status, 200, "{:?}", String::from_utf8_lossy(&ok.body));
    let list: api::ImageList = client.call::<(), _>("GET", api::IMAGES, None).unwrap();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].sha256, digest);
    assert_eq!(list.store, api::StoreKind::Ram);

    let spec = serde_json::json!({"name": "web", "vcpus": 1, "memory_mib": 64, "kernel": "k"});
    let status: api::VmStatus = client.call("POST", api::VMS, Some(&spec)).unwrap();
    assert_eq!(status.state, api::VmState::Stopped);
    // Following a stopped VM's console: its history, chunked, and the end of the body.
    let follow = "/v1/vms/web/console?follow=true";
    let whole = client.request::<()>("GET", follow, None).unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("transfer-encoding"), Some("chunked"));
    let mut streamed = Vec::new();
    client.stream_get(follow, &mut streamed).unwrap();
    assert_eq!(streamed, whole.body);
    let cases: Vec<(&str, &str, Option<serde_json::Value>, u16)> = vec![
        ("POST", "/v1/vms", Some(spec.clone()), 409),
        (
            "POST",
            "/v1/vms",
            Some(serde_json::json!({"name": "x"})),
            400,
        ),
        ("POST", "/v1/vms", Some(serde_json::json!([1])), 400),
        ("GET", "/v1/vms/nope", None, 404),
        ("POST", "/v1/vms/web/pause", None, 409),
        (
            "POST",
            "/v1/vms/web/start",
            Some(serde_json::json!({"x": 1})),
            400,
        ),
        // Accepted at once; the VMM's failure is in the status (below).
        ("POST", "/v1/vms/web/start", None, 202),
        ("DELETE", "/v1/images/kernel/k", None, 409),
        ("DELETE", "/v1/images/kernels/k", None, 400),
        ("GET", "/v1/vms/web/console", None, 200),
        ("GET", "/v1/vms/web/console?follow=null", None, 400),
        ("GET", "/v1/host", None, 200),
        ("GET", "/v1/host/stats", None, 200),
        ("GET", "/v1/metrics", None, 200),
        ("GET", "/v1/openapi", None, 200),
        ("POST", "/v1/host/reboot", None, 409),
    ];
    check_statuses(&client, cases);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let web = loop {
        let web: api::VmStatus = client.call::<(), _>("GET", "/v1/vms/web", None).unwrap();
        if web.state == api::VmState::Stopped || std::time::Instant::now() > deadline {
            break web;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let error = web.error.unwrap_or_default();
    assert!(error.contains("keel-vmm failed"), "{error}");
    let cases: Vec<(&str, &str, Option<serde_json::Value>, u16)> = vec![
        ("POST", "/v1/vms/web/poweroff", None, 409),
        ("DELETE", "/v1/vms/web", None, 200),
        ("DELETE", "/v1/images/kernel/k", None, 200),
        ("DELETE", "/v1/images/kernel/k", None, 404),
    ];
    check_statuses(&client, cases);
    let vms: api::VmList = client.call::<(), _>("GET", api::VMS, None).unwrap();
    assert!(vms.vms.is_empty());
    let firewall: serde_json::Value = client
        .call::<(), _>("GET", api::HOST_FIREWALL, None)
        .unwrap();
    assert_eq!(
        firewall,
        serde_json::to_value(crate::firewall::describe()).unwrap()
    );
}

/// Writes a record to the real kernel log (as keel-logger does: `<prio>text`); false without the
/// right to (the test then has nothing to look for).
fn kmsg_record(prio: u8, text: &str) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(crate::localapi::kmsg::DEVICE)
        .and_then(|mut f| f.write_all(format!("<{prio}>{text}\n").as_bytes()))
        .is_ok()
}

fn log_entries(body: &[u8]) -> Vec<keel_api::logs::LogEntry> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A sink for a followed stream that gives up (closing the stream) once `stop` appears.
struct Until {
    seen: Vec<u8>,
    stop: String,
}

impl Write for Until {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.seen.extend_from_slice(buf);
        if String::from_utf8_lossy(&self.seen).contains(&self.stop) {
            return Err(std::io::Error::other("seen"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn host_logs_sends_the_kernel_log_with_levels_and_follows_it() {
    let (host, client, _, cert) = adopted_with_certs("logs", "/bin/false");
    let marker = format!("keel-agent: logs-test-{}", std::process::id());
    if !kmsg_record(27, &marker) {
        return; // Not root: no kernel log to write to.
    }
    let path = keel_api::logs::HOST_LOGS;
    // The whole window can be far larger than one JSON answer's limit: read it as keelctl does.
    let mut body = Vec::new();
    client.stream_get(path, &mut body).unwrap();
    let all = log_entries(&body);
    let mine = all.iter().find(|e| e.message == marker).unwrap();
    assert_eq!(
        (mine.level, mine.source),
        (3, keel_api::logs::LogSource::Keel)
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let later = client
        .request::<()>("GET", &format!("{path}?after={}", mine.seq), None)
        .unwrap();
    assert_eq!(
        later.status,
        200,
        "{}",
        String::from_utf8_lossy(&later.body)
    );
    assert_eq!(
        later.header("content-type"),
        Some(keel_api::logs::JSON_LINES)
    );
    assert!(log_entries(&later.body).iter().all(|e| e.seq > mine.seq));
    for bad in ["after=x", "after=-1", "follow=maybe"] {
        let got = client
            .request::<()>("GET", &format!("{path}?{bad}"), None)
            .unwrap();
        assert_eq!(got.status, 400, "{bad}");
    }
    let refused = host.status(None, "GET", path).unwrap();
    assert_eq!(refused, 403, "only the manager reads the host's log");

    // Follow: what came after the marker, then a record logged while the stream is open.
    let next = format!("{marker}-followed");
    let follower = {
        let stop = next.clone();
        let url = format!("{path}?after={}&follow=true", mine.seq);
        let client = host.client(Some(&cert));
        std::thread::spawn(move || {
            let mut out = Until {
                seen: Vec::new(),
                stop,
            };
            let result = client.stream_get(&url, &mut out);
            (result, out.seen)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(kmsg_record(28, &next));
    let (result, seen) = follower.join().unwrap();
    assert!(
        result.is_err(),
        "the stream ends only when the client leaves"
    );
    let followed = log_entries(&seen[..seen.len() - 1]);
    let last = followed.iter().find(|e| e.message == next);
    assert!(last.is_some_and(|e| e.level == 4), "{followed:?}");
    assert!(followed.iter().all(|e| e.seq > mine.seq));
}

#[test]
fn host_network_routes_refuse_bad_input_and_say_when_networking_is_not_running() {
    let (_host, client) = adopted("net", "/bin/false");
    // No PID 1 network service serves /run/keel/net.sock in a unit test.
    let got = client
        .request::<()>("GET", api::HOST_NETWORK, None)
        .unwrap();
    assert_eq!(got.status, 503, "{}", String::from_utf8_lossy(&got.body));
    assert!(String::from_utf8_lossy(&got.body).contains("host networking is not running"));
    let cases = [
        (
            api::HOST_NETWORK,
            serde_json::json!({"change": {}, "confirm_within_secs": 1}),
        ),
        (
            api::HOST_NETWORK,
            serde_json::json!({"change": {}, "frob": 1}),
        ),
        (
            api::HOST_NETWORK,
            serde_json::json!({"confirm_within_secs": 60}),
        ),
        (
            api::HOST_NETWORK_PREVIEW,
            serde_json::json!({"interfaces": "eth0"}),
        ),
        (api::HOST_NETWORK_CONFIRM, serde_json::json!({"x": 1})),
    ];
    for (path, body) in cases {
        let got = client.request("POST", path, Some(&body)).unwrap();
        assert_eq!(
            got.status,
            400,
            "{path} {body}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
}

#[test]
fn network_refusals_map_to_http_statuses() {
    use crate::net::{NetError, Refusal};
    let cases = [
        (NetError::NothingPending, Refusal::Conflict),
        (NetError::Pending(3), Refusal::Conflict),
        (
            NetError::Refused(Refusal::Invalid, "x".into()),
            Refusal::Invalid,
        ),
        (NetError::NotRunning("x".into()), Refusal::Failed),
        (NetError::Remote("x".into()), Refusal::Failed),
    ];
    for (error, want) in cases {
        assert_eq!(error.refusal(), want, "{error}");
    }
}

#[test]
fn the_console_shows_the_adoption_and_resets_it() {
    use super::console_backend::AgentConsole;
    use crate::localapi::types::Adoption;
    use crate::localapi::{self, ApiError, ConsoleBackend};

    let host = start("e2e-console");
    let backend = Arc::new(AgentConsole::new());
    let socket = host._dir.path().join("console.sock");
    let listener = localapi::server::bind(&socket).unwrap();
    let serving: Arc<dyn ConsoleBackend> = backend.clone();
    std::thread::spawn(move || localapi::server::serve_on(listener, serving));
    let console = localapi::Client::new(&socket);

    // Before the agent opens, the console is answered but has no adoption to show.
    assert!(matches!(console.status(), Err(ApiError::Unavailable(_))));
    assert!(matches!(
        console.reset_adoption(),
        Err(ApiError::Unavailable(_))
    ));
    backend.attach(Arc::clone(&host.agent), None);
    let status = console.status().unwrap();
    assert_eq!(status.fingerprint, host.agent.fingerprint().to_string());
    let token = Adoption::NotAdopted {
        token: TOKEN.into(),
    };
    assert_eq!(status.adoption, token);

    let (ca, _) = manager("manager");
    host.client(None).adopt(TOKEN, &ca, 30).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    let adopted = Adoption::Adopted {
        manager: format!("CA {}", Fingerprint::of_cert(&ca_der).unwrap()),
    };
    assert_eq!(console.status().unwrap().adoption, adopted);

    // Resetting forgets the manager: a new token, and the old one adopts no more.
    let Adoption::NotAdopted { token } = console.reset_adoption().unwrap() else {
        panic!("still adopted after the reset");
    };
    assert_ne!(token, TOKEN);
    assert_eq!(host.agent.token(), Some(token));
    assert_eq!(host.agent.phase(), AdoptionPhase::NotAdopted);
    assert!(host.client(None).adopt(TOKEN, &ca, 30).is_err());
}

/// A slowloris: 200 connections from the manager's own address that each send one byte every
/// 5 s do not keep the adopted manager's `GET /v1/host` from answering within 2 s, and are all
/// closed by the head deadline (3 s here, 10 s by default) or sooner (evicted for newcomers).
#[test]
fn slow_clients_cannot_crowd_out_the_manager() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Instant;
    const DEADLINE: Duration = Duration::from_secs(3);
    let (host, client, _, _) = adopted_configured("e2e-slowloris", "/bin/false", |c| {
        c.head_timeout = DEADLINE;
    });
    let addr = host.server.local_addr();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || -> Result<Duration, String> {
                let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                let opened = Instant::now();
                tcp.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 256];
                while opened.elapsed() < Duration::from_secs(60) {
                    // The first byte of a TLS record, one at a time.
                    if tcp.write_all(&[0x16]).is_err() {
                        return Ok(opened.elapsed());
                    }
                    match tcp.read(&mut buf) {
                        Ok(0) => return Ok(opened.elapsed()),
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return Ok(opened.elapsed()),
                    }
                }
                Err("still open after 60 s".into())
            })
        })
        .collect();
    // Let the crowd connect, then ask as the manager, several times while it lasts.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let asked = Instant::now();
        let info: api::HostInfo = client.call::<(), _>("GET", api::HOST, None).unwrap();
        assert_eq!(info.fingerprint, host.agent.fingerprint());
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "GET /v1/host took {took:?}");
        std::thread::sleep(Duration::from_millis(700));
    }
    for handle in slow {
        let open_for = handle.join().unwrap().unwrap();
        // Closed at the deadline (the client notices at once: it is waiting in a read).
        assert!(open_for < DEADLINE + Duration::from_secs(3), "{open_for:?}");
    }
}

/// An upload that asks for `100 Continue` gets it only when its head is acceptable: refused from
/// its head (here without a digest), it gets the final answer at once and sends no body.
#[test]
fn uploads_get_100_continue_unless_refused_from_their_head() {
    use super::http::client::await_continue;
    let (_host, client) = adopted("e2e-continue", "/bin/false");
    let data = vec![5u8; 100_000];
    let digest = super::images::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data));
    let head = |digest: &str| {
        format!(
            "PUT /v1/images/disk/d HTTP/1.1\r\nHost: h\r\n{}: {digest}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            api::SHA256_HEADER,
            data.len()
        )
    };
    let mut refused = None;
    // The exchange itself fails: the host answered (and closed) before the client's turn.
    let _ = client.exchange(|s| {
        let no_digest = head("").replace(&format!("{}: \r\n", api::SHA256_HEADER), "");
        s.write_all(no_digest.as_bytes())?;
        s.flush()?;
        refused = Some(await_continue(s, &http::Limits::default()));
        Ok(())
    });
    let refused = refused.unwrap().unwrap().unwrap();
    assert_eq!(refused.status, 400, "{}", refused.error_message());
    assert!(refused.error_message().contains(api::SHA256_HEADER));

    let mut continued = None;
    let stored = client
        .exchange(|s| {
            s.write_all(head(&digest).as_bytes())?;
            s.flush()?;
            continued = Some(await_continue(s, &http::Limits::default()));
            s.write_all(&data)?;
            s.flush()
        })
        .unwrap();
    assert!(matches!(continued, Some(Ok(None))), "{continued:?}");
    assert_eq!(stored.status, 200, "{}", stored.error_message());
    let image: api::Image = stored.json_body().unwrap();
    assert_eq!((image.sha256, image.size), (digest, data.len() as u64));
}
