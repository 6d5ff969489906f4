//! The text console on the serial line (console=ttyS0) with the real agent behind it, in one
//! boot: it waits for Enter; the Status screen shows the Keel version, the host key
//! fingerprint and the adoption token of the agent's `keel ready:` line, and eth0 with its MAC;
//! the Logs screen shows kernel and Keel lines; keystrokes on the Network screen change the
//! DHCP address to the same address set statically, apply and confirm it, and the agent's API
//! answers there; the gateway answers a ping; resetting the adoption asks first and shows a new
//! token.
//!
//! The console draws with cursor addressing, so the test reads the 80x24 screen through a VT100
//! emulator (`keel_tests::screen`).

use std::time::{Duration, Instant};

use keel_init::agent::api::AdoptionPhase;
use keel_tests::screen::{press, wait_for_screen, wait_for_screen_without, DOWN, SCREEN};
use keel_tests::{Boot, Error, Image, Qemu, QemuBuilder};
use keel_trust::client::HostClient;
use keel_trust::fingerprint::Fingerprint;

const BOOT: Duration = Duration::from_secs(120);

/// `keel ready: api=https://<ip>:8443 fingerprint=sha256:<hex> adopt-token=<token>`.
fn ready_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_default()
        .to_string()
}

/// The first console line so far, or to come, containing `needle`.
fn any_line(vm: &Qemu, needle: &str) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        if let Some(line) = vm.lines().into_iter().find(|l| l.text.contains(needle)) {
            return line.text;
        }
        assert!(
            Instant::now() < deadline,
            "no console line contains {needle:?}; see {}",
            vm.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn serial_console_with_the_agent() -> Result<(), Error> {
    let image = Image::locate()?;
    let mut vm = QemuBuilder::new("console", Boot::image(&image))
        .forward(8443)
        .spawn()?;
    // The agent and the console start together: their lines come in either order.
    vm.wait_for_line("Keel console: press Enter to open it.", BOOT)?;
    let ready = any_line(&vm, "keel ready: api=https://10.0.2.15:8443");
    let fingerprint = ready_field(&ready, "fingerprint=");
    let token = ready_field(&ready, "adopt-token=");
    vm.send("\r")?;

    let version = format!("Keel {}", env!("CARGO_PKG_VERSION"));
    let status = wait_for_screen(
        &vm,
        &[
            &version,
            "1 Status",
            &format!("Not adopted. Adoption token: {token}"),
            &fingerprint,
            "eth0 ",
            "CPU ",
        ],
    );
    let eth0 = status
        .lines()
        .find(|l| l.starts_with("eth0 "))
        .unwrap_or("");
    assert!(
        eth0.contains("52:54:00:"),
        "eth0 shows its MAC: {eth0:?}\n{status}"
    );

    // Logs, scrolled to the oldest record: the kernel's first line.
    vm.send("5")?;
    wait_for_screen(&vm, &["Up/Down PgUp/PgDn Home/End: scroll"]);
    vm.send("\x1b[1~")?;
    wait_for_screen(&vm, &["kernel Linux version 6."]);
    // Back to the newest: Keel's own lines are there too.
    vm.send("\x1b[4~")?;
    wait_for_screen(&vm, &["keel   keel: "]);

    // Network: the form shows the running DHCP configuration; make it static, apply, confirm.
    vm.send("2")?;
    wait_for_screen(&vm, &["< eth0 >", "< DHCP >"]);
    press(&mut vm, &[DOWN, DOWN, DOWN, DOWN, " ", DOWN])?;
    press(&mut vm, &["10.0.2.15/24", DOWN, "10.0.2.2"])?;
    press(&mut vm, &[DOWN, DOWN, DOWN, DOWN, DOWN, "\r"])?;
    wait_for_screen(&vm, &["< static >", "Applied. Confirm within 60 s"]);
    press(&mut vm, &[DOWN, "\r"])?;
    wait_for_screen(&vm, &["Confirmed: the new settings stay."]);
    vm.wait_for_line("keel: network: change confirmed", SCREEN)?;
    // The agent's API answers on the static address (forwarded to 10.0.2.15:8443).
    let port = vm.host_port(8443).unwrap_or_default();
    let pin: Fingerprint = fingerprint
        .parse()
        .unwrap_or_else(|e| panic!("{fingerprint:?}: {e}"));
    let health = HostClient::new(([127, 0, 0, 1], port).into(), pin, None)
        .and_then(|client| client.health())
        .unwrap_or_else(|e| panic!("the API does not answer on 10.0.2.15: {e}"));
    assert_eq!(health.adoption, AdoptionPhase::NotAdopted);

    // Test network, through the agent: the static gateway answers.
    vm.send("4")?;
    vm.send("\r")?;
    wait_for_screen(&vm, &["OK   Ping: reply from 10.0.2.2"]);

    // System: resetting the adoption asks first, then Status shows a new token.
    vm.send("6")?;
    vm.send("\r")?;
    wait_for_screen(&vm, &["are you sure? Press y to go ahead, n to cancel."]);
    vm.send("y")?;
    wait_for_screen(&vm, &["Reset adoption: done."]);
    vm.send("1")?;
    // The status is refreshed every second: wait for the new token to replace the old one.
    wait_for_screen_without(&vm, &["Not adopted. Adoption token: "], &[&token]);

    vm.power_off()?;
    vm.wait_for_line("keel: powering off", Duration::from_secs(60))?;
    vm.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
