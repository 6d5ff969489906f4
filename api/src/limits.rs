//! The limits of a VM definition that do not depend on the host, shared by the agent (checked at
//! `define`, so a VM that cannot start is refused there) and keel-vmm (checked again when it reads
//! `vm.json`). What depends on the host (KVM's vCPU limit, the files) is keel-vmm's to check.

use std::fmt;

/// Fewest vCPUs.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs: keel-vmm describes its vCPUs to the guest as xAPIC CPUs with APIC IDs
/// `0..vcpus` and gives the IOAPIC the next ID; xAPIC IDs are 8 bits and 255 is the broadcast ID.
/// Admits RHEV 3.x's largest guests (160 vCPUs). A host still refuses more than KVM's
/// `KVM_CAP_MAX_VCPUS` when the VM starts.
pub const MAX_VCPUS: u8 = 254;
/// Smallest guest: below this a Linux guest cannot even decompress its kernel.
pub const MIN_MEMORY_MIB: u32 = 16;
/// Largest guest: 2 TiB, RHEV 3.x's largest. Guards against typos (a GiB value in a MiB field)
/// long before the host would refuse the mmap.
pub const MAX_MEMORY_MIB: u32 = 2 << 20;
/// Room for the kernel command line including its terminating NUL: x86 Linux's
/// `COMMAND_LINE_SIZE` (boot protocol `cmdline_size`).
pub const CMDLINE_CAPACITY: usize = 2048;
/// Longest kernel command line.
pub const MAX_CMDLINE_LEN: usize = CMDLINE_CAPACITY - 1;
/// Most bytes in a disk serial (VIRTIO_BLK_ID_BYTES).
pub const MAX_DISK_SERIAL_LEN: usize = 20;
/// Virtio devices per VM: PCI slots 1..31 on bus 0.
pub const MAX_VIRTIO_DEVICES: usize = 31;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// A value outside the limits, naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// vcpus {0}: must be at least 1
    NoVcpus(u8),
    /// vcpus {0}: at most 254 (xAPIC IDs)
    TooManyVcpus(u8),
    /// memory_mib {0}: below the minimum of 16 MiB
    MemoryTooSmall(u64),
    /// memory_mib {0}: above the maximum of 2097152 MiB (2 TiB)
    MemoryTooLarge(u64),
    /// cmdline: {len} bytes, the boot protocol allows at most 2047
    CmdlineTooLong { len: usize },
    /// cmdline: byte {offset} is {byte:#04x}; only printable ASCII is allowed (no NUL)
    CmdlineBadByte { offset: usize, byte: u8 },
    /// {field} {serial:?}: longer than 20 bytes / only printable ASCII without spaces
    BadDiskSerial {
        field: String,
        serial: String,
        reason: &'static str,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus(n) => write!(f, "vcpus {n}: must be at least {MIN_VCPUS}"),
            Self::TooManyVcpus(n) => write!(
                f,
                "vcpus {n}: at most {MAX_VCPUS} (keel-vmm's xAPIC IDs; the host may allow fewer)"
            ),
            Self::MemoryTooSmall(m) => {
                write!(
                    f,
                    "memory_mib {m}: below the minimum of {MIN_MEMORY_MIB} MiB"
                )
            }
            Self::MemoryTooLarge(m) => write!(
                f,
                "memory_mib {m}: above the maximum of {MAX_MEMORY_MIB} MiB ({} TiB)",
                MAX_MEMORY_MIB >> 20
            ),
            Self::CmdlineTooLong { len } => write!(
                f,
                "cmdline: {len} bytes, the boot protocol allows at most {MAX_CMDLINE_LEN}"
            ),
            Self::CmdlineBadByte { offset, byte } => write!(
                f,
                "cmdline: byte {offset} is {byte:#04x}; only printable ASCII is allowed (no NUL)"
            ),
            Self::BadDiskSerial {
                field,
                serial,
                reason,
            } => write!(f, "{field} {serial:?}: {reason}"),
        }
    }
}

impl std::error::Error for LimitError {}

/// `MIN_VCPUS..=MAX_VCPUS`.
pub fn check_vcpus(vcpus: u8) -> Result<(), LimitError> {
    if vcpus < MIN_VCPUS {
        return Err(LimitError::NoVcpus(vcpus));
    }
    if vcpus > MAX_VCPUS {
        return Err(LimitError::TooManyVcpus(vcpus));
    }
    Ok(())
}

