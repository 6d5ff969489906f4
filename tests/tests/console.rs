//! The text console on the serial line (console=ttyS0): it waits for Enter, then shows the
//! Status screen with the Keel version and the host's NIC, and, while no agent serves the console
//! socket, says so plainly; the Logs screen shows kernel and Keel lines; the network test runs
//! without the agent; resetting the adoption asks first.
//!
//! The console draws with cursor addressing, so the test does not read lines: it replays the
//! serial byte stream through a VT100 emulator and looks at the 80x24 screen.

use std::time::{Duration, Instant};

use keel_tests::{Boot, Error, Image, Qemu, QemuBuilder};

const BOOT: Duration = Duration::from_secs(120);
const SCREEN: Duration = Duration::from_secs(30);

/// The serial console as an 80x24 terminal shows it now.
fn screen(vm: &Qemu) -> String {
    let mut parser = vt100::Parser::new(24, 80, 0);
    for line in vm.lines() {
        parser.process(line.text.as_bytes());
        parser.process(b"\r\n");
    }
    parser.process(vm.partial_line().as_bytes());
    parser.screen().contents()
}

/// Waits until the screen shows every one of `wanted`.
fn wait_for_screen(vm: &Qemu, wanted: &[&str]) -> String {
    let deadline = Instant::now() + SCREEN;
    loop {
        let text = screen(vm);
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the console never showed {wanted:?}; the screen is:\n{text}\nsee {}",
            vm.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn serial_console_shows_status_and_logs() -> Result<(), Error> {
    let image = Image::locate()?;
    let mut vm = QemuBuilder::new("console", Boot::image(&image)).spawn()?;
    vm.wait_for_line("keel: boot complete in", BOOT)?;
    vm.wait_for_line("Keel console: press Enter to open it.", BOOT)?;
    vm.send("\r")?;

    let version = format!("Keel {}", env!("CARGO_PKG_VERSION"));
    let status = wait_for_screen(
        &vm,
        &[
            &version,
            "1 Status",
            "Agent not reachable: Cannot reach the agent at /run/keel/console.sock",
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
    vm.send("4")?;
    wait_for_screen(&vm, &["Up/Down PgUp/PgDn Home/End: scroll"]);
    vm.send("\x1b[1~")?;
    wait_for_screen(&vm, &["kernel Linux version 6."]);
    // Back to the newest: Keel's own lines are there too.
    vm.send("\x1b[4~")?;
    wait_for_screen(&vm, &["keel   keel: "]);

    // Test network: without the agent the console runs the test itself, against the gateway
    // PID 1's DHCP client got from QEMU's user network.
    vm.send("3")?;
    vm.send("\r")?;
    wait_for_screen(&vm, &["OK   Ping: reply from 10.0.2.2"]);

    // System: resetting the adoption asks first, and says plainly that the agent is missing.
    vm.send("5")?;
    vm.send("\r")?;
    wait_for_screen(&vm, &["are you sure? Press y to go ahead, n to cancel."]);
    vm.send("y")?;
    wait_for_screen(
        &vm,
        &["failed: Cannot reach the agent at /run/keel/console.sock"],
    );

    vm.power_off()?;
    vm.wait_for_line("keel: powering off", Duration::from_secs(60))?;
    vm.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
