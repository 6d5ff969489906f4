//! `kernel-config/kernel.lock`: the exact Debian kernel packages Keel is built from.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Cannot read kernel lock {0}: {1}
    #[error("Cannot read kernel lock {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Kernel lock {0} is not valid: {1}
    #[error("Kernel lock {0} is not valid: {1}")]
    Parse(PathBuf, serde_json::Error),
    /// Kernel lock entry {0} is not valid: {1}
    #[error("Kernel lock entry {0} is not valid: {1}")]
    Entry(String, &'static str),
}

/// Which of the two pinned kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The kernel Keel itself boots on bare metal.
    Host,
    /// The small kernel the tests boot inside Keel's VMs.
    Guest,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Host => "host",
            Which::Guest => "guest",
        })
    }
}

/// One pinned Debian kernel package.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Debian package name, `linux-image-<release>`.
    pub package: String,
    /// Exact Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
}

impl LockedPackage {
    /// The kernel release (`uname -r`), which Debian puts in the package name.
    pub fn release(&self) -> &str {
        self.package
            .strip_prefix("linux-image-")
            .unwrap_or(&self.package)
    }

    fn validate(&self) -> Result<(), LockError> {
        let bad = |why| Err(LockError::Entry(self.package.clone(), why));
        if !self.package.starts_with("linux-image-") || self.release().is_empty() {
            return bad("package name must be linux-image-<release>");
        }
        let name_ok = self
            .package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'));
        if !name_ok {
            return bad("package name has characters Debian does not allow");
        }
        let version_ok = !self.version.is_empty()
            && self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | '~' | ':'));
        if !version_ok {
            return bad("version is empty or has characters Debian does not allow");
        }
        let sha_ok = self.sha256.len() == 64
            && self
                .sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !sha_ok {
            return bad("sha256 must be 64 lower-case hex digits");
        }
        Ok(())
    }
}

/// The whole lock file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelLock {
    pub host: LockedPackage,
    pub guest: LockedPackage,
}

impl KernelLock {
    pub fn load(path: &Path) -> Result<Self, LockError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| LockError::Read(path.to_path_buf(), e))?;
        Self::parse(&text).map_err(|e| match e {
            LockError::Parse(_, err) => LockError::Parse(path.to_path_buf(), err),
            other => other,
        })
    }

    fn parse(text: &str) -> Result<Self, LockError> {
        let lock: KernelLock =
            serde_json::from_str(text).map_err(|e| LockError::Parse(PathBuf::new(), e))?;
        lock.host.validate()?;
        lock.guest.validate()?;
        Ok(lock)
    }

    pub fn get(&self, which: Which) -> &LockedPackage {
        match which {
            Which::Host => &self.host,
            Which::Guest => &self.guest,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHA: &str = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1";

    fn lock_text(package: &str, version: &str, sha: &str) -> String {
        format!(
            r#"{{"host": {{"package": "{package}", "version": "{version}", "sha256": "{sha}"}},
                "guest": {{"package": "linux-image-6.1.0-56-cloud-amd64", "version": "6.1.192-2", "sha256": "{SHA}"}}}}"#
        )
    }

    #[test]
    fn parses_and_validates_entries() {
        let cases = [
            ("linux-image-6.1.0-56-amd64", "6.1.192-2", SHA, true),
            ("linux-headers-6.1.0-56-amd64", "6.1.192-2", SHA, false),
            ("linux-image-", "6.1.192-2", SHA, false),
            ("linux-image-6.1 x", "6.1.192-2", SHA, false),
            ("linux-image-6.1.0-56-amd64", "", SHA, false),
            ("linux-image-6.1.0-56-amd64", "6.1.192-2; rm", SHA, false),
            ("linux-image-6.1.0-56-amd64", "6.1.192-2", "abc", false),
            (
                "linux-image-6.1.0-56-amd64",
                "6.1.192-2",
                &SHA.to_uppercase(),
                false,
            ),
        ];
        for (package, version, sha, ok) in cases {
            let got = KernelLock::parse(&lock_text(package, version, sha));
            assert_eq!(got.is_ok(), ok, "{package} {version} {sha}: {got:?}");
        }
    }

    #[test]
    fn release_comes_from_package_name() {
        let lock =
            KernelLock::parse(&lock_text("linux-image-6.1.0-56-amd64", "6.1.192-2", SHA)).unwrap();
        assert_eq!(lock.get(Which::Host).release(), "6.1.0-56-amd64");
        assert_eq!(lock.get(Which::Guest).release(), "6.1.0-56-cloud-amd64");
    }

    #[test]
    fn repository_lock_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/kernel.lock");
        let lock = KernelLock::load(&path).unwrap();
        assert_eq!(lock.host.package, "linux-image-6.1.0-56-amd64");
    }
}
