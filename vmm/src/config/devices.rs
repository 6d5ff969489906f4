//! The virtio devices of `vm.json` against the host: each disk opens with the access it asks
//! for. (Serials, MACs, interface names, duplicates and the device count are limits that do not
//! depend on the host: `keel_api::vmm::VmConfig::check_limits`.)

use std::fs::OpenOptions;
use std::path::PathBuf;

use keel_api::vmm::DiskConfig;

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
}

/// Checks that every disk opens with the access it asks for and is a file or a block device.
pub fn validate(disks: &[DiskConfig]) -> Result<(), DeviceConfigError> {
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
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keel_api::vmm::{NicConfig, VmConfig};

    /// The limits, then the host: what keel-vmm checks of its devices.
    fn check(disks: &[DiskConfig], nics: &[NicConfig], rng: bool) -> Result<(), String> {
        let config = VmConfig {
            vcpus: 1,
            memory_mib: 64,
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            serial: Default::default(),
            disks: disks.to_vec(),
            nics: nics.to_vec(),
            rng,
        };
        config.check_limits().map_err(|e| e.to_string())?;
        validate(disks).map_err(|e| e.to_string())
    }

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
            mac: mac.parse().unwrap(),
            bridge: None,
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
            let got = check(&disks, &nics, rng).err();
            match (&got, &want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w.as_str()), "{g:?} lacks {w:?}"),
                _ => panic!("got {got:?}, want {want:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
