//! `vm.json`: the configuration of one VM. (Types fixed by the lead as the contract between helpers;
//! the config helper owns this file: parsing, validation and its tests.)
//!
//! Two steps, both naming the offending value: [`VmConfig::from_file`] parses (serde rejects unknown
//! fields and wrong types with the line and column), [`VmConfig::validate`] checks values against
//! the host (vCPU limit reported by KVM, readable kernel and initrd, boot protocol limits).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod devices;
pub use devices::{DiskConfig, NicConfig};

/// One VM, as read from `vm.json`. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1 up to what KVM reports.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Kernel image: bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Where the guest's COM1 output goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// virtio-blk disks, in PCI slot order (the guest names them vda, vdb, …).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs on tap devices.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// A virtio-rng entropy device.
    #[serde(default)]
    pub rng: bool,
}

/// Destination of the guest's serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "SerialRepr")]
pub enum SerialConfig {
    /// The VMM's standard output (and standard input feeds the guest).
    #[default]
    Stdout,
    /// Appended to a file.
    File { path: PathBuf },
    /// A unix socket the VMM listens on; one client at a time reads and writes the console.
    Socket { path: PathBuf },
    /// Discarded.
    Off,
}

/// How `serial` is spelled in JSON. serde ignores `deny_unknown_fields` on the unit variants of an
/// internally tagged enum (`{"mode": "off", "typo": 1}` would pass), so every variant here is a
/// struct variant, which does reject unknown fields.
#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum SerialRepr {
    Stdout {},
    File { path: PathBuf },
    Socket { path: PathBuf },
    Off {},
}

impl From<SerialRepr> for SerialConfig {
    fn from(repr: SerialRepr) -> Self {
        match repr {
            SerialRepr::Stdout {} => SerialConfig::Stdout,
            SerialRepr::File { path } => SerialConfig::File { path },
            SerialRepr::Socket { path } => SerialConfig::Socket { path },
            SerialRepr::Off {} => SerialConfig::Off,
        }
    }
}

/// Smallest guest: below this a Linux guest cannot even decompress its kernel.
pub const MIN_MEMORY_MIB: u32 = 16;
/// Largest guest: 1 TiB. Guards against typos (a GiB value in a MiB field) long before the host
/// would refuse the mmap.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Room for the kernel command line including its terminating NUL: x86 Linux's
/// `COMMAND_LINE_SIZE` (boot protocol `cmdline_size`), which is also what the VMM gives linux-loader.
pub const CMDLINE_CAPACITY: usize = 2048;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// A configuration that could not be read, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// {path}: cannot read: {source}
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// {path}: {source}
    // serde_json's message ends with "at line L column C".
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// vcpus {0}: must be at least 1
    #[error("vcpus {0}: must be at least 1")]
    NoVcpus(u8),
    /// vcpus {vcpus}: KVM on this host supports at most {max}
    #[error("vcpus {vcpus}: KVM on this host supports at most {max}")]
    TooManyVcpus { vcpus: u8, max: u32 },
    /// memory_mib {0}: below the minimum of 16 MiB
    #[error("memory_mib {0}: below the minimum of {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u32),
    /// memory_mib {0}: above the maximum of 1048576 MiB (1 TiB)
    #[error("memory_mib {0}: above the maximum of {MAX_MEMORY_MIB} MiB (1 TiB)")]
    MemoryTooLarge(u32),
    /// {field} {path}: cannot open: {source}
    #[error("{field} {}: cannot open: {source}", path.display())]
    Unreadable {
        field: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// {field} {path}: not a regular file
    #[error("{field} {}: not a regular file", path.display())]
    NotAFile { field: &'static str, path: PathBuf },
    /// cmdline: {len} bytes, the boot protocol allows at most 2047
    #[error("cmdline: {len} bytes, the boot protocol allows at most {}", CMDLINE_CAPACITY - 1)]
    CmdlineTooLong { len: usize },
    /// cmdline: byte {offset} is {byte:#04x}; only printable ASCII is allowed
    #[error("cmdline: byte {offset} is {byte:#04x}; only printable ASCII is allowed (no NUL)")]
    CmdlineBadByte { offset: usize, byte: u8 },
    /// {0}
    #[error("{0}")]
    Device(#[from] devices::DeviceConfigError),
    /// serial path {path}: {reason}
    #[error("serial path {}: {reason}", path.display())]
    BadSerialPath { path: PathBuf, reason: &'static str },
}

impl VmConfig {
    /// Reads and parses `path`. Only syntax and types are checked here; see [`VmConfig::validate`].
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(path, &text)
    }

    /// Parses `text`; `path` only names the source in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<VmConfig, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads, parses and validates `path` in one step: what `main` does.
    pub fn load(path: &Path, max_vcpus: u32) -> Result<VmConfig, ConfigError> {
        let config = Self::from_file(path)?;
        config.validate(max_vcpus)?;
        Ok(config)
    }

    /// Checks every value. `max_vcpus` is KVM's limit (`KVM_CAP_MAX_VCPUS`); the files named by
    /// `kernel` and `initrd` are opened, so a missing or unreadable one fails here and not halfway
    /// through building the VM.
    pub fn validate(&self, max_vcpus: u32) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus(self.vcpus));
        }
        if u32::from(self.vcpus) > max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                vcpus: self.vcpus,
                max: max_vcpus,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge(self.memory_mib));
        }
        check_readable_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_readable_file("initrd", initrd)?;
        }
        check_cmdline(&self.cmdline)?;
        devices::validate(&self.disks, &self.nics, self.rng)?;
        match &self.serial {
            SerialConfig::Stdout | SerialConfig::Off => Ok(()),
            SerialConfig::File { path } => check_creatable(path),
            SerialConfig::Socket { path } => {
                if path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
                    return Err(ConfigError::BadSerialPath {
                        path: path.clone(),
                        reason: "longer than the 107 bytes a unix socket address holds",
                    });
                }
                check_creatable(path)
            }
        }
    }
}

