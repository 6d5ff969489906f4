//! Walking skeleton: the built image boots with its default command line, PID 1 reports a usable
//! KVM and a read-only root, and an ACPI power-off shuts it down cleanly so QEMU exits with 0.

use std::time::Duration;

use keel_tests::{paths, Boot, Error, Image, QemuBuilder};

/// Generous for a slow 2-core CI machine; the happy path takes 5-10 s.
const BOOT: Duration = Duration::from_secs(90);
const SHUTDOWN: Duration = Duration::from_secs(60);

#[test]
fn boots_and_powers_off() -> Result<(), Error> {
    let image = Image::locate()?;
    let release = paths::kernel_release_of(&image.kernel)?;
    assert_eq!(
        image.manifest["kernel"]["release"], release,
        "manifest.json disagrees with the kernel's own version string"
    );
    let banner = format!("Keel {} on Linux {release}", env!("CARGO_PKG_VERSION"));
    let mut vm = QemuBuilder::new("boot", Boot::image(&image)).spawn()?;

    // The banner may carry a suffix (", <ms> ms after kernel start").
    vm.wait_for_line_matching(
        &format!("starting with {banner:?}"),
        |l| l.starts_with(&banner),
        BOOT,
    )?;
    vm.wait_for_line_matching(
        "starting with \"keel: boot complete in\"",
        |l| l.starts_with("keel: boot complete in"),
        BOOT,
    )?;
    let lines = vm.lines();
    for expected in [
        "keel: kvm: usable (kvm_amd)",
        "keel: root filesystem: read-only",
    ] {
        assert!(
            lines.iter().any(|l| l.text == expected),
            "no line {expected:?} by the end of boot; see {}",
            vm.log_path().display()
        );
    }

    vm.power_off()?;
    vm.wait_for_line("keel: shutting down (power off)", SHUTDOWN)?;
    vm.wait_for_line("keel: powering off", SHUTDOWN)?;
    let status = vm.wait_exit(SHUTDOWN)?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}
