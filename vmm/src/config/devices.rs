//! The virtio devices of `vm.json`: `disks`, `nics` and `rng`. Parsed with the rest of the file
//! (unknown fields rejected); [`validate`] checks values, naming the device by its index.

use std::fs::OpenOptions;
use std::path::PathBuf;

use serde::Deserialize;

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The guest cannot write (VIRTIO_BLK_F_RO; the file is opened read-only).
    #[serde(default)]
    pub read_only: bool,
    /// Identity the guest reads with GET_ID (`/sys/block/vdX/serial`), at most 20 ASCII bytes.
    #[serde(default)]
    pub serial: Option<String>,
    /// Opens the image with O_DIRECT (no host page cache).
    #[serde(default)]
    pub direct: bool,
}

/// One virtio-net NIC on a tap device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Tap interface name; created (or attached if it exists) by the VMM. Default: `keeltapN`.
    #[serde(default)]
    pub tap: Option<String>,
    /// The guest's MAC address, `52:54:00:12:34:56`.
    pub mac: String,
    /// Linux bridge the tap joins.
    #[serde(default)]
    pub bridge: Option<String>,
}

/// Most bytes in a disk serial (VIRTIO_BLK_ID_BYTES).
pub const MAX_SERIAL_LEN: usize = 20;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Virtio devices per VM: PCI slots 1..31 on bus 0.
pub const MAX_VIRTIO_DEVICES: usize = 31;

/// A device entry that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceConfigError {
    /// disks[{index}] {path}: cannot open: {source}
    #[error("disks[{index}] {}: cannot open: {source}", path.display())]
    DiskOpen {
        index: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    /// disks[{index}] {path}: not a regular file or block device
    #[error("disks[{index}] {}: not a regular file or block device", path.display())]
    DiskKind { index: usize, path: PathBuf },
    /// disks[{index}] {path}: also used by disks[{first}]
    #[error("disks[{index}] {}: also used by disks[{first}]", path.display())]
    DiskTwice {
        index: usize,
        first: usize,
        path: PathBuf,
    },
    /// disks[{index}] serial {serial:?}: {reason}
    #[error("disks[{index}] serial {serial:?}: {reason}")]
    BadSerial {
        index: usize,
        serial: String,
        reason: &'static str,
    },
    /// nics[{index}] mac {mac:?}: {reason}
    #[error("nics[{index}] mac {mac:?}: {reason}")]
    BadMac {
        index: usize,
        mac: String,
        reason: &'static str,
    },
    /// nics[{index}] mac {mac}: also used by nics[{first}]
    #[error("nics[{index}] mac {mac}: also used by nics[{first}]")]
    MacTwice {
        index: usize,
        first: usize,
        mac: String,
    },
    /// nics[{index}] {field} {name:?}: {reason}
    #[error("nics[{index}] {field} {name:?}: {reason}")]
    BadIfName {
        index: usize,
        field: &'static str,
        name: String,
        reason: &'static str,
    },
    /// {count} virtio devices: at most 31 fit on the PCI bus
    #[error("{count} virtio devices: at most {MAX_VIRTIO_DEVICES} fit on the PCI bus")]
    TooManyDevices { count: usize },
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], &'static str> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or("needs six colon-separated bytes")?;
        if part.len() != 2 {
            return Err("needs six colon-separated bytes of two hex digits");
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| "not hexadecimal")?;
    }
    if parts.next().is_some() {
        return Err("needs six colon-separated bytes");
    }
    if out[0] & 1 != 0 {
        return Err("is a multicast address");
    }
    if out == [0; 6] {
        return Err("is all zeros");
    }
    Ok(out)
}