fn check_readable_file(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    let file = File::open(path).map_err(|source| ConfigError::Unreadable {
        field,
        path: path.to_owned(),
        source,
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(ConfigError::NotAFile {
            field,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The same rule linux-loader's `Cmdline` applies (printable ASCII), so a command line accepted
/// here is never refused later while loading the kernel.
fn check_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if let Some((offset, &byte)) = cmdline
        .as_bytes()
        .iter()
        .enumerate()
        .find(|(_, b)| !(b' '..=b'~').contains(*b))
    {
        return Err(ConfigError::CmdlineBadByte { offset, byte });
    }
    if cmdline.len() >= CMDLINE_CAPACITY {
        return Err(ConfigError::CmdlineTooLong { len: cmdline.len() });
    }
    Ok(())
}

/// A path the VMM will create (serial log or socket): it needs a file name and an existing
/// parent directory; creating it is left to start-up so validation has no side effects.
fn check_creatable(path: &Path) -> Result<(), ConfigError> {
    let bad = |reason| ConfigError::BadSerialPath {
        path: path.to_owned(),
        reason,
    };
    if path.file_name().is_none() {
        return Err(bad("has no file name"));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(bad("its directory does not exist"));
    }
    if path.is_dir() {
        return Err(bad("is a directory"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A temporary directory holding a fake kernel and initrd, removed on drop.
    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("keel-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
            std::fs::write(dir.join("initrd"), b"initrd").unwrap();
            Fixture { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        fn config(&self) -> VmConfig {
            VmConfig {
                vcpus: 2,
                memory_mib: 256,
                kernel: self.dir.join("vmlinuz"),
                initrd: Some(self.dir.join("initrd")),
                cmdline: "console=ttyS0 reboot=k panic=1".into(),
                serial: SerialConfig::Stdout,
                disks: Vec::new(),
                nics: Vec::new(),
                rng: false,
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn parses_full_and_minimal_configs() {
        let full = r#"{
            "vcpus": 2, "memory_mib": 512, "kernel": "/k", "initrd": "/i",
            "cmdline": "console=ttyS0", "serial": {"mode": "socket", "path": "/run/vm.sock"}
        }"#;
        let cfg = VmConfig::from_json(Path::new("vm.json"), full).unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.initrd, Some(PathBuf::from("/i")));
        assert_eq!(
            cfg.serial,
            SerialConfig::Socket {
                path: "/run/vm.sock".into()
            }
        );

        let minimal = r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k"}"#;
        let cfg = VmConfig::from_json(Path::new("vm.json"), minimal).unwrap();
        assert_eq!(cfg.initrd, None);
        assert_eq!(cfg.cmdline, "");
        assert_eq!(cfg.serial, SerialConfig::Stdout);

        let off = r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "off"}}"#;
        let cfg = VmConfig::from_json(Path::new("vm.json"), off).unwrap();
        assert_eq!(cfg.serial, SerialConfig::Off);
    }

    #[test]
    fn parse_errors_name_file_value_and_position() {
        let cases: &[(&str, &[&str])] = &[
            (
                "{\n  \"vcpus\": 1,\n    \"foo\": 3,\n  \"memory_mib\": 64, \"kernel\": \"/k\"}",
                &["vm.json: unknown field `foo`", "at line 3 column 9"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "disks": [{"path": "/d", "readonly": true}]}"#,
                &[
                    "unknown field `readonly`",
                    "expected one of `path`, `read_only`, `serial`, `direct`",
                ],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "nics": [{"tap": "t0"}]}"#,
                &["missing field `mac`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "rng": "yes"}"#,
                &["invalid type: string \"yes\", expected a boolean"],
            ),
            (
                r#"{"vcpus": 300, "memory_mib": 64, "kernel": "/k"}"#,
                &["vm.json: invalid value: integer `300`", "line 1 column 13"],
            ),
            (
                r#"{"vcpus": -1, "memory_mib": 64, "kernel": "/k"}"#,
                &["vm.json: invalid value: integer `-1`"],
            ),
            (
                r#"{"vcpus": "two", "memory_mib": 64, "kernel": "/k"}"#,
                &["vm.json: invalid type: string \"two\""],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64}"#,
                &["vm.json: missing field `kernel`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "tty"}}"#,
                &["vm.json: unknown variant `tty`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "file"}}"#,
                &["vm.json: missing field `path`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "off", "x": 1}}"#,
                &["vm.json: unknown field `x`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "stdout", "path": "/x"}}"#,
                &["vm.json: unknown field `path`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "file", "path": "/x", "append": true}}"#,
                &["vm.json: unknown field `append`"],
            ),
            (
                r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"path": "/x"}}"#,
                &["vm.json: missing field `mode`"],
            ),
            (
                "{\"vcpus\": 1,",
                &["vm.json: EOF while parsing", "line 1 column 12"],
            ),
            ("", &["vm.json: EOF while parsing"]),
        ];
        for (json, wants) in cases {
            let err = VmConfig::from_json(Path::new("vm.json"), json)
                .unwrap_err()
                .to_string();
            for want in *wants {
                assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn from_file_names_a_missing_file() {
        let err = VmConfig::from_file(Path::new("/nonexistent/vm.json")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/vm.json: cannot read: "),
            "{err}"
        );
    }

    #[test]
    fn validation_table() {
        let fx = Fixture::new("table");
        type Edit = fn(&mut VmConfig, &Fixture);
        let cases: &[(&str, Edit, Option<String>)] = &[
            ("valid", |_, _| {}, None),
            ("no initrd", |c, _| c.initrd = None, None),
            ("vcpus at the limit", |c, _| c.vcpus = 8, None),
            (
                "vcpus 0",
                |c, _| c.vcpus = 0,
                Some("vcpus 0: must be at least 1".into()),
            ),
            (
                "vcpus above KVM's limit",
                |c, _| c.vcpus = 9,
                Some("vcpus 9: KVM on this host supports at most 8".into()),
            ),
            ("memory at minimum", |c, _| c.memory_mib = 16, None),
            (
                "memory too small",
                |c, _| c.memory_mib = 15,
                Some("memory_mib 15: below the minimum of 16 MiB".into()),
            ),
            (
                "memory at maximum",
                |c, _| c.memory_mib = MAX_MEMORY_MIB,
                None,
            ),
            (
                "memory too large",
                |c, _| c.memory_mib = MAX_MEMORY_MIB + 1,
                Some("memory_mib 1048577: above the maximum of 1048576 MiB (1 TiB)".into()),
            ),
            (
                "missing kernel",
                |c, f| c.kernel = f.dir.join("nope"),
                Some(format!("kernel {}: cannot open: ", fx.path("nope"))),
            ),
            (
                "kernel is a directory",
                |c, f| c.kernel = f.dir.clone(),
                Some(format!("kernel {}: not a regular file", fx.dir.display())),
            ),
            (
                "missing initrd",
                |c, f| c.initrd = Some(f.dir.join("gone")),
                Some(format!("initrd {}: cannot open: ", fx.path("gone"))),
            ),
            (
                "cmdline at the limit",
                |c, _| c.cmdline = "a".repeat(2047),
                None,
            ),
            (
                "cmdline too long",
                |c, _| c.cmdline = "a".repeat(2048),
                Some("cmdline: 2048 bytes, the boot protocol allows at most 2047".into()),
            ),
            (
                "cmdline with NUL",
                |c, _| c.cmdline = "quiet\0init=/x".into(),
                Some("cmdline: byte 5 is 0x00".into()),
            ),
            (
                "cmdline with newline",
                |c, _| c.cmdline = "a\nb".into(),
                Some("cmdline: byte 1 is 0x0a".into()),
            ),
            (
                "cmdline with UTF-8",
                |c, _| c.cmdline = "é".into(),
                Some("cmdline: byte 0 is 0xc3".into()),
            ),
            (
                "serial file",
                |c, f| {
                    c.serial = SerialConfig::File {
                        path: f.dir.join("console.log"),
                    }
                },
                None,
            ),
            (
                "serial file in a missing directory",
                |c, f| {
                    c.serial = SerialConfig::File {
                        path: f.dir.join("no/console.log"),
                    }
                },
                Some(format!(
                    "serial path {}: its directory does not exist",
                    fx.path("no/console.log")
                )),
            ),
            (
                "serial file is a directory",
                |c, f| {
                    c.serial = SerialConfig::File {
                        path: f.dir.clone(),
                    }
                },
                Some(format!("serial path {}: is a directory", fx.dir.display())),
            ),
            (
                "serial socket",
                |c, f| {
                    c.serial = SerialConfig::Socket {
                        path: f.dir.join("serial.sock"),
                    }
                },
                None,
            ),
            (
                "serial socket path too long",
                |c, f| {
                    c.serial = SerialConfig::Socket {
                        path: f.dir.join("s".repeat(120)),
                    }
                },
                Some("longer than the 107 bytes a unix socket address holds".into()),
            ),
        ];
        for (name, edit, want) in cases {
            let mut cfg = fx.config();
            edit(&mut cfg, &fx);
            let got = cfg.validate(8).map_err(|e| e.to_string());
            match (want, got) {
                (None, Ok(())) => {}
                (Some(want), Err(err)) => {
                    assert!(
                        err.contains(want.as_str()),
                        "{name}: {err:?} lacks {want:?}"
                    )
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn load_parses_and_validates() {
        let fx = Fixture::new("load");
        let path = fx.dir.join("vm.json");
        let json = format!(
            r#"{{"vcpus": 4, "memory_mib": 128, "kernel": "{}"}}"#,
            fx.path("vmlinuz")
        );
        std::fs::write(&path, json).unwrap();
        assert_eq!(VmConfig::load(&path, 4).unwrap().vcpus, 4);
        let err = VmConfig::load(&path, 2).unwrap_err().to_string();
        assert_eq!(err, "vcpus 4: KVM on this host supports at most 2");
    }
}
