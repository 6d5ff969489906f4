//! Isolation and hardening end to end, in one boot of the Keel test image: kernel hardening
//! settings in effect, jails (a probe's view from inside, a memory cap breach, a jailed keel-vmm
//! booting Linux), and a port scan through QEMU's user network where only the agent port answers.

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use keel_tests::{paths, Boot, Error, Image, Qemu, QemuBuilder};

/// Host boot (~20 s under TCG), then the jailed guest boot (a few seconds more).
const TIMEOUT: Duration = Duration::from_secs(300);
const AGENT_PORT: u16 = 8443;
/// Scanned ports that must be dropped: SSH, HTTP, and one the runner listens on behind the
/// firewall.
const DROPPED: [u16; 3] = [22, 80, 9000];
const BANNER: &str = "KEEL-FIREWALL-OPEN";

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
    host.wait_for_line("E2E READY firewall", TIMEOUT)?;
    let scans: Vec<_> = DROPPED
        .iter()
        .map(|&port| (port, answer(&host, port, Duration::from_secs(4))))
        .collect();
    let agent = answer(&host, AGENT_PORT, Duration::from_secs(30));
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
        agent.as_deref().is_some_and(|a| a.contains(BANNER)),
        "the agent port gave {agent:?}; see {log}"
    );
    host.power_off()?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
