//! `out/manifest.json`: what was built from what, with sizes and sha256s; and the size report.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lock::LockedPackage;

/// Errors writing the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Cannot read component {0}: {1}
    #[error("Cannot read component {0}: {1}")]
    Read(PathBuf, io::Error),
    /// Manifest {0} is not valid: {1}
    #[error("Manifest {0} is not valid: {1}")]
    Parse(PathBuf, serde_json::Error),
    /// Cannot write manifest {0}: {1}
    #[error("Cannot write manifest {0}: {1}")]
    Write(PathBuf, io::Error),
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// One built file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    /// Path relative to the output directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Component {
    /// Measures `out_dir/path`.
    pub fn measure(name: &str, out_dir: &Path, path: &str) -> Result<Self, ManifestError> {
        let full = out_dir.join(path);
        let err = |e| ManifestError::Read(full.clone(), e);
        Ok(Component {
            name: name.to_string(),
            path: path.to_string(),
            size: std::fs::metadata(&full).map_err(err)?.len(),
            sha256: sha256_file(&full).map_err(err)?,
        })
    }
}

/// The kernel the image was built from.
#[derive(Debug, Serialize, Deserialize)]
pub struct KernelInfo {
    pub package: String,
    pub version: String,
    pub release: String,
    pub sha256: String,
}

impl From<&LockedPackage> for KernelInfo {
    fn from(p: &LockedPackage) -> Self {
        KernelInfo {
            package: p.package.clone(),
            version: p.version.clone(),
            release: p.release().to_string(),
            sha256: p.sha256.clone(),
        }
    }
}

/// The whole manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel: KernelInfo,
    pub modules: usize,
    pub early_modules: Vec<String>,
    pub cmdline: String,
    pub components: Vec<Component>,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let err = |e| ManifestError::Write(path.to_path_buf(), e);
        let mut json = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        json.push('\n');
        std::fs::write(path, json).map_err(err)
    }

    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError::Read(path.to_path_buf(), e))?;
        serde_json::from_str(&text).map_err(|e| ManifestError::Parse(path.to_path_buf(), e))
    }

    /// Adds components, replacing those of the same name (rebuilding media over an old out/).
    pub fn upsert(&mut self, components: Vec<Component>) {
        for c in components {
            match self.components.iter_mut().find(|old| old.name == c.name) {
                Some(old) => *old = c,
                None => self.components.push(c),
            }
        }
    }

    /// The per-component size report printed after a build.
    pub fn size_report(&self) -> String {
        let mut report = String::from("component          bytes      MiB  sha256\n");
        for c in &self.components {
            report.push_str(&format!(
                "{:<14} {:>11} {:>8.2}  {}\n",
                c.name,
                c.size,
                c.size as f64 / (1024.0 * 1024.0),
                c.sha256.get(..16).unwrap_or(&c.sha256)
            ));
        }
        report.push_str(&format!(
            "{} modules in the root image; kernel {} {}\n",
            self.modules, self.kernel.package, self.kernel.version
        ));
        report
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_digests() {
        let dir = std::env::temp_dir().join(format!("keel-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: [(&[u8], &str); 2] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (content, want) in cases {
            std::fs::write(dir.join("f"), content).unwrap();
            assert_eq!(sha256_file(&dir.join("f")).unwrap(), want);
        }
        let component = Component::measure("f", &dir, "f").unwrap();
        assert_eq!(component.size, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn report_lists_every_component() {
        let manifest = Manifest {
            kernel: KernelInfo {
                package: "linux-image-x".into(),
                version: "1".into(),
                release: "x".into(),
                sha256: "0".repeat(64),
            },
            modules: 3,
            early_modules: vec![],
            cmdline: String::new(),
            components: vec![Component {
                name: "vmlinuz".into(),
                path: "vmlinuz".into(),
                size: 2 * 1024 * 1024,
                sha256: "ab".repeat(32),
            }],
        };
        let path = std::env::temp_dir().join(format!("keel-manifest-{}.json", std::process::id()));
        manifest.write(&path).unwrap();
        let report = Manifest::load(&path).unwrap().size_report();
        std::fs::remove_file(&path).unwrap();
        assert!(
            report.contains("vmlinuz            2097152     2.00  abababababababab"),
            "{report}"
        );
        assert!(report.contains("3 modules"), "{report}");
    }

    #[test]
    fn upsert_replaces_by_name_and_appends_new() {
        let c = |name: &str, size| Component {
            name: name.into(),
            path: name.into(),
            size,
            sha256: String::new(),
        };
        let mut manifest = Manifest {
            kernel: KernelInfo {
                package: String::new(),
                version: String::new(),
                release: String::new(),
                sha256: String::new(),
            },
            modules: 0,
            early_modules: vec![],
            cmdline: String::new(),
            components: vec![c("vmlinuz", 1), c("keel.iso", 2)],
        };
        manifest.upsert(vec![c("keel.iso", 3), c("keel-usb.img", 4)]);
        let got: Vec<(&str, u64)> = manifest
            .components
            .iter()
            .map(|c| (c.name.as_str(), c.size))
            .collect();
        assert_eq!(got, [("vmlinuz", 1), ("keel.iso", 3), ("keel-usb.img", 4)]);
    }
}
