//! `vm.json`: the configuration of one VM. The type is keel-api's ([`VmConfig`], shared with
//! the agent that writes the file); this module reads it and checks it against the host.
//!
//! Three steps, each naming the offending value: [`read_config`] parses (serde rejects unknown
//! fields and wrong types with the line and column), [`VmConfig::check_limits`] checks the
//! limits that do not depend on the host (the agent checked the same ones at `define`), and
//! [`validate`] checks what does: KVM's vCPU limit, readable kernel and initrd, usable disks and
//! serial paths.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub mod devices;
pub use keel_api::limits::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};
pub use keel_api::vmm::{ConfigLimitError, DiskConfig, NicConfig, SerialConfig, VmConfig};

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
    /// {0}
    #[error("{0}")]
    Limit(#[from] ConfigLimitError),
    /// vcpus {vcpus}: KVM on this host supports at most {max}
    #[error("vcpus {vcpus}: KVM on this host supports at most {max}")]
    TooManyVcpus { vcpus: u8, max: u32 },
    /// memory_mib {memory_mib}: this host has only {host_mib} MiB
    #[error("memory_mib {memory_mib}: this host has only {host_mib} MiB")]
    NotEnoughMemory { memory_mib: u32, host_mib: u64 },
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
    /// {0}
    #[error("{0}")]
    Device(#[from] devices::DeviceConfigError),
    /// serial path {path}: {reason}
    #[error("serial path {}: {reason}", path.display())]
    BadSerialPath { path: PathBuf, reason: &'static str },
}

/// Reads and parses `path`. Only syntax and types are checked here; see [`validate`].
pub fn read_config(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_config(path, &text)
}

/// Parses `text`; `path` only names the source in errors.
pub fn parse_config(path: &Path, text: &str) -> Result<VmConfig, ConfigError> {
    serde_json::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Reads, parses and validates `path` in one step: what `main` does.
pub fn load(path: &Path, max_vcpus: u32) -> Result<VmConfig, ConfigError> {
    let config = read_config(path)?;
    validate(&config, max_vcpus)?;
    Ok(config)
}

/// Checks every value: the limits ([`VmConfig::check_limits`]), then the host. `max_vcpus` is
/// KVM's limit (`KVM_CAP_MAX_VCPUS`); the files named by `kernel` and `initrd` are opened, so a
/// missing or unreadable one fails here and not halfway through building the VM.
pub fn validate(config: &VmConfig, max_vcpus: u32) -> Result<(), ConfigError> {
    config.check_limits()?;
    if u32::from(config.vcpus) > max_vcpus {
        return Err(ConfigError::TooManyVcpus {
            vcpus: config.vcpus,
            max: max_vcpus,
        });
    }
    check_readable_file("kernel", &config.kernel)?;
    if let Some(initrd) = &config.initrd {
        check_readable_file("initrd", initrd)?;
    }
    devices::validate(&config.disks)?;
    match &config.serial {
        SerialConfig::Stdout | SerialConfig::Off => Ok(()),
        SerialConfig::File { path } | SerialConfig::Socket { path } => check_creatable(path),
    }
}

/// The host's physical memory in MiB (`u64::MAX` when it cannot be told).
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(page_size)) {
        (Ok(pages), Ok(size)) if pages > 0 && size > 0 => pages.saturating_mul(size) >> 20,
        _ => u64::MAX,
    }
}

/// Guest memory is mapped without reserving it, so a guest larger than the host would start and
/// be killed once it touches more than there is: refused at start instead, naming both sizes.
pub fn check_host_memory(config: &VmConfig, host_mib: u64) -> Result<(), ConfigError> {
    if u64::from(config.memory_mib) > host_mib {
        return Err(ConfigError::NotEnoughMemory {
            memory_mib: config.memory_mib,
            host_mib,
        });
    }
    Ok(())
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
        let cfg = parse_config(Path::new("vm.json"), full).unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.initrd, Some(PathBuf::from("/i")));
        assert_eq!(
            cfg.serial,
            SerialConfig::Socket {
                path: "/run/vm.sock".into()
            }
        );

        let minimal = r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k"}"#;
        let cfg = parse_config(Path::new("vm.json"), minimal).unwrap();
        assert_eq!(cfg.initrd, None);
        assert_eq!(cfg.cmdline, "");
        assert_eq!(cfg.serial, SerialConfig::Stdout);

        let off = r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/k", "serial": {"mode": "off"}}"#;
        let cfg = parse_config(Path::new("vm.json"), off).unwrap();
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
            let err = parse_config(Path::new("vm.json"), json)
                .unwrap_err()
                .to_string();
            for want in *wants {
                assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn from_file_names_a_missing_file() {
        let err = read_config(Path::new("/nonexistent/vm.json")).unwrap_err();
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
                Some("memory_mib 2097153: above the maximum of 2097152 MiB (2 TiB)".into()),
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
            let got = validate(&cfg, 8).map_err(|e| e.to_string());
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
    fn a_guest_larger_than_the_host_is_refused_at_start() {
        let fx = Fixture::new("host-memory");
        let big = VmConfig {
            vcpus: 160,
            memory_mib: MAX_MEMORY_MIB,
            ..fx.config()
        };
        // Within the limits: only the host can refuse it.
        big.check_limits().unwrap();
        assert_eq!(
            validate(&big, 8).unwrap_err().to_string(),
            "vcpus 160: KVM on this host supports at most 8"
        );
        validate(&big, 160).unwrap();
        assert_eq!(
            check_host_memory(&big, 4096).unwrap_err().to_string(),
            "memory_mib 2097152: this host has only 4096 MiB"
        );
        check_host_memory(&big, 2 << 20).unwrap();
        assert!(host_memory_mib() >= 16, "{}", host_memory_mib());
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
        assert_eq!(load(&path, 4).unwrap().vcpus, 4);
        let err = load(&path, 2).unwrap_err().to_string();
        assert_eq!(err, "vcpus 4: KVM on this host supports at most 2");
    }
}
