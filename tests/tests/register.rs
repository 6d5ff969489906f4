//! Zero-touch registration end to end: keelctl's manager runs on this machine, which QEMU's
//! user network shows the host as 10.0.2.2.
//!
//! From the kernel command line, in one boot of the test image: the host is booted with
//! `keel.manager=https://10.0.2.2:<port> keel.manager_ca=<fingerprint> keel.join_token=<token>`
//! while nothing listens there; it retries. Then an impostor (a manager with another CA) takes
//! the port: the host refuses it, says why in its log and on the console's Manager screen, and
//! the impostor receives nothing. Then the real manager starts on the port: the host registers
//! and is adopted with nobody typing anything, and keelctl runs a VM on it. Last, with the join
//! token revoked, the manager releases the host: it announces its new adoption token, waits in
//! `host pending`, and is adopted again by `host approve`.
//!
//! From the console, in a second boot without those parameters: the operator types the
//! manager's URL and join token on the Manager screen, is shown the CA fingerprint, rejects it
//! (the manager receives nothing), fetches it again and accepts it: the host registers and is
//! adopted.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_init::agent::api::{RegistrationState, RegistrationStatus, REGISTRATION};
use keel_tests::keelctl::{Keelctl, GUEST_WAITING};
use keel_tests::screen::{open_console, press, wait_for_screen, DOWN};
use keel_tests::{paths, Boot, Error, Image, Qemu, QemuBuilder};
use keel_trust::client::HostClient;
use keel_trust::fingerprint::Fingerprint;

const BOOT: Duration = Duration::from_secs(300);
/// The host's retries back off to 30 s; leave room for a loaded machine.
const RETRY: Duration = Duration::from_secs(120);

/// `keelctl manager serve` with its log collected; killed when dropped.
struct Manager {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Manager {
    fn start(k: &Keelctl, args: &[&str]) -> Manager {
        let mut all = vec!["manager", "serve"];
        all.extend(args);
        let mut child = k
            .command(&all)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start keelctl manager serve: {e}"));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    println!("{line}");
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let manager = Manager { child, log };
        manager.wait_log("listening on", Duration::from_secs(30));
        manager
    }

