//! Zero-touch registration between a real agent in this process and `keelctl manager serve`
//! (the binary) over TLS on loopback: a host with a join token is adopted without anyone typing
//! anything; a host without one waits in `host pending` until `host approve`.

#![allow(clippy::unwrap_used)]

#[path = "keelctl_common/mod.rs"]
mod common;

use keel_api::agent::{
    AdoptionPhase, ManagerVerdict, RegistrationSource, RegistrationState, RegistrationStatus,
};
use keel_init::agent::backoff::Backoff;
use keel_init::agent::clock::SystemClock;
use keel_init::agent::register::{Registrar, Settings, RETRY_FIRST, RETRY_MAX};
use keel_init::agent::server::{Agent, AgentConfig, Server};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tmp(tag: &str) -> PathBuf {
    common::tmp(&format!("reg-{tag}"))
}

/// keelctl's stdout, trimmed (ids and fingerprints are read from it).
fn ok(config: &Path, args: &[&str]) -> String {
    common::ok(config, args).trim().to_string()
}

/// `keelctl manager serve`, killed when dropped.
struct ManagerProcess(Child);

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the manager on a free port; returns it and its URL.
fn serve(config: &Path) -> (ManagerProcess, String) {
    let mut child = Command::new(common::keelctl_bin())
        .arg("--config-dir")
        .arg(config)
        .args(["manager", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // Its log, shown with the test's output.
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    let addr = first
        .split("https://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    (ManagerProcess(child), format!("https://{addr}"))
}

struct Host {
    agent: Arc<Agent>,
    server: Server,
}

fn host(dir: &Path) -> Host {
    let config = AgentConfig::new(dir.join("state"), vec!["127.0.0.1".into()]);
    let agent = Agent::open(config, Arc::new(SystemClock)).unwrap();
    let server = agent
        .spawn(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .unwrap();
    Host { agent, server }
}

impl Host {
    fn registrar(&self, url: &str, pin: &str, join: Option<&str>, id: &str) -> Registrar {
        Registrar {
            settings: Settings::from_params(Some(url), Some(pin), join)
                .unwrap()
                .unwrap(),
            source: RegistrationSource::CommandLine,
            host_id: id.into(),
            hostname: None,
            api_port: self.server.local_addr().port(),
            agent: Arc::clone(&self.agent),
            addresses: || vec![IpAddr::from([127, 0, 0, 1])],
            reannounce: keel_init::agent::register::REANNOUNCE_EVERY,
        }
    }

    fn wait_adopted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.agent.phase() != AdoptionPhase::Adopted {
            assert!(Instant::now() < deadline, "the host was not adopted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn register(r: &Registrar) -> RegistrationStatus {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    let mut status = RegistrationStatus::default();
    r.step(&mut None, &mut backoff, &mut status);
    status
}

#[test]
fn join_tokens_adopt_and_others_wait_for_approval() {
    let dir = tmp("flow");
    let cfg = dir.join("config");
    ok(&cfg, &["ca", "init"]);
    let pin = ok(&cfg, &["ca", "fingerprint"]);
    assert!(pin.starts_with("sha256:"), "{pin}");
    let token = ok(&cfg, &["manager", "token", "create"]);
    let (_manager, url) = serve(&cfg);

    // With the join token: adopted by the manager, nobody types anything.
    let a = host(&dir.join("a"));
    let id_a = "00000000-0000-4000-8000-00000000000a";
    let status = register(&a.registrar(&url, &pin, Some(&token), id_a));
    assert_eq!(status.state, RegistrationState::Registered, "{status:?}");
    assert_eq!(status.verdict, Some(ManagerVerdict::Adopting), "{status:?}");
    a.wait_adopted();
    let info = ok(&cfg, &["--host", id_a, "host", "info", "-o", "json"]);
    assert!(info.contains(&a.agent.fingerprint().to_string()), "{info}");
    // Announced again (its token is spent): the manager knows it adopted it.
    let again = register(&a.registrar(&url, &pin, Some(&token), id_a));
    assert_eq!(again.verdict, Some(ManagerVerdict::Adopted), "{again:?}");

    // Without one (or with a wrong one): pending until approved.
    let b = host(&dir.join("b"));
    let id_b = "00000000-0000-4000-8000-00000000000b";
    let status = register(&b.registrar(&url, &pin, Some("not-a-join-token"), id_b));
    assert_eq!(status.verdict, Some(ManagerVerdict::Pending), "{status:?}");
    assert!(status.reason.unwrap_or_default().contains("host approve"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.agent.phase(), AdoptionPhase::NotAdopted);
    let pending = ok(&cfg, &["host", "pending"]);
    assert!(
        pending.contains(id_b) && !pending.contains(id_a),
        "{pending}"
    );
    let json = ok(&cfg, &["host", "pending", "--all", "-o", "json"]);
    assert!(json.contains(id_a) && !json.contains(&token), "{json}");
    ok(&cfg, &["host", "approve", id_b]);
    assert_eq!(b.agent.phase(), AdoptionPhase::Adopted);
    ok(&cfg, &["--host", id_b, "host", "info"]);
    let pending = ok(&cfg, &["host", "pending"]);
    assert!(!pending.contains(id_b), "{pending}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `keelctl image upload KIND - --name N` sends standard input chunked, its SHA-256 in a
/// trailer; the host stores it whole and verifies it.
#[test]
fn an_upload_from_stdin_is_sent_chunked_and_arrives_whole() {
    use sha2::Digest;
    use std::io::Write;
    let dir = tmp("chunked-upload");
    let cfg = dir.join("config");
    ok(&cfg, &["ca", "init"]);
    let pin = ok(&cfg, &["ca", "fingerprint"]);
    let token = ok(&cfg, &["manager", "token", "create"]);
    let (_manager, url) = serve(&cfg);
    let a = host(&dir.join("a"));
    let id = "00000000-0000-4000-8000-0000000000c1";
    let status = register(&a.registrar(&url, &pin, Some(&token), id));
    assert_eq!(status.state, RegistrationState::Registered, "{status:?}");
    a.wait_adopted();

    // More than the in-memory body limit, in pieces of uneven size.
    let data: Vec<u8> = (0..700_001u32).map(|i| (i % 251) as u8).collect();
    let digest: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut child = Command::new(common::keelctl_bin())
        .arg("--config-dir")
        .arg(&cfg)
        .args(["--host", id, "-o", "json", "image", "upload", "disk", "-"])
        .args(["--name", "piped"])
        .env_remove("KEELCTL_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for piece in sent.chunks(77_777) {
            stdin.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "upload failed: {stderr}");
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["sha256"], digest.as_str(), "{image}");
    assert_eq!(image["size"], data.len() as u64, "{image}");
    // And the host holds it, listed with the digest it verified.
    let list = ok(&cfg, &["--host", id, "image", "list", "-o", "json"]);
    assert!(list.contains(&digest) && list.contains("piped"), "{list}");
    let _ = std::fs::remove_dir_all(dir);
}
