//! Boot media end to end (docs/boot-media.md): the hybrid ISO under SeaBIOS and OVMF, PXE through
//! QEMU's TFTP server and the NIC's iPXE ROM with a build-time kernel parameter in effect, the USB
//! disk image under UEFI with its state partition surviving a reboot, a burst of atomic writes
//! to the state partition that QEMU kills never leave it unreadable, adoption and network settings
//! kept on the state partition across a reboot, and a state partition created through the agent's
//! API on a blank disk found at the next boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::keelctl::{ready_fields, Keelctl};
use keel_tests::screen::{open_console, press, wait_for_screen, DOWN};
use keel_tests::{paths, Boot, Error, Firmware, Image, Qemu, QemuBuilder};

/// Firmware plus GRUB plus a TCG boot; OVMF alone takes a few seconds.
const BOOT: Duration = Duration::from_secs(150);
const READY: &str = "keel: boot complete in";
/// The host name the manager sets through the network API.
const HOSTNAME: &str = "keel-persisted";
/// How many times the write burst is killed.
const KILLS: usize = 3;

fn ready(vm: &mut Qemu) -> Result<(), Error> {
    vm.wait_for_line_matching(
        &format!("starting with {READY:?}"),
        |l| l.starts_with(READY),
        BOOT,
    )?;
    Ok(())
}

/// A private scratch directory under the target directory, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = paths::log_dir().join("media").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// A writable copy of the built USB image.
fn usb_copy(image: &Image, name: &str) -> PathBuf {
    let copy = scratch(name).join("keel-usb.img");
    if let Err(e) = std::fs::copy(image.dir.join("keel-usb.img"), &copy) {
        panic!("cannot copy keel-usb.img: {e}");
    }
    copy
}

/// Changes the inode count in the superblock of the USB image's state file system (partition 3,
/// found through the GPT) without fixing its checksum; magic and label stay: found, mount fails.
fn damage_state(disk: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = match std::fs::File::options().read(true).write(true).open(disk) {
        Ok(f) => f,
        Err(e) => panic!("cannot open {}: {e}", disk.display()),
    };
    // GPT entries start at LBA 2, 128 bytes each; an entry's first LBA is at offset 32.
    let mut lba = [0u8; 8];
    let entry3 = 2 * 512 + 2 * 128 + 32;
    let io = file
        .seek(SeekFrom::Start(entry3))
        .and_then(|_| file.read_exact(&mut lba))
        .and_then(|()| file.seek(SeekFrom::Start(u64::from_le_bytes(lba) * 512 + 1024)))
        .and_then(|_| file.write_all(&[0xff]));
    if let Err(e) = io {
        panic!("cannot damage {}: {e}", disk.display());
    }
}

/// Boots the ISO; `state` is what the host must report about its state partition.
fn boot_iso(
    name: &str,
    firmware: Firmware,
    disk: Option<PathBuf>,
    state: &str,
) -> Result<(), Error> {
    let image = Image::locate()?;
    let iso = image.dir.join("keel.iso");
    let mut builder = QemuBuilder::new(name, Boot::Cdrom(iso)).firmware(firmware);
    if let Some(disk) = disk {
        builder = builder.args([
            "-drive",
            &format!("file={},format=raw,if=virtio", disk.display()),
        ]);
    }
    let mut vm = builder.spawn()?;
    vm.wait_for_line(state, BOOT)?;
    ready(&mut vm)
}

/// Under SeaBIOS with a damaged state partition attached: reported, and the host boots anyway.
#[test]
fn iso_boots_under_seabios_despite_damaged_state() -> Result<(), Error> {
    let disk = usb_copy(&Image::locate()?, "damaged");
    damage_state(&disk);
    boot_iso(
        "media-iso-seabios",
        Firmware::SeaBios,
        Some(disk),
        "keel: state: /dev/vda3 is damaged (",
    )
}

#[test]
fn iso_boots_under_ovmf() -> Result<(), Error> {
    boot_iso(
        "media-iso-ovmf",
        Firmware::Ovmf,
        None,
        "keel: state: none, running from RAM only (settings will not survive a reboot)",
    )
}