    /// A manager on `port` of this machine, which the guest reaches as 10.0.2.2, adopting the
    /// host at 10.0.2.15:8443 through QEMU's forward to `api_port`.
    fn for_qemu(k: &Keelctl, port: u16, api_port: u16) -> Manager {
        let listen = format!("127.0.0.1:{port}");
        let map = format!("10.0.2.15:8443=127.0.0.1:{api_port}");
        let args = [
            "--listen",
            &listen,
            "--name",
            "10.0.2.2",
            "--address-map",
            &map,
        ];
        Manager::start(k, &args)
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the manager's log: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port, held until the listener is dropped (so that QEMU's forwards do not take it).
fn free_port() -> (TcpListener, u16) {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("no free port: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no free port: {e}"))
        .port();
    (listener, port)
}

#[test]
fn the_host_registers_with_its_pinned_manager_and_is_adopted() -> Result<(), Error> {
    let k = Keelctl::with_new_ca("register");
    let impostor = Keelctl::with_new_ca("register-impostor");
    let pin = k.ok(&["ca", "fingerprint"]).trim().to_string();
    let token = k.ok(&["manager", "token", "create"]).trim().to_string();
    let (held, port) = free_port();
    let url = format!("https://10.0.2.2:{port}");

    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let params = format!("keel.manager={url} keel.manager_ca={pin} keel.join_token={token}");
    let boot = Boot::image(&image).with_params(&params);
    let mut host: Qemu = QemuBuilder::new("register", boot).forward(8443).spawn()?;
    // Closed long before the host's first attempt, which comes after its ready line.
    drop(held);
    let ready = host.wait_for_line("keel ready: api=https://", BOOT)?;
    let fingerprint = ready
        .text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fingerprint="))
        .unwrap_or_default()
        .to_string();
    let api_port = host.host_port(8443).unwrap_or_default();

    // Nothing listens yet: the host keeps trying.
    host.wait_for_line("keel-agent: registering with", BOOT)?;
    host.wait_for_line("manager unreachable", RETRY)?;

    // A manager whose CA is not the pinned one: refused before anything is sent.
    let listen = format!("127.0.0.1:{port}");
    let fake = Manager::start(&impostor, &["--listen", &listen, "--name", "10.0.2.2"]);
    let refused = host.wait_for_line("does not hold the pinned CA", RETRY)?;
    assert!(refused.text.contains("nothing was sent"), "{refused:?}");
    assert!(refused.text.contains(&pin), "{refused:?}");
    let received = impostor.json(&["host", "pending", "--all"]);
    assert_eq!(
        received,
        serde_json::json!([]),
        "the impostor got a registration"
    );
    assert_eq!(fake.lines().len(), 1, "{:?}", fake.lines());
    drop(fake);
    // The console's Manager screen says why too.
    open_console(&mut host, BOOT)?;
    press(&mut host, &["3"])?;
    wait_for_screen(
        &host,
        &[
            "Registration: refused (named on the kernel command line)",
            " Why: The manager's certificate chain does not hold the pinned CA",
        ],
    );
    host.send("\x1b")?;

    // The real manager: registered and adopted without anyone typing.
    let manager = Manager::for_qemu(&k, port, api_port);
    host.wait_for_line(&format!("keel-agent: registered with {url}"), RETRY)?;
    let adopted = manager.wait_log("keelctl manager: adopted", RETRY);
    let id = adopted.rsplit(' ').next().unwrap_or_default().to_string();
    let info = k.json(&["host", "info"]);
    assert_eq!(info["fingerprint"], fingerprint.as_str(), "{info}");
    assert_eq!(k.json(&["vm", "list"])["vms"], serde_json::json!([]));
    let hosts = k.json(&["host", "pending", "--all"]);
    assert_eq!(hosts[0]["id"], id.as_str(), "{hosts}");
    assert_eq!(hosts[0]["state"], "adopted", "{hosts}");
    assert_eq!(hosts[0]["join_token"], true, "{hosts}");

    // A VM runs on the registered host.
    k.upload_guest(&image.dir.join("overlay/usr/lib/keel-tests"));
    k.start_guest("g1", &[]);
    k.wait_console("g1", GUEST_WAITING, 1);

    // The host's API says so too, to anyone (no token in it).
    let pin: Fingerprint = fingerprint
        .parse()
        .unwrap_or_else(|e| panic!("{fingerprint}: {e}"));
    let sock = ([127, 0, 0, 1], api_port).into();
    let client = HostClient::new(sock, pin, None).unwrap_or_else(|e| panic!("{e}"));
    let status: RegistrationStatus = client
        .call::<(), _>("GET", REGISTRATION, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.state, RegistrationState::Adopted, "{status:?}");
    assert_eq!(status.host_id.as_deref(), Some(id.as_str()));

    // Without a valid join token the host waits for approval.
    k.ok(&["manager", "token", "revoke", &token]);
    k.ok(&["host", "release"]);
    let waiting = host.wait_for_line("waiting for approval", RETRY)?;
    assert!(
        waiting.text.contains("join token unknown or expired"),
        "{waiting:?}"
    );
    let pending = k.json(&["host", "pending"]);
    assert_eq!(pending[0]["id"], id.as_str(), "{pending}");
    assert_eq!(pending[0]["state"], "pending", "{pending}");
    k.fails(&["host", "info"], "No host given");
    let api = format!("127.0.0.1:{api_port}");
    k.ok(&["host", "approve", &id, "--address", &api]);
    assert_eq!(
        k.json(&["host", "info"])["fingerprint"],
        fingerprint.as_str()
    );
    assert_eq!(k.json(&["host", "pending"]), serde_json::json!([]));
    Ok(())
}

#[test]
fn the_operator_names_the_manager_on_the_console() -> Result<(), Error> {
    let k = Keelctl::with_new_ca("register-console");
    let pin = k.ok(&["ca", "fingerprint"]).trim().to_string();
    let token = k.ok(&["manager", "token", "create"]).trim().to_string();
    let (held, port) = free_port();
    let url = format!("https://10.0.2.2:{port}");
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let mut host: Qemu = QemuBuilder::new("register-console", Boot::image(&image))
        .forward(8443)
        .spawn()?;
    host.wait_for_line("keel ready: api=https://", BOOT)?;
    let api_port = host.host_port(8443).unwrap_or_default();
    drop(held);
    let manager = Manager::for_qemu(&k, port, api_port);

    open_console(&mut host, BOOT)?;
    press(&mut host, &["3"])?;
    wait_for_screen(&host, &["Registration: no manager named"]);
    press(&mut host, &[&url, DOWN, &token, DOWN, "\r"])?;
    wait_for_screen(&host, &[&pin, "[ Accept: pin this CA and register ]"]);
    // Rejected: the manager heard nothing but a TLS handshake.
    press(&mut host, &[DOWN, "\r"])?;
    wait_for_screen(&host, &["Rejected: nothing was sent"]);
    assert_eq!(k.json(&["host", "pending", "--all"]), serde_json::json!([]));
    // Fetched again and accepted: registered and adopted through the join token.
    press(&mut host, &[DOWN, DOWN, "\r"])?;
    wait_for_screen(&host, &[&pin, "[ Accept: pin this CA and register ]"]);
    press(&mut host, &["\r"])?;
    wait_for_screen(&host, &["Saved: this host registers with"]);
    manager.wait_log("keelctl manager: adopted", RETRY);
    wait_for_screen(&host, &["Registration: adopted (named on the console)"]);
    assert_eq!(k.json(&["vm", "list"])["vms"], serde_json::json!([]));
    Ok(())
}
