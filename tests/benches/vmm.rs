//! `make bench`: boots the test image once in QEMU and has the in-host runner measure keel-vmm
//! (boot timer: VMM start to the guest's /init; VMM memory overhead with 1 vCPU and 128 MiB), then
//! prints the figures. Medians over several runs; nothing here asserts a speed.

use std::process::ExitCode;
use std::time::Duration;

use keel_tests::{paths, Boot, Error, Image, QemuBuilder};

fn run() -> Result<(), Error> {
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let boot = Boot::image(&image).with_params("keel_e2e=vmm-bench,vmm-virtio-bench");
    let mut host = QemuBuilder::new("bench-vmm", boot).spawn()?;
    host.wait_for_line("E2E DONE", Duration::from_secs(600))?;
    let lines = host.lines();
    for line in &lines {
        let text = line.text.as_str();
        if text.starts_with("keel: boot complete in") {
            println!("host (Keel in QEMU/TCG): {text}");
        }
        if let Some(figure) = text.split("E2E BENCH ").nth(1) {
            println!("{figure}");
        }
        if text.contains("E2E FAIL") {
            eprintln!("{text}; see {}", host.log_path().display());
        }
    }
    host.power_off()?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

fn main() -> ExitCode {
    keel_tests::bench_main(run)
}
