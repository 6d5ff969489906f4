//! The text console as an operator sees it: the console draws with cursor addressing, so tests
//! do not read lines but replay the serial byte stream through a VT100 emulator and look at the
//! 80x24 screen; and they type one key at a time.

use std::time::{Duration, Instant};

use crate::{Error, Qemu};

/// How long a screen may take to show what a key asked for.
pub const SCREEN: Duration = Duration::from_secs(30);

/// The cursor-down key.
pub const DOWN: &str = "\x1b[B";

/// The serial console as an 80x24 terminal shows it now.
pub fn screen(vm: &Qemu) -> String {
    let mut parser = vt100::Parser::new(24, 80, 0);
    for line in vm.lines() {
        parser.process(line.text.as_bytes());
        parser.process(b"\r\n");
    }
    parser.process(vm.partial_line().as_bytes());
    parser.screen().contents()
}

/// Waits until the screen shows every one of `wanted` and none of `gone`.
pub fn wait_for_screen_without(vm: &Qemu, wanted: &[&str], gone: &[&str]) -> String {
    let deadline = Instant::now() + SCREEN;
    loop {
        let text = screen(vm);
        if wanted.iter().all(|w| text.contains(w)) && !gone.iter().any(|g| text.contains(g)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the console never showed {wanted:?} without {gone:?}; the screen is:\n{text}\nsee {}",
            vm.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the screen shows every one of `wanted`.
pub fn wait_for_screen(vm: &Qemu, wanted: &[&str]) -> String {
    wait_for_screen_without(vm, wanted, &[])
}

/// Types `keys` one at a time, as an operator would.
pub fn press(vm: &mut Qemu, keys: &[&str]) -> Result<(), Error> {
    for key in keys {
        vm.send(key)?;
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(())
}

/// The prompt of `keel console --press-enter` on the serial line.
pub const PROMPT: &str = "Keel console: press Enter to open it.";

/// Opens the serial console once its prompt has been printed (before or after any line a test
/// waited for), and waits for its Status screen: keys typed before it are lost.
pub fn open_console(vm: &mut Qemu, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while !vm.lines().iter().any(|l| l.text.contains(PROMPT)) {
        assert!(
            Instant::now() < deadline,
            "the console never prompted; see {}",
            vm.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    vm.send("\r")?;
    wait_for_screen(vm, &["1 Status", "1-6 or F1-F6: screens"]);
    Ok(())
}
