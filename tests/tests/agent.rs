//! The host agent end to end, in one boot of the test image with port 8443 forwarded: read the
//! ready line, adopt the host with keelctl (after the refusals: wrong token, wrong fingerprint;
//! and without or with a foreign client certificate), upload Debian's cloud kernel and the guest
//! initramfs, run a VM, read its console through keelctl, shut it down, run it again, and kill
//! the agent while the VM runs (the scenario runner does it when the VM is paused): PID 1
//! restarts the agent, which takes the VM back. Last, the host's ACPI power-off makes the agent
//! shut the running guest down before the host goes.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_init::agent::ca::{ManagerCa, Validity};
use keel_init::agent::client::{ClientError, HostClient};
use keel_init::agent::fingerprint::Fingerprint;
use keel_tests::keelctl::{self, Keelctl};
use keel_tests::{paths, Boot, Error, Image, Qemu, QemuBuilder};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);
/// A nested guest boots in well under a minute under TCG; leave room for a loaded machine.
const GUEST: Duration = Duration::from_secs(300);
const MARKER: &str = "KEEL-GUEST: waiting for power button";

/// Waits on VMs through keelctl.
trait VmWaits {
    fn wait_vm(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value;
    fn console_count(&self, name: &str, marker: &str) -> usize;
    fn wait_console(&self, name: &str, marker: &str, count: usize);
}

impl VmWaits for Keelctl {
    /// Polls `vm get` until `done` holds.
    fn wait_vm(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + GUEST;
        loop {
            let vm = self.json(&["vm", "get", name]);
            if done(&vm) {
                return vm;
            }
            assert!(Instant::now() < deadline, "VM {name} never {what}: {vm}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// How many times `marker` is in the console history now.
    fn console_count(&self, name: &str, marker: &str) -> usize {
        self.ok(&["vm", "console", name]).matches(marker).count()
    }

    /// Polls the console until `marker` appears `count` times.
    fn wait_console(&self, name: &str, marker: &str, count: usize) {
        let deadline = Instant::now() + GUEST;
        loop {
            let console = self.ok(&["vm", "console", name]);
            if console.matches(marker).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{marker:?} x{count} not on the console of {name}; it ends: {}",
                console
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// `keel ready: api=https://<ip>:8443 fingerprint=sha256:<hex> adopt-token=<token>`.
fn ready_fields(line: &str) -> (String, String) {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    (field("fingerprint="), field("adopt-token="))
}

fn state(vm: &Value) -> &str {
    vm["state"].as_str().unwrap_or_default()
}

#[test]
fn manager_adopts_the_host_and_runs_a_vm_that_survives_an_agent_restart() -> Result<(), Error> {
    let keelctl_bin = keelctl::binary();
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let payload = image.dir.join("overlay/usr/lib/keel-tests");
    let boot = Boot::image(&image).with_params("keel_e2e=agent-kill-on-pause");
    let mut host: Qemu = QemuBuilder::new("agent", boot).forward(8443).spawn()?;
    let ready = host.wait_for_line("keel ready: api=https://", BOOT)?;
    assert!(
        ready.text.starts_with("keel ready: api=https://"),
        "{ready:?}"
    );
    let (fingerprint, token) = ready_fields(&ready.text);
    let port = host.host_port(8443).unwrap_or_default();
    let addr = format!("127.0.0.1:{port}");

    let config = std::env::temp_dir().join(format!("keel-e2e-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&config);
    let k = Keelctl {
        bin: keelctl_bin,
        config: config.clone(),
    };
    k.ok(&["ca", "init"]);
    let adopt = |token: &str, fp: &str| -> Vec<String> {
        [
            "host",
            "adopt",
            &addr,
            "--token",
            token,
            "--fingerprint",
            fp,
            "--name",
            "q",
        ]
        .map(String::from)
        .to_vec()
    };
    let wrong_fp = Fingerprint::of_spki(b"not the host").to_string();
    for (args, want) in [
        (adopt("wrong-token-0123456789", &fingerprint), Some("401")),
        (adopt(&token, &wrong_fp), Some("mismatch")),
        (adopt(&token, &fingerprint), None),
        (adopt(&token, &fingerprint), Some("409")),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match want {
            Some(want) => k.fails(&args, want),
            None => {
                k.ok(&args);
            }
        }
    }

    // Without a client certificate: refused by the route; with one from another CA: refused by TLS.
    let sock: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    let pin: Fingerprint = fingerprint
        .parse()
        .unwrap_or_else(|e| panic!("{fingerprint}: {e}"));
    let anonymous = HostClient::new(sock, pin, None).unwrap_or_else(|e| panic!("{e}"));
    match anonymous.request::<()>("GET", "/v1/vms", None) {
        Ok(r) => assert_eq!(r.status, 403),
        Err(e) => panic!("unauthenticated request: {e}"),
    }
    let validity = Validity::days_from(std::time::SystemTime::now(), 1);
    let other = ManagerCa::generate("intruder", validity).unwrap_or_else(|e| panic!("{e}"));
    let foreign = other
        .issue_client_cert("x", validity)
        .unwrap_or_else(|e| panic!("{e}"));
    let intruder = HostClient::new(sock, pin, Some(&foreign)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        intruder.request::<()>("GET", "/v1/vms", None),
        Err(ClientError::Tls(..))
    ));

    let info = k.json(&["host", "info"]);
    assert_eq!(info["fingerprint"], fingerprint.as_str());
    assert_eq!(info["capabilities"]["kvm"], true);
    network_changes(&k, &config);
    upload(&k, "kernel", &payload.join("vmlinuz"));
    upload(&k, "initrd", &payload.join("initrd.img"));
    assert_eq!(k.json(&["image", "list"])["store"], "ram");

    k.ok(&[
        "vm",
        "create",
        "g1",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.img",
        "--memory",
        "256",
        "--cmdline",
        "console=ttyS0 quiet panic=-1 keel_guest.mode=wait-button",
        "--start",
    ]);
    k.wait_console("g1", MARKER, 1);
    k.ok(&["vm", "shutdown", "g1"]);
    vm_with_disks_and_a_nic(&k, &config);
    let stopped = k.wait_vm("g1", "stopped", |vm| state(vm) == "stopped");
    assert_eq!(stopped["last_exit"]["code"], 0, "{stopped}");

    // Again, and this time the agent dies while the VM runs.
    k.ok(&["vm", "start", "g1"]);
    k.wait_console("g1", MARKER, 2);
    let before = k.json(&["vm", "get", "g1"]);
    k.ok(&["vm", "pause", "g1"]);
    host.wait_for_line("E2E killed the agent", BOOT)?;
    let again = host.wait_for_line("keel ready: api=https://", BOOT)?;
    assert!(again.text.ends_with("adopt-token=-"), "{again:?}");
    let after = k.wait_vm("g1", "taken back", |vm| state(vm) == "paused");
    assert_eq!(after["pid"], before["pid"], "{after}");
    assert_eq!(k.json(&["image", "list"])["store"], "ram");
    k.ok(&["vm", "resume", "g1"]);
    k.ok(&["vm", "poweroff", "g1"]);
    k.wait_vm("g1", "stopped after the restart", |vm| {
        state(vm) == "stopped"
    });
    // A host shutdown shuts the running guests down before the agent exits.
    // The console history lives in the agent: the restarted one has only what came after it.
    let seen = k.console_count("g1", MARKER);
    k.ok(&["vm", "start", "g1"]);
    k.wait_console("g1", MARKER, seen + 1);
    k.fails(&["vm", "delete", "g1"], "power it off first");
    let _ = std::fs::remove_dir_all(&config);
    host.power_off()?;
    host.wait_for_line("keel-agent: stopping", BOOT)?;
    // The guest powers off by itself unless it is too slow for the grace period (TCG).
    host.wait_for_line("keel-agent: VM g1 stopped:", BOOT)?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

/// A change to the management bridge keelbr0 over eth0: QEMU's address, static, via `gateway`.
fn static_change(dir: &Path, gateway: &str) -> String {
    let change = serde_json::json!({"interfaces": [
        {"name": "eth0", "kind": {"type": "ethernet"}},
        {"name": "keelbr0", "kind": {"type": "bridge", "ports": ["eth0"]},
         "ipv4": {"mode": "static", "address": "10.0.2.15/24", "gateway": gateway}}
    ]});
    let path = dir.join(format!("net-{gateway}.json"));
    std::fs::write(&path, change.to_string()).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}

/// Host networking through the API: the DHCP lease shows; a change whose gateway does not answer
/// rolls back by itself when nobody confirms it; a good one, confirmed, is saved.
fn network_changes(k: &Keelctl, dir: &Path) {
    let status = k.json(&["host", "network", "show"]);
    assert!(
        status["leases"]["keelbr0"].is_object(),
        "no DHCP lease: {status}"
    );
    let cut = static_change(dir, "10.0.2.99");
    let preview = k.json(&["host", "network", "preview", &cut]);
    assert!(
        preview["operations"]
            .as_array()
            .is_some_and(|o| !o.is_empty()),
        "{preview}"
    );
    k.ok(&["host", "network", "apply", &cut, "--confirm-within", "5"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let status = k.json(&["host", "network", "show"]);
        if status["pending"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "never decided: {status}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        status["last_rollback"]
            .as_str()
            .is_some_and(|r| r.contains("rolled back")),
        "{status}"
    );
    assert!(
        !status["saved"].to_string().contains("10.0.2.99"),
        "{status}"
    );
    k.fails(&["host", "network", "confirm"], "409");

    let good = static_change(dir, "10.0.2.2");
    k.ok(&["host", "network", "apply", &good, "--confirm-within", "60"]);
    k.ok(&["host", "network", "confirm"]);
    let status = k.json(&["host", "network", "show"]);
    assert!(status["pending"].is_null(), "{status}");
    assert!(
        status["saved"].to_string().contains("10.0.2.15/24"),
        "{status}"
    );
    assert_eq!(status["gateways"][0], "10.0.2.2 dev keelbr0", "{status}");
}

/// A VM with a private copy of a disk image, the image itself shared read-only, and a NIC on
/// the management bridge: its guest finds them all (and the entropy device) on PCI.
fn vm_with_disks_and_a_nic(k: &Keelctl, dir: &Path) {
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0x6bu8; 1 << 20]).unwrap_or_else(|e| panic!("{e}"));
    upload(k, "disk", &image);
    k.ok(&[
        "vm",
        "create",
        "g2",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.img",
        "--memory",
        "256",
        "--cmdline",
        "console=ttyS0 quiet panic=-1 keel_guest.mode=wait-button",
        "--disk",
        "data.img,serial=private",
        "--disk",
        "data.img,shared,ro",
        "--nic",
        "keelbr0",
        "--start",
    ]);
    k.wait_console("g2", MARKER, 1);
    let console = k.ok(&["vm", "console", "g2"]);
    assert!(
        console.contains("KEEL-GUEST: pci virtio blk=2 net=1 rng=1"),
        "{console}"
    );
    // The shared image is in use; the private copy is not the image.
    k.fails(&["image", "delete", "disk", "data.img"], "g2");
    k.ok(&["vm", "poweroff", "g2"]);
    k.wait_vm("g2", "stopped", |vm| state(vm) == "stopped");
    k.ok(&["vm", "delete", "g2"]);
    k.ok(&["image", "delete", "disk", "data.img"]);
}

fn upload(k: &Keelctl, kind: &str, file: &Path) {
    let path = file.to_string_lossy();
    let out = k.ok(&["image", "upload", kind, &path]);
    assert!(out.contains(kind), "{out}");
}
