//! What to boot and how to start QEMU: the `Boot` medium and the `QemuBuilder` that turns options
//! into a QEMU command line. `QemuBuilder::spawn` gives a running `machine::Qemu`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::machine::Qemu;
use crate::paths::Image;
use crate::ports::{self, Forward};

/// The `-netdev` id of the user network, for `Qmp::set_link`.
pub const NETDEV_ID: &str = "net0";

/// What the machine boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Boot {
    /// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware boots a CD (`-cdrom`), e.g. `out/keel.iso`.
    Cdrom(PathBuf),
    /// The firmware boots a raw disk image on virtio-blk; QEMU writes to it, so pass a copy.
    Disk(PathBuf),
    /// The firmware boots a raw disk image as a USB stick (xHCI, usb-storage); pass a copy.
    UsbStick(PathBuf),
    /// The NIC's iPXE ROM boots `bootfile` from QEMU's built-in TFTP server serving `tftp_dir`.
    Pxe { tftp_dir: PathBuf, bootfile: String },
}

/// The firmware: SeaBIOS (QEMU's default, legacy BIOS) or OVMF (UEFI, from Debian's `ovmf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    SeaBios,
    Ovmf,
}

/// OVMF's code (read-only) and the variable store template copied for each run.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Where a run's private copy of the OVMF variable store lives: beside its QMP socket.
pub fn ovmf_vars_path(qmp_socket: &Path) -> PathBuf {
    qmp_socket
        .parent()
        .unwrap_or(Path::new("."))
        .join("OVMF_VARS.fd")
}

impl Boot {
    /// The built Keel image with its default kernel command line.
    pub fn image(image: &Image) -> Boot {
        Boot::Kernel {
            kernel: image.kernel.clone(),
            initrd: Some(image.initrd.clone()),
            cmdline: image.cmdline.clone(),
        }
    }

    /// Appends kernel parameters (for example `keel.debug`) to a direct kernel boot. Boot media
    /// carry their command line in their boot loader configuration and are returned unchanged.
    pub fn with_params(self, params: &str) -> Boot {
        match self {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => Boot::Kernel {
                kernel,
                initrd,
                cmdline: [cmdline.as_str(), params]
                    .iter()
                    .filter(|part| !part.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            },
            other => other,
        }
    }

    /// Options for the user network's `-netdev` (PXE serves TFTP there).
    fn netdev_options(&self) -> String {
        match self {
            Boot::Pxe { tftp_dir, bootfile } => {
                format!(",tftp={},bootfile={bootfile}", tftp_dir.display())
            }
            _ => String::new(),
        }
    }

    fn args(&self) -> Vec<OsString> {
        match self {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut args = vec!["-kernel".into(), kernel.into()];
                if let Some(initrd) = initrd {
                    args.extend(["-initrd".into(), initrd.into()]);
                }
                args.extend(["-append".into(), cmdline.into()]);
                args
            }
            Boot::Cdrom(iso) => vec!["-cdrom".into(), iso.into()],
            Boot::Disk(image) => {
                let mut drive = OsString::from("file=");
                drive.push(image);
                drive.push(",format=raw,if=virtio");
                vec!["-drive".into(), drive]
            }
            Boot::UsbStick(image) => {
                let mut drive = OsString::from("if=none,id=stick,format=raw,file=");
                drive.push(image);
                vec![
                    "-device".into(),
                    "qemu-xhci".into(),
                    "-drive".into(),
                    drive,
                    "-device".into(),
                    "usb-storage,drive=stick,bootindex=1".into(),
                ]
            }
            Boot::Pxe { .. } => vec!["-boot".into(), "n".into()],
        }
    }
}

