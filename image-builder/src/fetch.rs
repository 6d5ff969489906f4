//! Fetching a pinned Debian kernel package into the cache: `apt-get download`, sha256 check,
//! `dpkg-deb -x`, then `depmod` (Debian generates modules.dep at install time, so the package
//! does not carry it). Every step is skipped when its result is already in the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lock::LockedPackage;
use crate::manifest::sha256_file;
use crate::tool::{self, ToolError};

/// Marker written last into an extracted kernel tree; holds the sha256 of the `.deb` it came from.
const COMPLETE_MARKER: &str = ".keel-extracted";

/// Errors fetching a kernel package.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Cannot download {0}={1}: {2}
    #[error("Cannot download {0}={1}: {2}")]
    Download(String, String, ToolError),
    /// apt-get download of {0} produced {1} .deb files in {2}, expected one
    #[error("apt-get download of {0} produced {1} .deb files in {2}, expected one")]
    DownloadedFiles(String, usize, PathBuf),
    /// Checksum mismatch for {package} ({path}): kernel.lock says {expected}, file has {actual}
    #[error(
        "Checksum mismatch for {package} ({path}): kernel.lock says {expected}, file has {actual}"
    )]
    Checksum {
        package: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// Cannot extract {0}: {1}
    #[error("Cannot extract {0}: {1}")]
    Extract(String, ToolError),
    /// Cannot generate module index for {0}: {1}
    #[error("Cannot generate module index for {0}: {1}")]
    Depmod(String, ToolError),
    /// Package {0} has no {1}; is it a kernel image package?
    #[error("Package {0} has no {1}; is it a kernel image package?")]
    NotAKernel(String, String),
    /// Cannot use cache path {0}: {1}
    #[error("Cannot use cache path {0}: {1}")]
    Cache(PathBuf, std::io::Error),
}

/// An extracted kernel package in the cache.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub package: LockedPackage,
    /// Root of the extracted package (holds `boot/` and `lib/modules/`).
    pub root: PathBuf,
}

impl Kernel {
    pub fn release(&self) -> &str {
        self.package.release()
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release()))
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(format!("boot/config-{}", self.release()))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.release()))
    }
}

/// Makes sure `package` is downloaded, verified and extracted under `cache`; returns where.
pub fn fetch(package: &LockedPackage, cache: &Path) -> Result<Kernel, FetchError> {
    let id = format!(
        "{}_{}",
        package.package,
        package.version.replace(':', "%3a")
    );
    let root = cache.join("kernels").join(&id);
    let kernel = Kernel {
        package: package.clone(),
        root: root.clone(),
    };
    if fs::read_to_string(root.join(COMPLETE_MARKER))
        .ok()
        .as_deref()
        == Some(&package.sha256)
    {
        return Ok(kernel);
    }

    let deb = cache.join("debs").join(format!("{id}_amd64.deb"));
    if !deb.exists() {
        download(package, &deb)?;
    }
    verify(package, &deb)?;

    eprintln!("  extracting {}", deb.display());
    let partial = cache.join("kernels").join(format!("{id}.partial"));
    remove_if_present(&partial)?;
    mkdir(&partial)?;
    tool::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))
        .map_err(|e| FetchError::Extract(package.package.clone(), e))?;
    let extracted = Kernel {
        package: package.clone(),
        root: partial.clone(),
    };
    for needed in [extracted.vmlinuz(), extracted.config()] {
        if !needed.is_file() {
            let inside = needed.strip_prefix(&partial).unwrap_or(&needed);
            return Err(FetchError::NotAKernel(
                package.package.clone(),
                inside.display().to_string(),
            ));
        }
    }
    if extracted.modules_dir().is_dir() {
        tool::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&partial)
                .arg(package.release()),
        )
        .map_err(|e| FetchError::Depmod(package.package.clone(), e))?;
    }
    write(&partial.join(COMPLETE_MARKER), &package.sha256)?;
    remove_if_present(&root)?;
    fs::rename(&partial, &root).map_err(|e| FetchError::Cache(root.clone(), e))?;
    Ok(kernel)
}

/// Downloads into a scratch directory and moves the file into place only once it verified, so
/// an interrupted or wrong download never sits in the cache looking valid.
fn download(package: &LockedPackage, deb: &Path) -> Result<(), FetchError> {
    let spec = format!("{}={}", package.package, package.version);
    eprintln!("  downloading {spec} (apt-get download)");
    let scratch = deb.with_extension("download");
    remove_if_present(&scratch)?;
    mkdir(&scratch)?;
    tool::run(
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(&scratch),
    )
    .map_err(|e| FetchError::Download(package.package.clone(), package.version.clone(), e))?;
    let debs: Vec<PathBuf> = fs::read_dir(&scratch)
        .map_err(|e| FetchError::Cache(scratch.clone(), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    let [downloaded] = debs.as_slice() else {
        return Err(FetchError::DownloadedFiles(spec, debs.len(), scratch));
    };
    verify(package, downloaded)?;
    fs::rename(downloaded, deb).map_err(|e| FetchError::Cache(deb.to_path_buf(), e))?;
    remove_if_present(&scratch)
}

fn verify(package: &LockedPackage, deb: &Path) -> Result<(), FetchError> {
    let actual = sha256_file(deb).map_err(|e| FetchError::Cache(deb.to_path_buf(), e))?;
    if actual != package.sha256 {
        return Err(FetchError::Checksum {
            package: package.package.clone(),
            path: deb.to_path_buf(),
            expected: package.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), FetchError> {
    fs::create_dir_all(path).map_err(|e| FetchError::Cache(path.to_path_buf(), e))
}

fn write(path: &Path, text: &str) -> Result<(), FetchError> {
    fs::write(path, text).map_err(|e| FetchError::Cache(path.to_path_buf(), e))
}

fn remove_if_present(path: &Path) -> Result<(), FetchError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(FetchError::Cache(path.to_path_buf(), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-fetch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn package(sha256: &str) -> LockedPackage {
        LockedPackage {
            package: "linux-image-0.0.0-test-amd64".into(),
            version: "1.0-1".into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn cached_deb_with_wrong_checksum_is_an_error_naming_the_package() {
        let cache = scratch("mismatch");
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).unwrap();
        fs::write(
            debs.join("linux-image-0.0.0-test-amd64_1.0-1_amd64.deb"),
            b"junk",
        )
        .unwrap();
        let err = fetch(&package(&"0".repeat(64)), &cache).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, FetchError::Checksum { .. }), "{message}");
        assert!(
            message.contains("linux-image-0.0.0-test-amd64"),
            "{message}"
        );
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn completed_extraction_is_reused_without_touching_the_network() {
        let cache = scratch("cached");
        let root = cache.join("kernels/linux-image-0.0.0-test-amd64_1.0-1");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(COMPLETE_MARKER), "ab".repeat(32)).unwrap();
        let kernel = fetch(&package(&"ab".repeat(32)), &cache).unwrap();
        assert_eq!(kernel.root, root);
        assert_eq!(kernel.vmlinuz(), root.join("boot/vmlinuz-0.0.0-test-amd64"));
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn unknown_package_is_an_error_naming_it() {
        let cache = scratch("missing");
        let err = fetch(&package(&"0".repeat(64)), &cache).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, FetchError::Download(..)), "{message}");
        assert!(
            message.contains("linux-image-0.0.0-test-amd64=1.0-1"),
            "{message}"
        );
        fs::remove_dir_all(&cache).unwrap();
    }
}
