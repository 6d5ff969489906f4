//! Kernel hardening settings PID 1 writes at boot (see docs/hardening.md): sysctls that close
//! information leaks and unprivileged attack surface, and the memory-sharing policy for VMs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One kernel setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// A sysctl name (`kernel.kptr_restrict`, under /proc/sys) or an absolute sysfs path.
    pub key: &'static str,
    pub value: &'static str,
    /// Absent on some kernels or configurations (a module not loaded, a Debian-only knob): a
    /// missing file is not a failure.
    pub optional: bool,
}

const fn required(key: &'static str, value: &'static str) -> Setting {
    Setting {
        key,
        value,
        optional: false,
    }
}

const fn optional(key: &'static str, value: &'static str) -> Setting {
    Setting {
        key,
        value,
        optional: true,
    }
}

/// The settings, in the order they are written. Some are one-way switches (the kernel refuses
/// to turn them back): kexec_load_disabled, unprivileged_bpf_disabled=1.
pub const SETTINGS: [Setting; 24] = [
    // Kernel addresses and the kernel log are for root only.
    required("kernel.kptr_restrict", "2"),
    required("kernel.dmesg_restrict", "1"),
    // No BPF for unprivileged users, and constant blinding in the JIT for everyone.
    required("kernel.unprivileged_bpf_disabled", "1"),
    required("net.core.bpf_jit_harden", "2"),
    // perf for CAP_PERFMON only (Debian's level 3 forbids it to unprivileged users outright).
    required("kernel.perf_event_paranoid", "3"),
    // Only CAP_SYS_PTRACE may ptrace (a VMM cannot attach to another).
    optional("kernel.yama.ptrace_scope", "2"),
    // Debian's switch for unprivileged user namespaces; Keel runs nothing that needs them.
    optional("kernel.unprivileged_userns_clone", "0"),
    required("vm.unprivileged_userfaultfd", "0"),
    // Line disciplines are not loaded on demand by an unprivileged TIOCSETD.
    required("dev.tty.ldisc_autoload", "0"),
    // Classic /tmp races: links, FIFOs and regular files in sticky directories.
    required("fs.protected_hardlinks", "1"),
    required("fs.protected_symlinks", "1"),
    required("fs.protected_fifos", "2"),
    required("fs.protected_regular", "2"),
    // No core dumps of processes that changed credentials (a VMM holds guest memory).
    required("fs.suid_dumpable", "0"),
    // Magic SysRq only for sync, remount read-only and reboot (16 + 32 + 128).
    required("kernel.sysrq", "176"),
    // The host routes nothing itself; redirects and source routes are refused.
    required("net.ipv4.conf.all.accept_redirects", "0"),
    required("net.ipv4.conf.default.accept_redirects", "0"),
    required("net.ipv4.conf.all.send_redirects", "0"),
    required("net.ipv4.conf.all.accept_source_route", "0"),
    optional("net.ipv6.conf.all.accept_redirects", "0"),
    required("net.ipv4.tcp_syncookies", "1"),
    // KSM merges identical pages across VMs: a cross-VM side channel (Firecracker's production
    // host guide). Off.
    optional("/sys/kernel/mm/ksm/run", "0"),
    // No kexec: a jailed process could not use it anyway; a compromised root cannot either.
    required("kernel.kexec_load_disabled", "1"),
    // io_uring (6.6 and later): nothing on Keel uses it, and it has been a rich source of bugs.
    optional("kernel.io_uring_disabled", "2"),
];

/// The file behind a setting.
pub fn path(key: &str, proc_sys: &Path) -> PathBuf {
    if key.starts_with('/') {
        PathBuf::from(key)
    } else {
        proc_sys.join(key.replace('.', "/"))
    }
}

/// A setting that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// Cannot set {0} to {1}: {2}
    #[error("cannot set {0} to {1}: {2}")]
    Write(&'static str, &'static str, io::Error),
    /// {0} is {2}, not {1}
    #[error("{0} is {2}, not {1}")]
    Mismatch(&'static str, &'static str, String),
}

/// Writes every setting under `proc_sys` (normally /proc/sys) and reads it back; returns what
/// failed (a missing optional setting is fine).
pub fn apply(settings: &[Setting], proc_sys: &Path) -> Vec<HardeningError> {
    let mut failures = Vec::new();
    for s in settings {
        let file = path(s.key, proc_sys);
        if let Err(e) = fs::write(&file, s.value) {
            if !(s.optional && e.kind() == io::ErrorKind::NotFound) {
                failures.push(HardeningError::Write(s.key, s.value, e));
            }
            continue;
        }
        let now = fs::read_to_string(&file).unwrap_or_default();
        if now.trim() != s.value {
            failures.push(HardeningError::Mismatch(
                s.key,
                s.value,
                now.trim().to_string(),
            ));
        }
    }
    failures
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_files() {
        let root = Path::new("/proc/sys");
        let cases = [
            ("kernel.kptr_restrict", "/proc/sys/kernel/kptr_restrict"),
            (
                "net.ipv4.conf.all.accept_redirects",
                "/proc/sys/net/ipv4/conf/all/accept_redirects",
            ),
            ("/sys/kernel/mm/ksm/run", "/sys/kernel/mm/ksm/run"),
        ];
        for (key, want) in cases {
            assert_eq!(path(key, root), PathBuf::from(want), "{key}");
        }
    }

    #[test]
    fn the_table_names_each_setting_once() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), SETTINGS.len());
        let required: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| !s.optional)
            .map(|s| s.key)
            .collect();
        for key in [
            "kernel.kptr_restrict",
            "kernel.dmesg_restrict",
            "kernel.unprivileged_bpf_disabled",
            "kernel.kexec_load_disabled",
        ] {
            assert!(required.contains(&key), "{key}");
        }
    }

    #[test]
    fn apply_writes_checks_and_reports() {
        let dir = std::env::temp_dir().join(format!("keel-sysctl-{}", std::process::id()));
        fs::create_dir_all(dir.join("kernel")).unwrap();
        fs::write(dir.join("kernel/kptr_restrict"), "0").unwrap();
        let settings = [
            required("kernel.kptr_restrict", "2"),
            optional("nodir.absent", "1"),
            required("nodir.x", "1"),
        ];
        let failures: Vec<String> = apply(&settings, &dir)
            .iter()
            .map(ToString::to_string)
            .collect();
        let written = fs::read_to_string(dir.join("kernel/kptr_restrict")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(written, "2");
        // Only the required setting without a file fails.
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("cannot set nodir.x to 1"),
            "{failures:?}"
        );
    }
}