/// How to start QEMU. Defaults: q35, TCG with an EPYC CPU offering SVM (so the guest's kvm_amd
/// works; qemu64 lacks XSAVE), 2048 MiB, 1 CPU, a virtio-net NIC on the user network.
///
/// One CPU, because with two the host kernel now and then hung under TCG in an RCU stall: one
/// vCPU spinning in smp_call_function_many_cond while the other sat in the int3 handler of
/// kernel text patching (module loading), mostly when two QEMUs shared the two cores. With one
/// CPU there is no cross-CPU call to lose. Single-threaded TCG with two CPUs is no way out: it
/// schedules them round-robin, and nested guests then crawl (an SMP guest missed 90 s). Nested
/// guests with two vCPUs run fine on one host CPU.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    pub(crate) name: String,
    boot: Boot,
    pub(crate) program: OsString,
    machine: String,
    cpu: String,
    memory_mib: u32,
    cpus: u32,
    pub(crate) nic_model: Option<String>,
    pub(crate) guest_ports: Vec<u16>,
    extra_args: Vec<OsString>,
    pub(crate) firmware: Firmware,
}

impl QemuBuilder {
    /// `name` names the console log, `target/e2e-logs/<name>.log`; keep it unique per run.
    pub fn new(name: &str, boot: Boot) -> QemuBuilder {
        QemuBuilder {
            name: name.to_owned(),
            boot,
            program: std::env::var_os("KEEL_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()),
            machine: "q35".into(),
            cpu: "EPYC,+svm,+npt".into(),
            memory_mib: 2048,
            cpus: 1,
            nic_model: Some("virtio-net-pci".into()),
            guest_ports: Vec::new(),
            extra_args: Vec::new(),
            firmware: Firmware::default(),
        }
    }

    /// The firmware; OVMF gets a fresh copy of its variable store for each run.
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The NIC device on the user network, for example `e1000`.
    pub fn nic_model(mut self, model: &str) -> Self {
        self.nic_model = Some(model.to_owned());
        self
    }

    /// No network at all (port forwards are then ignored).
    pub fn without_network(mut self) -> Self {
        self.nic_model = None;
        self
    }

    /// Forwards a free port of 127.0.0.1 to `guest_port`; see `Qemu::host_port`.
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.guest_ports.push(guest_port);
        self
    }

