//! Isolation and hardening end to end, in one boot of the Keel test image: kernel hardening
//! settings in effect, jails (a probe's view from inside, a memory cap breach, a jailed keel-vmm
//! booting Linux), and a port scan through QEMU's user network where only the agent's port
//! answers (the real agent, reached over TLS with its pinned key).

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use keel_tests::{paths, Boot, Error, Image, Qemu, QemuBuilder};
use keel_trust::client::HostClient;
use keel_trust::fingerprint::Fingerprint;

/// Host boot (~20 s under TCG), then the jailed guest boot (a few seconds more).
const TIMEOUT: Duration = Duration::from_secs(300);
const AGENT_PORT: u16 = 8443;
/// Scanned ports that must be dropped: SSH, HTTP, and one the runner listens on behind the
/// firewall.
const DROPPED: [u16; 3] = [22, 80, 9000];

/// What a connection to a forwarded port got within `wait`: the bytes, or `None` when nothing
/// came at all (QEMU accepted for the guest, whose firewall dropped the SYN).
fn answer(host: &Qemu, guest_port: u16, wait: Duration) -> Option<String> {
    let port = host.host_port(guest_port)?;
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => Some(format!("error {e}")),
    }
}

#[test]
fn host_is_hardened_and_vmms_are_jailed() -> Result<(), Error> {
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let scenarios = [
        "hardening-sysctl",
        "jail-probe",
        "jail-memory-cap",
        "jail-vmm",
        "firewall-listen",
    ];
    let boot = Boot::image(&image).with_params(&format!("keel_e2e={}", scenarios.join(",")));
    let mut builder = QemuBuilder::new("hardening", boot).forward(AGENT_PORT);
    for port in DROPPED {
        builder = builder.forward(port);
    }
    let mut host = builder.spawn()?;
    let ready = host.wait_for_line("keel ready: api=https://", TIMEOUT)?;
    let pin: Option<Fingerprint> = ready
        .text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fingerprint="))
        .and_then(|f| f.parse().ok());
    host.wait_for_line("E2E READY firewall", TIMEOUT)?;
    let scans: Vec<_> = std::thread::scope(|s| {
        let probes: Vec<_> = DROPPED
            .iter()
            .map(|&port| {
                (
                    port,
                    s.spawn({
                        let host = &host;
                        move || answer(host, port, Duration::from_secs(4))
                    }),
                )
            })
            .collect();
        probes
            .into_iter()
            .map(|(port, probe)| (port, probe.join().ok().flatten()))
            .collect()
    });
    let agent = pin.zip(host.host_port(AGENT_PORT)).map(|(pin, port)| {
        HostClient::new((Ipv4Addr::LOCALHOST, port).into(), pin, None)
            .map_err(|e| e.to_string())
            .and_then(|client| client.health().map_err(|e| e.to_string()))
    });
    host.wait_for_line("E2E DONE", Duration::from_secs(60))?;
    let log = host.log_path().display().to_string();
    let lines = host.lines();
    let failures: Vec<&str> = lines
        .iter()
        .filter(|l| l.text.contains("E2E FAIL"))
        .map(|l| l.text.as_str())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}; see {log}");
    for scenario in scenarios {
        let pass = format!("E2E PASS {scenario} ");
        assert!(
            lines.iter().any(|l| l.text.contains(&pass)),
            "{scenario} did not pass; see {log}"
        );
    }
    for (port, got) in scans {
        assert_eq!(got, None, "port {port} answered; see {log}");
    }
    assert!(
        matches!(agent, Some(Ok(_))),
        "the agent's health over its port: {agent:?} ({}); see {log}",
        ready.text
    );
    host.power_off()?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