fn check_ifname(index: usize, field: &'static str, name: &str) -> Result<(), DeviceConfigError> {
    let bad = |reason| DeviceConfigError::BadIfName {
        index,
        field,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(bad("must be 1 to 15 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    if name == "." || name == ".." {
        return Err(bad("is not an interface name"));
    }
    Ok(())
}

/// Checks every device entry: disks open with the access they ask for, serials, MACs and
/// interface names are well formed, nothing is used twice, and everything fits on the bus.
pub fn validate(
    disks: &[DiskConfig],
    nics: &[NicConfig],
    rng: bool,
) -> Result<(), DeviceConfigError> {
    let count = disks.len() + nics.len() + usize::from(rng);
    if count > MAX_VIRTIO_DEVICES {
        return Err(DeviceConfigError::TooManyDevices { count });
    }
    for (index, disk) in disks.iter().enumerate() {
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(|source| DeviceConfigError::DiskOpen {
                index,
                path: disk.path.clone(),
                source,
            })?;
        let kind = file.metadata().map(|m| m.file_type());
        let usable = kind.is_ok_and(|t| {
            use std::os::unix::fs::FileTypeExt;
            t.is_file() || t.is_block_device()
        });
        if !usable {
            return Err(DeviceConfigError::DiskKind {
                index,
                path: disk.path.clone(),
            });
        }
        if let Some(first) = disks[..index].iter().position(|d| d.path == disk.path) {
            return Err(DeviceConfigError::DiskTwice {
                index,
                first,
                path: disk.path.clone(),
            });
        }
        if let Some(serial) = &disk.serial {
            let bad = |reason| DeviceConfigError::BadSerial {
                index,
                serial: serial.clone(),
                reason,
            };
            if serial.len() > MAX_SERIAL_LEN {
                return Err(bad("longer than 20 bytes"));
            }
            if !serial.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("only printable ASCII without spaces is allowed"));
            }
        }
    }
    let mut macs: Vec<[u8; 6]> = Vec::new();
    for (index, nic) in nics.iter().enumerate() {
        let mac = parse_mac(&nic.mac).map_err(|reason| DeviceConfigError::BadMac {
            index,
            mac: nic.mac.clone(),
            reason,
        })?;
        if let Some(first) = macs.iter().position(|m| *m == mac) {
            return Err(DeviceConfigError::MacTwice {
                index,
                first,
                mac: nic.mac.clone(),
            });
        }
        macs.push(mac);
        if let Some(tap) = &nic.tap {
            check_ifname(index, "tap", tap)?;
        }
        if let Some(bridge) = &nic.bridge {
            check_ifname(index, "bridge", bridge)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn disk(path: &std::path::Path) -> DiskConfig {
        DiskConfig {
            path: path.to_owned(),
            read_only: false,
            serial: None,
            direct: false,
        }
    }

    fn nic(mac: &str) -> NicConfig {
        NicConfig {
            tap: None,
            mac: mac.into(),
            bridge: None,
        }
    }

    #[test]
    fn mac_parsing_table() {
        let cases: &[(&str, Result<[u8; 6], &str>)] = &[
            ("52:54:00:12:34:56", Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            ("52:54:00:AB:cd:ef", Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
            ("52:54:00:12:34", Err("needs six colon-separated bytes")),
            (
                "52:54:00:12:34:56:78",
                Err("needs six colon-separated bytes"),
            ),
            (
                "52:54:0:12:34:56",
                Err("needs six colon-separated bytes of two hex digits"),
            ),
            ("52:54:00:12:34:zz", Err("not hexadecimal")),
            ("01:00:5e:00:00:01", Err("is a multicast address")),
            ("00:00:00:00:00:00", Err("is all zeros")),
        ];
        for (mac, want) in cases {
            assert_eq!(parse_mac(mac), *want, "{mac}");
        }
    }

    #[test]
    fn validation_names_the_bad_entry() {
        let dir = std::env::temp_dir().join(format!("keel-devcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let ok_disk = disk(&img);
        let long_serial = DiskConfig {
            serial: Some("x".repeat(21)),
            ..disk(&img)
        };
        let spaced_serial = DiskConfig {
            serial: Some("a b".into()),
            ..disk(&img)
        };
        let bad_tap = NicConfig {
            tap: Some("tap/0".into()),
            ..nic("52:54:00:00:00:01")
        };
        let long_bridge = NicConfig {
            bridge: Some("b".repeat(16)),
            ..nic("52:54:00:00:00:01")
        };
        type Case = (Vec<DiskConfig>, Vec<NicConfig>, bool, Option<String>);
        let cases: Vec<Case> = vec![
            (
                vec![ok_disk.clone()],
                vec![nic("52:54:00:00:00:01")],
                true,
                None,
            ),
            (
                vec![disk(&dir.join("missing"))],
                vec![],
                false,
                Some(format!(
                    "disks[0] {}: cannot open",
                    dir.join("missing").display()
                )),
            ),
            (
                vec![DiskConfig {
                    read_only: true,
                    ..disk(&dir)
                }],
                vec![],
                false,
                Some(format!("disks[0] {}: not a regular file", dir.display())),
            ),
            (
                vec![ok_disk.clone(), ok_disk.clone()],
                vec![],
                false,
                Some("also used by disks[0]".into()),
            ),
            (
                vec![long_serial],
                vec![],
                false,
                Some("disks[0] serial".into()),
            ),
            (
                vec![spaced_serial],
                vec![],
                false,
                Some("printable ASCII".into()),
            ),
            (
                vec![],
                vec![nic("ff:ff:ff:ff:ff:ff")],
                false,
                Some("nics[0] mac".into()),
            ),
            (
                vec![],
                vec![nic("52:54:00:00:00:01"), nic("52:54:00:00:00:01")],
                false,
                Some("nics[1] mac 52:54:00:00:00:01: also used by nics[0]".into()),
            ),
            (
                vec![],
                vec![bad_tap],
                false,
                Some("nics[0] tap \"tap/0\"".into()),
            ),
            (
                vec![],
                vec![long_bridge],
                false,
                Some("nics[0] bridge".into()),
            ),
            (
                vec![ok_disk; 32],
                vec![],
                false,
                Some("32 virtio devices: at most 31".into()),
            ),
        ];
        for (disks, nics, rng, want) in cases {
            let got = validate(&disks, &nics, rng).err().map(|e| e.to_string());
            match (&got, &want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w.as_str()), "{g:?} lacks {w:?}"),
                _ => panic!("got {got:?}, want {want:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
