//! Crash-safe file replacement: a reader sees either the old file or the new one, never a torn mix,
//! and a successful return means the new content survives a power cut.
//!
//! The sequence is the classic one: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory (the rename lives in the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A failed step of an atomic write or removal.
#[derive(Debug, thiserror::Error)]
/// Cannot {op} {path}: {source}
#[error("Cannot {op} {path}: {source}")]
pub struct AtomicError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn step<T>(op: &'static str, path: &Path, result: io::Result<T>) -> Result<T, AtomicError> {
    result.map_err(|source| AtomicError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// The directory holding `path` ("." for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes the directory entry table of `dir` to disk.
fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    let handle = step("open directory", dir, File::open(dir))?;
    step("fsync directory", dir, handle.sync_all())
}

/// Replaces `path` with `contents`, created with permission bits `mode` (before umask).
///
/// Writers of the same `path` must be serialised by the caller: they share one temporary name
/// (`.<name>.tmp`), so that a crash leaves at most one stale temporary, removed by the next write.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicError> {
    let name = path.file_name().ok_or_else(|| AtomicError {
        op: "write",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = parent_of(path);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return step("remove stale", &tmp, Err(e));
        }
        _ => {}
    }
    let mut file = step(
        "create",
        &tmp,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp),
    )?;
    let written = step("write", &tmp, file.write_all(contents))
        .and_then(|()| step("fsync", &tmp, file.sync_all()));
    drop(file);
    if let Err(e) = written.and_then(|()| step("rename", path, fs::rename(&tmp, path))) {
        // Best effort: the temporary is garbage now, and the next write removes it anyway.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Removes `path` durably. Returns whether it existed.
pub fn remove_durable(path: &Path) -> Result<bool, AtomicError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent_of(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => step("remove", path, Err(e)),
    }
}

#[cfg(test)]
pub(crate) mod testdir {
    //! Self-cleaning temporary directories for tests (no tempfile crate in the image).

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("keel-agent-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            if let Err(e) = std::fs::create_dir_all(&path) {
                panic!("cannot create {}: {e}", path.display());
            }
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testdir::TestDir;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replaces_and_leaves_no_temporary() {
        let dir = TestDir::new("atomic");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two, longer", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn applies_mode() {
        let dir = TestDir::new("atomic-mode");
        let path = dir.path().join("key");
        write_atomic(&path, b"secret", 0o600).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn removes_stale_temporary() {
        let dir = TestDir::new("atomic-stale");
        let path = dir.path().join("f");
        fs::write(dir.path().join(".f.tmp"), b"torn").unwrap();
        write_atomic(&path, b"whole", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        assert!(!dir.path().join(".f.tmp").exists());
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = TestDir::new("atomic-missing");
        let path = dir.path().join("no/such/dir/f");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.op, "create");
        assert!(err.to_string().contains("no/such/dir/.f.tmp"), "{err}");
    }

    #[test]
    fn remove_durable_reports_existence() {
        let dir = TestDir::new("atomic-remove");
        let path = dir.path().join("f");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert!(remove_durable(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_durable(&path).unwrap());
    }
}