/// `MIN_MEMORY_MIB..=MAX_MEMORY_MIB`.
pub fn check_memory_mib(memory_mib: u64) -> Result<(), LimitError> {
    if memory_mib < u64::from(MIN_MEMORY_MIB) {
        return Err(LimitError::MemoryTooSmall(memory_mib));
    }
    if memory_mib > u64::from(MAX_MEMORY_MIB) {
        return Err(LimitError::MemoryTooLarge(memory_mib));
    }
    Ok(())
}

/// Printable ASCII (the rule linux-loader's `Cmdline` applies, so a command line accepted here is
/// never refused while loading the kernel), at most `MAX_CMDLINE_LEN` bytes.
pub fn check_cmdline(cmdline: &str) -> Result<(), LimitError> {
    if let Some((offset, &byte)) = cmdline
        .as_bytes()
        .iter()
        .enumerate()
        .find(|(_, b)| !(b' '..=b'~').contains(*b))
    {
        return Err(LimitError::CmdlineBadByte { offset, byte });
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(LimitError::CmdlineTooLong { len: cmdline.len() });
    }
    Ok(())
}

/// What the guest reads as a disk's serial: at most 20 printable ASCII bytes without spaces.
/// `field` names the serial in the error (`disks[0].serial`).
pub fn check_disk_serial(field: &str, serial: &str) -> Result<(), LimitError> {
    let bad = |reason| {
        Err(LimitError::BadDiskSerial {
            field: field.to_owned(),
            serial: serial.to_owned(),
            reason,
        })
    };
    if serial.len() > MAX_DISK_SERIAL_LEN {
        return bad("longer than 20 bytes");
    }
    if !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_and_memory_table() {
        let vcpus: &[(u8, Option<&str>)] = &[
            (0, Some("vcpus 0: must be at least 1")),
            (1, None),
            (64, None),
            (65, None),
            (160, None),
            (254, None),
            (255, Some("vcpus 255: at most 254")),
        ];
        for (n, want) in vcpus {
            let got = check_vcpus(*n).err().map(|e| e.to_string());
            match (&got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.starts_with(w), "{g:?} vs {w:?}"),
                _ => panic!("vcpus {n}: got {got:?}, want {want:?}"),
            }
        }
        let memory: &[(u64, Option<&str>)] = &[
            (0, Some("memory_mib 0: below the minimum of 16 MiB")),
            (15, Some("memory_mib 15: below the minimum of 16 MiB")),
            (16, None),
            (1 << 20, None),
            (1_048_577, None),
            (2_097_152, None),
            (
                2_097_153,
                Some("memory_mib 2097153: above the maximum of 2097152 MiB (2 TiB)"),
            ),
            (u64::MAX, Some("above the maximum")),
        ];
        for (m, want) in memory {
            let got = check_memory_mib(*m).err().map(|e| e.to_string());
            match (&got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w), "{g:?} vs {w:?}"),
                _ => panic!("memory {m}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cmdline_and_serial_table() {
        let long = "a".repeat(2048);
        let max = "a".repeat(2047);
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("console=ttyS0 panic=1", None),
            (&max, None),
            (
                &long,
                Some("cmdline: 2048 bytes, the boot protocol allows at most 2047"),
            ),
            ("quiet\0init=/x", Some("cmdline: byte 5 is 0x00")),
            ("a\nb", Some("cmdline: byte 1 is 0x0a")),
            ("é", Some("cmdline: byte 0 is 0xc3")),
        ];
        for (cmdline, want) in cases {
            let got = check_cmdline(cmdline).err().map(|e| e.to_string());
            match (&got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.starts_with(w), "{g:?} vs {w:?}"),
                _ => panic!("{cmdline:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(check_disk_serial("disks[0].serial", "data-1").is_ok());
        assert_eq!(
            check_disk_serial("disks[2] serial", &"x".repeat(21))
                .unwrap_err()
                .to_string(),
            format!("disks[2] serial {:?}: longer than 20 bytes", "x".repeat(21))
        );
        assert!(check_disk_serial("disks[0].serial", "a b")
            .unwrap_err()
            .to_string()
            .contains("printable ASCII"));
    }
}