/// Builds the media again from the image with `keel.debug` added to the build-time command line,
/// then network-boots its `pxe/` directory: with keel.debug in effect PID 1 reports the loaded
/// modules on the console, which it otherwise only logs.
#[test]
fn pxe_boots_with_the_build_time_command_line() -> Result<(), Error> {
    let image = Image::locate()?;
    let out = scratch("pxe-out");
    for name in ["vmlinuz", "initramfs.img"] {
        if let Err(e) = std::fs::copy(image.dir.join(name), out.join(name)) {
            panic!("cannot copy {name}: {e}");
        }
    }
    let cmdline = format!("{} keel.debug", image.cmdline);
    std::fs::write(out.join("cmdline"), format!("{cmdline}\n")).map_err(|source| {
        Error::Create {
            path: out.join("cmdline"),
            source,
        }
    })?;
    std::fs::copy(image.dir.join("manifest.json"), out.join("manifest.json")).map_err(
        |source| Error::Create {
            path: out.join("manifest.json"),
            source,
        },
    )?;
    let builder = paths::image_builder();
    let status = Command::new(&builder)
        .arg("--cache")
        .arg(out.join("cache"))
        .args(["media", "--out"])
        .arg(&out)
        .status()
        .map_err(|source| Error::Spawn {
            program: builder.display().to_string(),
            source,
        })?;
    assert!(status.success(), "{} media failed", builder.display());
    let script = std::fs::read_to_string(out.join("pxe/keel.ipxe")).unwrap_or_default();
    assert!(
        script.contains(&format!("kernel vmlinuz {cmdline}\n")),
        "{script}"
    );

    let boot = Boot::Pxe {
        tftp_dir: out.join("pxe"),
        bootfile: "keel.ipxe".into(),
    };
    let mut vm = QemuBuilder::new("media-pxe", boot).spawn()?;
    vm.wait_for_line_matching(
        "starting with \"keel: modules loaded:\" (keel.debug in effect)",
        |l| l.starts_with("keel: modules loaded:"),
        BOOT,
    )?;
    ready(&mut vm)
}

/// The USB image as a USB stick under UEFI: the state partition is found (after usb-storage's
/// settle delay) and mounted; its boot counter, a file written there at every boot, goes from 1
/// to 2 across a clean power-off; the manager that adopted the host in the first boot still
/// manages it in the second, without adopting it again.
#[test]
fn usb_image_state_survives_a_reboot() -> Result<(), Error> {
    let image = Image::locate()?;
    let disk = usb_copy(&image, "usb");
    let k = Keelctl::with_new_ca("media-usb");
    let mut pinned = String::new();
    for boot in 1..=2 {
        let mut vm = QemuBuilder::new(&format!("media-usb-{boot}"), Boot::UsbStick(disk.clone()))
            .firmware(Firmware::Ovmf)
            .forward(8443)
            .spawn()?;
        vm.wait_for_line(
            &format!("keel: state: /dev/sda3 mounted at /var/lib/keel/state (boot {boot})"),
            BOOT,
        )?;
        ready(&mut vm)?;
        adopted_across_boots(&k, &mut vm, boot, "stick", &mut pinned)?;
        clean_power_off(&mut vm)?;
    }
    Ok(())
}

/// Inside the test image (direct kernel boot, the USB image as its disk): the runner replaces a
/// record on the state partition atomically in a loop and QEMU is killed in the middle, a few
/// times; every boot finds the record whole.
#[test]
fn killing_a_burst_of_atomic_writes_never_corrupts_state() -> Result<(), Error> {
    let test_image = Image::locate_in(&paths::out_dir().join("test"))?;
    let disk = usb_copy(&Image::locate()?, "burst");
    let drive = format!("file={},format=raw,if=virtio", disk.display());
    for round in 0..=KILLS {
        let boot = Boot::image(&test_image).with_params("keel_e2e=state-check,state-burst");
        let mut vm = QemuBuilder::new(&format!("media-burst-{round}"), boot)
            .without_network()
            .args(["-drive", drive.as_str()])
            .spawn()?;
        let check = vm.wait_for_line_matching(
            "the state-check verdict",
            |l| l.contains("E2E PASS state-check") || l.contains("E2E FAIL state-check"),
            BOOT,
        )?;
        assert!(
            check.text.contains("E2E PASS"),
            "round {round}: {}; see {}",
            check.text,
            vm.log_path().display()
        );
        if round == KILLS {
            break;
        }
        vm.wait_for_line("E2E state-burst: writing", BOOT)?;
        // Vary the moment of the kill a little between rounds.
        std::thread::sleep(Duration::from_millis(150 * round as u64));
        drop(vm);
    }
    Ok(())
}

