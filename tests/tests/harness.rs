//! Self-test of the QEMU harness against a real kernel booted without an initramfs: it panics with
//! "VFS: Unable to mount root fs", and `panic=-1` plus `-no-reboot` make QEMU exit. That exercises
//! console capture, timestamps, a timed-out wait with context, port forwarding setup, QMP and exit.
//!
//! The kernel is `KEEL_HARNESS_KERNEL` if set, else the image's `vmlinuz` (`KEEL_OUT`).

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_tests::qemu::NETDEV_ID;
use keel_tests::{paths, Boot, Error, Image, QemuBuilder, QmpError};

const BOOT: Duration = Duration::from_secs(90);

fn kernel() -> Result<PathBuf, Error> {
    match std::env::var_os("KEEL_HARNESS_KERNEL") {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ => Ok(Image::locate()?.kernel),
    }
}

fn panicking_kernel() -> Result<Boot, Error> {
    Ok(Boot::Kernel {
        kernel: kernel()?,
        initrd: None,
        cmdline: "console=ttyS0 panic=-1".into(),
    })
}

#[test]
fn captures_console_times_out_with_context_and_exits() -> Result<(), Error> {
    let kernel = kernel()?;
    let release = paths::kernel_release_of(&kernel)?;
    let mut vm = QemuBuilder::new("harness-capture", panicking_kernel()?)
        .forward(22)
        .spawn()?;

    let version = vm.wait_for_line("Linux version", BOOT)?;
    assert!(
        version.text.contains(&release),
        "{version:?} lacks {release}"
    );
    assert!(version.at > Duration::ZERO);

    // A wait that cannot succeed fails after its timeout, naming what it waited for and showing
    // the last console lines, which are a contiguous run of the captured lines.
    let started = Instant::now();
    let err = match vm.wait_for_line("no kernel prints this", Duration::from_secs(1)) {
        Err(err) => err,
        Ok(line) => panic!("matched {line:?}"),
    };
    assert!(started.elapsed() >= Duration::from_secs(1));
    let Error::Timeout { context, .. } = &err else {
        panic!("expected a timeout, got {err}");
    };
    let all = vm.lines();
    assert!(
        !context.is_empty() && context.len() <= 50,
        "{} lines",
        context.len()
    );
    assert!(all.windows(context.len()).any(|w| w == context.as_slice()));
    let message = err.to_string();
    assert!(
        message.starts_with(
            "Timed out after 1s waiting for a console line containing \"no kernel prints this\"; last "
        ),
        "{message}"
    );
    assert!(
        message.ends_with(&context[context.len() - 1].text),
        "{message}"
    );

    // The forwarded port is listened on by QEMU's user network.
    let Some(host) = vm.host_port(22) else {
        panic!("no host port for guest port 22");
    };
    TcpStream::connect((Ipv4Addr::LOCALHOST, host)).map_err(Error::Port)?;
    assert_eq!(vm.host_port(80), None);

    vm.wait_for_line("VFS: Unable to mount root fs", BOOT)?;
    let status = vm.wait_exit(BOOT)?;
    assert!(status.success(), "QEMU exited with {status}");

    let lines = vm.lines();
    assert!(lines.len() > 100, "only {} lines", lines.len());
    assert!(
        lines.windows(2).all(|w| w[0].at <= w[1].at),
        "timestamps go backwards"
    );
    assert!(lines.iter().all(|l| !l.text.ends_with('\r')));

    // After exit a wait fails at once with the reason instead of running into its timeout.
    let started = Instant::now();
    let err = vm.wait_for_line("Linux version", BOOT).err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let Some(Error::ConsoleClosed { status, .. }) = &err else {
        panic!("expected a closed console, got {err:?}");
    };
    assert!(
        status.starts_with("QEMU exited with exit status: 0"),
        "{status}"
    );

    let log = std::fs::read_to_string(vm.log_path()).map_err(|source| Error::Read {
        path: vm.log_path().to_owned(),
        source,
    })?;
    assert!(log.starts_with("# qemu-system-x86_64 "), "{log:.200}");
    assert!(log.contains("] Kernel panic - not syncing: VFS: Unable to mount root fs"));
    Ok(())
}

#[test]
fn qmp_commands_errors_and_quit() -> Result<(), Error> {
    let mut vm = QemuBuilder::new("harness-qmp", panicking_kernel()?)
        .memory_mib(512)
        .cpus(1)
        .spawn()?;
    vm.wait_for_line("Linux version", BOOT)?;

    let status = vm.qmp()?.execute("query-status", None)?;
    assert_eq!(status["status"], "running", "{status}");
    vm.qmp()?.set_link(NETDEV_ID, false)?;
    vm.qmp()?.set_link(NETDEV_ID, true)?;
    let err = vm.qmp()?.set_link("no-such-nic", false).err();
    assert!(
        matches!(&err, Some(QmpError::Command { class, .. }) if class == "DeviceNotFound" || class == "GenericError"),
        "{err:?}"
    );
    let err = vm.qmp()?.execute("no-such-command", None).err();
    assert!(
        matches!(&err, Some(QmpError::Command { class, .. }) if class == "CommandNotFound"),
        "{err:?}"
    );

    vm.qmp()?.quit()?;
    let status = vm.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[test]
fn drop_kills_qemu() -> Result<(), Error> {
    let vm = QemuBuilder::new("harness-drop", panicking_kernel()?)
        .memory_mib(256)
        .cpus(1)
        .spawn()?;
    let proc_dir = PathBuf::from(format!("/proc/{}", vm.pid()));
    assert!(proc_dir.exists());
    drop(vm);
    assert!(!proc_dir.exists(), "QEMU outlived its Qemu");
    Ok(())
}

#[test]
fn early_exit_reports_qemu_stderr() -> Result<(), Error> {
    let err = QemuBuilder::new("harness-bad-arg", panicking_kernel()?)
        .args(["-no-such-option"])
        .spawn()
        .err();
    let Some(Error::EarlyExit { stderr, .. }) = &err else {
        panic!("expected an early exit, got {err:?}");
    };
    assert!(stderr.contains("-no-such-option"), "{stderr}");
    Ok(())
}
