//! Where things are: the workspace, the built image (`KEEL_OUT`, default `<workspace>/out`) and
//! the per-test console logs (`<workspace>/target/e2e-logs/`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::Error;

/// The workspace root: this crate lives in `<workspace>/tests`.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The image directory: `KEEL_OUT` if set and not empty, else `<root>/out`.
pub fn out_dir_from(keel_out: Option<OsString>, root: &Path) -> PathBuf {
    match keel_out {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join("out"),
    }
}

/// The image directory of this run.
pub fn out_dir() -> PathBuf {
    out_dir_from(std::env::var_os("KEEL_OUT"), &workspace_root())
}

/// `keel-image-builder`: `KEEL_IMAGE_BUILDER`, else the release build in `CARGO_TARGET_DIR` (or
/// `<root>/target`), which `make image` builds.
pub fn image_builder() -> PathBuf {
    if let Some(path) = std::env::var_os("KEEL_IMAGE_BUILDER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("release").join("keel-image-builder")
}

/// Where console logs go, one file per QEMU run.
pub fn log_dir() -> PathBuf {
    workspace_root().join("target").join("e2e-logs")
}

/// The artefacts `make image` produces.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The default kernel command line, from `cmdline`.
    pub cmdline: String,
    /// `manifest.json`: components, sizes, sha256s, kernel version.
    pub manifest: Value,
}

impl Image {
    /// Finds the image in `out_dir()`. Every missing file is an error telling how to build it.
    pub fn locate() -> Result<Image, Error> {
        Image::locate_in(&out_dir())
    }

    pub fn locate_in(dir: &Path) -> Result<Image, Error> {
        let require = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::MissingImage {
                    path,
                    dir: dir.to_owned(),
                })
            }
        };
        let kernel = require("vmlinuz")?;
        let initrd = require("initramfs.img")?;
        let cmdline_path = require("cmdline")?;
        let manifest_path = require("manifest.json")?;
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cmdline = read(&cmdline_path)?.trim().to_owned();
        let manifest = serde_json::from_str(&read(&manifest_path)?).map_err(|e| Error::Parse {
            path: manifest_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Image {
            dir: dir.to_owned(),
            kernel,
            initrd,
            cmdline,
            manifest,
        })
    }
}

/// The release (`uname -r`) of a bzImage, read from the version string its setup header points to
/// (Linux boot protocol: `kernel_version` at 0x20e, an offset from 0x200).
pub fn kernel_release(bzimage: &[u8]) -> Option<String> {
    let header = bzimage.get(0x202..0x206)?;
    if header != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes([*bzimage.get(0x20e)?, *bzimage.get(0x20f)?]);
    let start = usize::from(pointer).checked_add(0x200)?;
    let version = bzimage.get(start..)?;
    let end = version.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&version[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// `kernel_release` of the file at `path`.
pub fn kernel_release_of(path: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    kernel_release(&bytes).ok_or_else(|| Error::Parse {
        path: path.to_owned(),
        reason: "no Linux boot protocol version string".into(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn out_dir_table() {
        let root = Path::new("/ws");
        let cases = [
            (None, "/ws/out"),
            (Some(""), "/ws/out"),
            (Some("/elsewhere/out"), "/elsewhere/out"),
            (Some("rel"), "rel"),
        ];
        for (env, want) in cases {
            assert_eq!(
                out_dir_from(env.map(OsString::from), root),
                PathBuf::from(want),
                "{env:?}"
            );
        }
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("tests").is_dir());
    }

    #[test]
    fn missing_image_says_to_run_make_image() {
        let dir = std::env::temp_dir().join(format!("keel-paths-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        let err = Image::locate_in(&dir).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("initramfs.img is missing"), "{text}");
        assert!(text.ends_with("run `make image` first"), "{text}");

        std::fs::write(dir.join("initramfs.img"), b"i").unwrap();
        std::fs::write(dir.join("cmdline"), b"console=ttyS0 quiet\n").unwrap();
        std::fs::write(dir.join("manifest.json"), b"{\"kernel\": {}}").unwrap();
        let image = Image::locate_in(&dir).unwrap();
        assert_eq!(image.cmdline, "console=ttyS0 quiet");
        assert_eq!(image.manifest, serde_json::json!({"kernel": {}}));

        std::fs::write(dir.join("manifest.json"), b"{oops").unwrap();
        let err = Image::locate_in(&dir).unwrap_err().to_string();
        assert!(
            err.starts_with("Cannot parse ") && err.contains("manifest.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_release_table() {
        let image = |pointer: u16, version: &[u8]| {
            let mut bytes = vec![0u8; 0x400];
            bytes[0x202..0x206].copy_from_slice(b"HdrS");
            bytes[0x20e..0x210].copy_from_slice(&pointer.to_le_bytes());
            bytes.extend_from_slice(version);
            bytes
        };
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (
                image(
                    0x200,
                    b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1\0",
                ),
                Some("6.1.0-56-amd64"),
            ),
            (image(0x200, b"6.12.1\0"), Some("6.12.1")),
            (image(0x200, b"\0"), None),
            (image(0x7000, b"6.1\0"), None),
            (vec![0u8; 0x300], None),
            (Vec::new(), None),
        ];
        for (bytes, want) in cases {
            assert_eq!(kernel_release(&bytes).as_deref(), want);
        }
    }
}
