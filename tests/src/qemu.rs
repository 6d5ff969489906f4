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

/// What the machine boots from. Further media (ISO, PXE, disk image) become further variants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Boot {
    /// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
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

    /// Appends kernel parameters (for example `keel.debug`) to a direct kernel boot.
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
        }
    }
}

/// How to start QEMU. Defaults: q35, TCG with an EPYC CPU offering SVM (so the guest's kvm_amd
/// works; qemu64 lacks XSAVE), 2048 MiB, 2 CPUs, a virtio-net NIC on the user network.
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
            cpus: 2,
            nic_model: Some("virtio-net-pci".into()),
            guest_ports: Vec::new(),
            extra_args: Vec::new(),
        }
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
                format!("user,id={NETDEV_ID}{}", ports::hostfwd_options(forwards)).into(),
                "-device".into(),
                format!("{model},netdev={NETDEV_ID}").into(),
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
            "-machine q35 -accel tcg -cpu EPYC,+svm,+npt -m 2048 -smp 2 -nodefaults \
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
                QemuBuilder::new("t", kernel_boot()).memory_mib(512).cpus(1),
                &["-m 512", "-smp 1"],
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
    fn with_params_appends_with_one_space() {
        let Boot::Kernel { cmdline, .. } = kernel_boot().with_params("keel.debug");
        assert_eq!(cmdline, "console=ttyS0 panic=-1 keel.debug");
        let Boot::Kernel { cmdline, .. } = kernel_boot().with_params("");
        assert_eq!(cmdline, "console=ttyS0 panic=-1");
    }
}
