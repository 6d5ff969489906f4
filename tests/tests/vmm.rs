//! keel-vmm end to end: inside the Keel test image (`make test-image`), the in-host scenario runner
//! starts keel-vmm on the host's /dev/kvm with Debian's cloud kernel and a tiny guest /init, and
//! reports each scenario on the serial console (see tests/payload/src/bin/e2e_runner.rs).

use std::time::Duration;

use keel_tests::{paths, Boot, Error, Image, QemuBuilder};

/// The host boots in ~20 s under TCG; each nested guest boot takes a few seconds more, the
/// 32-vCPU one a minute or two.
const TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn vmm_boots_linux_and_shuts_it_down() -> Result<(), Error> {
    let image = Image::locate_in(&paths::out_dir().join("test"))?;
    let scenarios = ["vmm-boot", "vmm-smp", "vmm-shutdown", "vmm-virtio"];
    let boot = Boot::image(&image).with_params(&format!("keel_e2e={}", scenarios.join(",")));
    let mut host = QemuBuilder::new("vmm", boot).spawn()?;
    host.wait_for_line("E2E DONE", TIMEOUT)?;
    let lines = host.lines();
    let failures: Vec<&str> = lines
        .iter()
        .filter(|l| l.text.contains("E2E FAIL"))
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        failures.is_empty(),
        "{failures:#?}; see {}",
        host.log_path().display()
    );
    for scenario in scenarios {
        let pass = format!("E2E PASS {scenario} ");
        assert!(
            lines.iter().any(|l| l.text.contains(&pass)),
            "{scenario} did not pass; see {}",
            host.log_path().display()
        );
    }
    host.power_off()?;
    host.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
