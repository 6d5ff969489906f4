//! Host networking end to end (docs/network.md), on QEMU's user network (DHCP server 10.0.2.2
//! handing out 10.0.2.15/24, DNS 10.0.2.3):
//! - the defaults: the management bridge keelbr0 over the NIC with link gets its DHCP lease;
//! - a static `ip=` in dracut syntax on a bridge over an active-backup bond of two NICs (the
//!   bridge, bonding drivers loaded on demand), with the gateway answering through it, and the
//!   bond failing over to the second NIC when the first one's link is cut;
//! - `keel.vlan=` puts the management bridge on a VLAN interface of the NIC.

use std::time::Duration;

use keel_tests::{Boot, Error, Image, Qemu, QemuBuilder};

/// The host boots in ~20 s under TCG; DHCP adds a second or two.
const TIMEOUT: Duration = Duration::from_secs(120);

fn shut_down(mut vm: Qemu) -> Result<(), Error> {
    vm.power_off()?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[test]
fn dhcp_on_the_management_bridge() -> Result<(), Error> {
    let image = Image::locate()?;
    let mut vm = QemuBuilder::new("net-dhcp", Boot::image(&image)).spawn()?;
    vm.wait_for_line(
        "keel: network: keelbr0 10.0.2.15/24 via dhcp, gateway 10.0.2.2",
        TIMEOUT,
    )?;
    let lines = vm.lines();
    let note = "keel: network: settings will not survive a reboot (no persistent state partition)";
    assert!(
        lines.iter().any(|l| l.text == note),
        "no {note:?}; see {}",
        vm.log_path().display()
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.text.contains("keel: network: ignoring")),
        "unexpected warnings; see {}",
        vm.log_path().display()
    );
    shut_down(vm)
}

#[test]
fn static_ip_on_a_bonded_bridge() -> Result<(), Error> {
    let image = Image::locate()?;
    // loglevel=7: the kernel's bonding messages are info, which Keel keeps off the console
    // unless the command line asks for them (docs/agent.md, Logging); the failover is read there.
    let boot = Boot::image(&image).with_params(
        "ip=10.0.2.15::10.0.2.2:255.255.255.0:keelhost:eth0:none keel.bond=bond0:eth0,eth1 keel.dns=10.0.2.3 loglevel=7",
    );
    let mut vm = QemuBuilder::new("net-static-bond", boot)
        .args([
            "-netdev",
            "user,id=net1",
            "-device",
            "virtio-net-pci,netdev=net1",
        ])
        .spawn()?;
    vm.wait_for_line(
        "keel: network: keelbr0 10.0.2.15/24 static, gateway 10.0.2.2",
        TIMEOUT,
    )?;
    vm.wait_for_line("keel: network: gateway 10.0.2.2 answers", TIMEOUT)?;
    // eth0 is enslaved first and so active; cutting its link fails over to eth1 (miimon).
    vm.qmp()?.set_link("net0", false)?;
    vm.wait_for_line(
        "bond0: (slave eth1): making interface the new active one",
        Duration::from_secs(30),
    )?;
    assert!(
        !vm.lines().iter().any(|l| l.text.contains("via dhcp")),
        "DHCP ran on a static configuration; see {}",
        vm.log_path().display()
    );
    shut_down(vm)
}

#[test]
fn management_bridge_on_a_vlan() -> Result<(), Error> {
    let image = Image::locate_in(&keel_tests::paths::out_dir().join("test"))?;
    let boot = Boot::image(&image).with_params(
        "ip=10.0.2.15::10.0.2.2:255.255.255.0:keelhost:eth0:none keel.vlan=42 keel_e2e=net-links",
    );
    let mut vm = QemuBuilder::new("net-vlan", boot).spawn()?;
    vm.wait_for_line(
        "keel: network: keelbr0 10.0.2.15/24 static, gateway 10.0.2.2",
        TIMEOUT,
    )?;
    vm.wait_for_line("E2E DONE", TIMEOUT)?;
    let links: Vec<String> = vm
        .lines()
        .iter()
        .filter(|l| l.text.contains("E2E LINK "))
        .map(|l| l.text.clone())
        .collect();
    for want in [
        "E2E LINK eth0 master=- vlan=-",
        "E2E LINK eth0.42 master=keelbr0 vlan=42@eth0",
        "E2E LINK keelbr0 master=- vlan=-",
    ] {
        assert!(
            links.iter().any(|l| l.ends_with(want)),
            "{want:?} not among {links:#?}; see {}",
            vm.log_path().display()
        );
    }
    shut_down(vm)
}