/// Boots the test image (direct kernel boot, faster than firmware and GRUB) with `disk` as its
/// virtio disk and the agent's port forwarded.
fn boot_with_agent(name: &str, disk: &Path) -> Result<Qemu, Error> {
    let test_image = Image::locate_in(&paths::out_dir().join("test"))?;
    QemuBuilder::new(name, Boot::image(&test_image))
        .forward(8443)
        .args([
            "-drive",
            &format!("file={},format=raw,if=virtio", disk.display()),
        ])
        .spawn()
}

/// The agent's ready line: its fingerprint, adoption token and the local address it is reached at.
fn agent_ready(vm: &mut Qemu) -> Result<(String, String, String), Error> {
    let ready = vm.wait_for_line("keel ready: api=https://", BOOT)?;
    let (fingerprint, token) = ready_fields(&ready.text);
    let addr = format!("127.0.0.1:{}", vm.host_port(8443).unwrap_or_default());
    Ok((fingerprint, token, addr))
}

/// Boot 1: the manager adopts the host, calling it `name`. Later boots: the ready line shows the
/// same host key and no adoption token, and keelctl reaches the host without adopting it again.
fn adopted_across_boots(
    k: &Keelctl,
    vm: &mut Qemu,
    boot: u64,
    name: &str,
    pinned: &mut String,
) -> Result<(), Error> {
    let (fingerprint, token, addr) = agent_ready(vm)?;
    if boot == 1 {
        let adopt = [
            "host",
            "adopt",
            &addr,
            "--token",
            &token,
            "--fingerprint",
            &fingerprint,
            "--name",
            name,
        ];
        k.ok(&adopt);
        *pinned = fingerprint;
    } else {
        assert_eq!(&fingerprint, pinned, "the host key changed");
        assert_eq!(token, "-", "the host is no longer adopted");
        k.moved(name, &addr);
    }
    assert_eq!(k.json(&["host", "info"])["fingerprint"], pinned.as_str());
    Ok(())
}

fn clean_power_off(vm: &mut Qemu) -> Result<(), Error> {
    vm.power_off()?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}

/// The USB image's state partition (the test image boots with a copy of the USB image as its
/// disk): the manager adopts the host and changes its host name through the agent's network API;
/// after a reboot the host is still adopted by the same manager (same key, keelctl works without
/// adopting again) and the saved host name is in force.
#[test]
fn usb_state_keeps_adoption_and_network_settings_across_a_reboot() -> Result<(), Error> {
    let disk = usb_copy(&Image::locate()?, "adopt");
    let change = disk.with_file_name("hostname.json");
    std::fs::write(&change, format!(r#"{{"hostname": "{HOSTNAME}"}}"#)).map_err(|source| {
        Error::Create {
            path: change.clone(),
            source,
        }
    })?;
    let change = change.to_string_lossy();
    let k = Keelctl::with_new_ca("media-adopt");
    let mut pinned = String::new();
    for boot in 1..=2u64 {
        let mut vm = boot_with_agent(&format!("media-adopt-{boot}"), &disk)?;
        vm.wait_for_line(
            &format!("keel: state: /dev/vda3 mounted at /var/lib/keel/state (boot {boot})"),
            BOOT,
        )?;
        adopted_across_boots(&k, &mut vm, boot, "usb", &mut pinned)?;
        if boot == 1 {
            k.ok(&["host", "network", "apply", &change]);
            k.ok(&["host", "network", "confirm"]);
            // A second state partition is refused while this one is mounted.
            k.fails(
                &["host", "create-state", "/dev/vda", "--confirm", "/dev/vda"],
                "already mounted",
            );
        }
        let network = k.json(&["host", "network", "show"]);
        assert_eq!(network["persistent"], true, "{network}");
        assert_eq!(network["saved"]["hostname"], HOSTNAME, "{network}");
        assert_eq!(network["config"]["hostname"], HOSTNAME, "{network}");
        let state = k.json(&["host", "state"]);
        assert_eq!(state["state"], "mounted", "{state}");
        assert_eq!(state["boot_count"], boot, "{state}");
        clean_power_off(&mut vm)?;
    }
    Ok(())
}