    /// Raw QEMU arguments appended to the command line (extra drives, NICs, devices).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The full QEMU argument list, given the QMP socket path and the chosen port forwards.
    pub fn command_args(&self, qmp_socket: &Path, forwards: &[Forward]) -> Vec<OsString> {
        let mut qmp = OsString::from("unix:");
        qmp.push(qmp_socket);
        qmp.push(",server=on,wait=off");
        let mut args: Vec<OsString> = [
            "-machine",
            &self.machine,
            "-accel",
            "tcg",
            "-cpu",
            &self.cpu,
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
            "-qmp",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(qmp);
        if let Some(model) = &self.nic_model {
            args.extend([
                "-netdev".into(),
                format!(
                    "user,id={NETDEV_ID}{}{}",
                    ports::hostfwd_options(forwards),
                    self.boot.netdev_options()
                )
                .into(),
                "-device".into(),
                format!("{model},netdev={NETDEV_ID}").into(),
            ]);
        }
        if self.firmware == Firmware::Ovmf {
            let mut vars = OsString::from("if=pflash,format=raw,file=");
            vars.push(ovmf_vars_path(qmp_socket));
            args.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}").into(),
                "-drive".into(),
                vars,
            ]);
        }
        args.extend(self.boot.args());
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts QEMU and connects to its QMP socket.
    pub fn spawn(self) -> Result<Qemu, Error> {
        Qemu::start(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kernel_boot() -> Boot {
        Boot::Kernel {
            kernel: "/o/vmlinuz".into(),
            initrd: Some("/o/initramfs.img".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn default_command_line() {
        let builder = QemuBuilder::new("t", kernel_boot());
        let args = strings(builder.command_args(Path::new("/run/q.sock"), &[]));
        let (cmdline, rest) = args.split_last().unwrap();
        assert_eq!(
            rest.join(" "),
            "-machine q35 -accel tcg -cpu EPYC,+svm,+npt -m 2048 -smp 1 -nodefaults \
             -display none -no-reboot -chardev stdio,id=console,signal=off \
             -serial chardev:console -qmp unix:/run/q.sock,server=on,wait=off \
             -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
             -kernel /o/vmlinuz -initrd /o/initramfs.img -append"
        );
        // The command line is one argument, spaces and all.
        assert_eq!(cmdline, "console=ttyS0 panic=-1");
    }

    #[test]
    fn options_table() {
        let forwards = [Forward {
            host: 40000,
            guest: 22,
        }];
        let cases: Vec<(QemuBuilder, &[&str], &[&str])> = vec![
            (
                QemuBuilder::new("t", kernel_boot()).memory_mib(512).cpus(2),
                &["-m 512", "-smp 2"],
                &["-m 2048"],
            ),
            (
                QemuBuilder::new("t", kernel_boot()).nic_model("e1000"),
                &[
                    "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:40000-:22",
                    "-device e1000,netdev=net0",
                ],
                &["virtio-net-pci"],
            ),
            (
                QemuBuilder::new("t", kernel_boot()).without_network(),
                &["-no-reboot"],
                &["-netdev", "-device"],
            ),
            (
                QemuBuilder::new("t", kernel_boot()).args(["-drive", "file=/d.img,if=virtio"]),
                &["-append console=ttyS0 panic=-1 -drive file=/d.img,if=virtio"],
                &[],
            ),
            (
                QemuBuilder::new(
                    "t",
                    Boot::Kernel {
                        kernel: "/k".into(),
                        initrd: None,
                        cmdline: String::new(),
                    }
                    .with_params("quiet"),
                ),
                &["-kernel /k -append quiet"],
                &["-initrd"],
            ),
        ];
        for (builder, present, absent) in cases {
            let line = strings(builder.command_args(Path::new("/q"), &forwards)).join(" ");
            for want in present {
                assert!(line.contains(want), "{want:?} missing from {line}");
            }
            for unwanted in absent {
                assert!(!line.contains(unwanted), "{unwanted:?} in {line}");
            }
        }
    }

    #[test]
    fn boot_media_and_firmware() {
        let cases: Vec<(QemuBuilder, &[&str])> = vec![
            (
                QemuBuilder::new("t", Boot::Cdrom("/o/keel.iso".into())),
                &["-device virtio-net-pci,netdev=net0 -cdrom /o/keel.iso"],
            ),
            (
                QemuBuilder::new("t", Boot::Disk("/t/usb.img".into())).firmware(Firmware::Ovmf),
                &[
                    "-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                     -drive if=pflash,format=raw,file=/run/OVMF_VARS.fd \
                     -drive file=/t/usb.img,format=raw,if=virtio",
                ],
            ),
            (
                QemuBuilder::new("t", Boot::UsbStick("/t/usb.img".into())),
                &["-device qemu-xhci -drive if=none,id=stick,format=raw,file=/t/usb.img \
                   -device usb-storage,drive=stick,bootindex=1"],
            ),
            (
                QemuBuilder::new(
                    "t",
                    Boot::Pxe {
                        tftp_dir: "/o/pxe".into(),
                        bootfile: "keel.ipxe".into(),
                    },
                ),
                &["-netdev user,id=net0,tftp=/o/pxe,bootfile=keel.ipxe -device virtio-net-pci,netdev=net0 -boot n"],
            ),
        ];
        for (builder, present) in cases {
            let line = strings(builder.command_args(Path::new("/run/q.sock"), &[])).join(" ");
            for want in present {
                assert!(line.contains(want), "{want:?} missing from {line}");
            }
            assert!(!line.contains("-kernel"), "{line}");
        }
        assert_eq!(
            Boot::Cdrom("/x".into()).with_params("keel.debug"),
            Boot::Cdrom("/x".into())
        );
    }

    #[test]
    fn with_params_appends_with_one_space() {
        let cmdline_of = |boot: Boot| match boot {
            Boot::Kernel { cmdline, .. } => cmdline,
            other => panic!("not a kernel boot: {other:?}"),
        };
        assert_eq!(
            cmdline_of(kernel_boot().with_params("keel.debug")),
            "console=ttyS0 panic=-1 keel.debug"
        );
        assert_eq!(
            cmdline_of(kernel_boot().with_params("")),
            "console=ttyS0 panic=-1"
        );
    }
}
