//! The host agent end to end, in one boot of the test image with port 8443 forwarded: read the
//! ready line, adopt the host with keelctl (after the refusals: wrong token, wrong fingerprint;
//! and without or with a foreign client certificate), change the host network through the API,
//! upload Debian's cloud kernel, the guest initramfs and a disk image, run a VM with a private
//! copy of the disk, the image shared read-only and a NIC (its guest finds them on PCI), read its
//! console through keelctl, shut it down, run it again, and kill the agent while the VM runs (the
//! scenario runner does it when the VM is paused): PID 1 restarts the agent, which takes the VM
//! back. The VM's keel-vmm is jailed: the scenario runner checks from the host that it runs as a
//! VM uid with no capabilities, alone in its PID namespace, with only its own files in its root
//! (its disks, read-only where asked, and /dev/net/tun for its NIC, whose tap the agent made for
//! its uid and bridged) and its cgroup limits set, and, after the agent restart, squeezes its
//! cgroup's memory.max so the kernel OOM-kills it: the agent reports that through the API and
//! its log, and still shows the guest's console from before the restart. The firewall is read
//! through the API. Last, the host's ACPI power-off makes the
//! agent shut the running guest down before the host goes.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_tests::keelctl::{ready_fields, vm_state, Keelctl, GUEST, GUEST_WAITING as MARKER};
use keel_tests::{paths, Boot, Error, Image, Qemu, QemuBuilder};
use keel_trust::ca::{ManagerCa, Validity};
use keel_trust::client::{ClientError, HostClient};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn manager_adopts_the_host_and_runs_a_vm_that_survives_an_agent_restart() -> Result<(), Error> {
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let payload = image.dir.join("overlay/usr/lib/keel-tests");
    let boot =
        Boot::image(&image).with_params("keel_e2e=agent-jail,agent-kill-on-pause,agent-squeeze");
    let mut host: Qemu = QemuBuilder::new("agent", boot).forward(8443).spawn()?;
    let ready = host.wait_for_line("keel ready: api=https://", BOOT)?;
    assert!(
        ready.text.starts_with("keel ready: api=https://"),
        "{ready:?}"
    );
    let (fingerprint, token) = ready_fields(&ready.text);
    let port = host.host_port(8443).unwrap_or_default();
    let addr = format!("127.0.0.1:{port}");

    let k = Keelctl::with_new_ca("agent");
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
    network_changes(&k, &k.config);
    k.upload_guest(&payload);
    let image = k.config.join("data.img");
    std::fs::write(&image, vec![0x6bu8; 1 << 20]).unwrap_or_else(|e| panic!("{e}"));
    k.upload("disk", &image);
    assert_eq!(k.json(&["image", "list"])["store"], "ram");

    k.start_guest(
        "g1",
        // A private copy of the disk image, the image itself shared read-only, a NIC on the
        // management bridge (not QEMU's 52:54:00:12:34:56: that is the Keel host's own NIC).
        &[
            "--disk",
            "data.img,serial=private",
            "--disk",
            "data.img,shared,ro",
            "--nic",
            "keelbr0,mac=52:54:00:ab:cd:01",
        ],
    );
    k.wait_console("g1", MARKER, 1);
    // The guest finds them all (and the entropy device) on PCI.
    let console = k.ok(&["vm", "console", "g1"]);
    assert!(
        console.contains("KEEL-GUEST: pci virtio blk=2 net=1 rng=1"),
        "{console}"
    );
    // The shared image is in use; the private copy is not the image.
    k.fails(&["image", "delete", "disk", "data.img"], "g1");
    expect_pass(&mut host, "agent-jail")?;
    let vm = k.json(&["vm", "get", "g1"]);
    let jail = &vm["jail"];
    assert_eq!(jail["memory_max"], (256 + 64 + 4) << 20, "{vm}");
    assert_eq!(jail["pids_max"], 1 + 16, "{vm}");
    assert_eq!(jail["cgroup"], "/sys/fs/cgroup/keel.slice/vm-g1", "{vm}");
    assert!(jail["uid"].as_u64().is_some_and(|u| u >= 100_000), "{vm}");
    assert_eq!(jail["events"]["oom_kill"], 0, "{vm}");
    let firewall = k.ok(&["host", "firewall"]);
    assert!(firewall.contains("policy drop;"), "{firewall}");
    assert!(firewall.contains("tcp dport 8443 accept"), "{firewall}");
    // The host's log through the agent, each line with its level: PID 1's, the agent's.
    let logs = k.ok(&["host", "logs"]);
    for want in [
        "] info keel: boot complete in ",
        "] info keel ready: api=https://",
    ] {
        assert!(
            logs.lines().any(|l| l.starts_with('[') && l.contains(want)),
            "no {want:?} in {logs}"
        );
    }
    let records = k.json(&["host", "logs"]);
    let ready = records.as_array().and_then(|all| {
        all.iter().find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("keel ready: "))
        })
    });
    assert!(
        ready.is_some_and(|r| r["level"] == 6 && r["source"] == "keel"),
        "{records}"
    );
    k.ok(&["vm", "shutdown", "g1"]);
    let stopped = k.wait_vm("g1", "stopped", |vm| vm_state(vm) == "stopped");
    assert_eq!(stopped["last_exit"]["code"], 0, "{stopped}");

    // Again, and this time the agent dies while the VM runs.
    k.ok(&["vm", "start", "g1"]);
    k.wait_console("g1", MARKER, 2);
    let before = k.json(&["vm", "get", "g1"]);
    k.ok(&["vm", "pause", "g1"]);
    host.wait_for_line("E2E killed the agent", BOOT)?;
    let again = host.wait_for_line("keel ready: api=https://", BOOT)?;
    assert!(again.text.ends_with("adopt-token=-"), "{again:?}");
    let after = k.wait_vm("g1", "taken back", |vm| vm_state(vm) == "paused");
    assert_eq!(after["pid"], before["pid"], "{after}");
    // The new agent shows what the guest printed before it (kept in the VM's run directory).
    assert_eq!(k.console_count("g1", MARKER), 2);
    assert_eq!(k.json(&["image", "list"])["store"], "ram");
    // Running again, the runner squeezes its memory cap: the kernel OOM-kills keel-vmm in its
    // group, and the agent (not its parent any more) reports it.
    k.ok(&["vm", "resume", "g1"]);
    let squeezed = host.wait_for_line_matching(
        "the agent's report of the OOM kill",
        |l| l.contains("keel-agent: VM g1 hit its limits") || l.contains("E2E FAIL agent-squeeze"),
        GUEST,
    )?;
    assert!(squeezed.text.contains("OOM kills"), "{}", squeezed.text);
    let killed = k.wait_vm("g1", "stopped after the restart", |vm| {
        vm_state(vm) == "stopped"
    });
    let reason = killed["last_exit"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("OOM-killed"), "{killed}");
    assert!(
        killed["jail"]["events"]["oom_kill"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{killed}"
    );
    // A host shutdown shuts the running guests down before the agent exits.
    let seen = k.console_count("g1", MARKER);
    k.ok(&["vm", "start", "g1"]);
    k.wait_console("g1", MARKER, seen + 1);
    k.fails(&["vm", "delete", "g1"], "power it off first");
    host.power_off()?;
    host.wait_for_line("keel-agent: stopping", BOOT)?;
    // The guest powers off by itself unless it is too slow for the grace period (TCG).
    host.wait_for_line("keel-agent: VM g1 stopped:", BOOT)?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

/// Waits for the scenario runner's verdict on `scenario` and fails the test with its reason.
fn expect_pass(host: &mut Qemu, scenario: &str) -> Result<(), Error> {
    let (pass, fail) = (
        format!("E2E PASS {scenario} "),
        format!("E2E FAIL {scenario}:"),
    );
    let line = host.wait_for_line_matching(
        &format!("the verdict on {scenario}"),
        |l| l.contains(&pass) || l.contains(&fail),
        GUEST,
    )?;
    assert!(line.text.contains(&pass), "{}", line.text);
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