/// A blank disk again, and the operator at the console: System, "Create state partition",
/// the disk is offered with what erasing it does, y; the next boot finds the partition.
#[test]
fn state_partition_created_on_the_console_is_found_at_boot() -> Result<(), Error> {
    let disk = blank_disk("console")?;
    let mut vm = boot_with_agent("media-console-1", &disk)?;
    vm.wait_for_line("keel: state: none, running from RAM only", BOOT)?;
    agent_ready(&mut vm)?;
    open_console(&mut vm, BOOT)?;
    press(&mut vm, &["6"])?;
    wait_for_screen(&vm, &["State partition: none; settings live in RAM"]);
    press(&mut vm, &[DOWN, "\r"])?;
    wait_for_screen(&vm, &["Disks (Up/Down: choose", "/dev/vda"]);
    press(&mut vm, &["\r"])?;
    wait_for_screen(
        &vm,
        &["This erases /dev/vda (256 MiB)", "Press y to ERASE it"],
    );
    press(&mut vm, &["y"])?;
    wait_for_screen(&vm, &["State partition /dev/vda1 created and mounted"]);
    clean_power_off(&mut vm)?;

    let mut vm = boot_with_agent("media-console-2", &disk)?;
    vm.wait_for_line(
        "keel: state: /dev/vda1 mounted at /var/lib/keel/state (boot 2)",
        BOOT,
    )?;
    clean_power_off(&mut vm)
}

/// A sparse blank disk of 256 MiB in this test's scratch directory.
fn blank_disk(name: &str) -> Result<PathBuf, Error> {
    let disk = scratch(name).join("blank.img");
    let file = std::fs::File::create(&disk).map_err(|source| Error::Create {
        path: disk.clone(),
        source,
    })?;
    file.set_len(256 << 20).map_err(|source| Error::Create {
        path: disk.clone(),
        source,
    })?;
    Ok(disk)
}

/// A blank second disk: the host runs from RAM, the manager adopts it and creates a state
/// partition on the disk through the API (a confirmation naming another disk is refused); it is
/// mounted at once, and the next boot finds it, with the host still adopted by the same manager.
#[test]
fn state_partition_created_through_the_api_is_found_at_boot() -> Result<(), Error> {
    let disk = blank_disk("create")?;
    let k = Keelctl::with_new_ca("media-create");

    let mut vm = boot_with_agent("media-create-1", &disk)?;
    vm.wait_for_line(
        "keel: state: none, running from RAM only (settings will not survive a reboot)",
        BOOT,
    )?;
    let mut pinned = String::new();
    adopted_across_boots(&k, &mut vm, 1, "blank", &mut pinned)?;
    assert_eq!(k.json(&["host", "state"])["state"], "none");
    k.fails(
        &["host", "create-state", "/dev/vda", "--confirm", "/dev/vdb"],
        "does not name the disk /dev/vda",
    );
    let created = k.json(&[
        "host",
        "create-state",
        "/dev/vda",
        "--confirm",
        "/dev/vda",
        "--size-mib",
        "64",
    ]);
    assert_eq!(created["state"], "mounted", "{created}");
    assert_eq!(created["device"], "/dev/vda1", "{created}");
    assert_eq!(created["boot_count"], 1, "{created}");
    assert_eq!(k.json(&["host", "state"]), created);
    clean_power_off(&mut vm)?;

    let mut vm = boot_with_agent("media-create-2", &disk)?;
    vm.wait_for_line(
        "keel: state: /dev/vda1 mounted at /var/lib/keel/state (boot 2)",
        BOOT,
    )?;
    adopted_across_boots(&k, &mut vm, 2, "blank", &mut pinned)
}
