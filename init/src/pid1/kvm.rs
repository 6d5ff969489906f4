//! Is /dev/kvm usable, and which vendor module provides it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// `_IO(KVMIO, 0x01)`.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;

/// The KVM vendor module for the CPU described by /proc/cpuinfo.
pub fn vendor_module(cpuinfo: &str) -> Option<&'static str> {
    let vendor = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("vendor_id")
            .map(|r| r.trim_start_matches([' ', '\t', ':']))
    })?;
    match vendor.trim() {
        "AuthenticAMD" | "HygonGenuine" => Some("kvm_amd"),
        "GenuineIntel" => Some("kvm_intel"),
        _ => None,
    }
}

/// The loaded vendor module, from /sys/module.
pub fn loaded_module() -> Option<&'static str> {
    ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
}

/// Ok if /dev/kvm opens, speaks API version 12 and can create a VM; otherwise why not.
pub fn check() -> Result<(), String> {
    let kvm = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only reads the fd's state.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}"
        ));
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1; no memory is passed.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!(
            "KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: vm is a fresh fd owned by nobody else; OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(())
}

/// The banner line: `keel: kvm: usable (kvm_amd)` or `keel: kvm: unusable (<reason>)`.
pub fn status_line() -> String {
    match (check(), loaded_module()) {
        (Ok(()), Some(module)) => format!("keel: kvm: usable ({module})"),
        (Ok(()), None) => String::from("keel: kvm: usable (built-in)"),
        (Err(why), _) => format!("keel: kvm: unusable ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors() {
        let cases = [
            (
                "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n",
                Some("kvm_amd"),
            ),
            ("vendor_id\t: GenuineIntel\n", Some("kvm_intel")),
            ("vendor_id : HygonGenuine\n", Some("kvm_amd")),
            ("vendor_id\t: CentaurHauls\n", None),
            ("processor\t: 0\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(vendor_module(text), want, "{text:?}");
        }
    }

    #[test]
    fn status_line_has_the_contract_prefix() {
        let line = status_line();
        assert!(
            line.starts_with("keel: kvm: usable (") || line.starts_with("keel: kvm: unusable ("),
            "{line}"
        );
    }
}
