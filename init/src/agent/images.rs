//! The image store: kernels, initrds and disk images a manager uploads, under `<root>/<kind>/<name>`.
//!
//! An upload is streamed to a hidden temporary file while its SHA-256 is computed, checked against
//! the digest the manager announced, synced and only then renamed into place: a failed or
//! mismatching upload leaves nothing behind, and an image that is listed is complete. The digest is
//! kept next to the image (`.<name>.sha256`) so listing never rereads gigabytes.

use super::api::{Image, ImageKind, ImageList, StoreKind};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An upload's body: its bytes, then what may come after them.
pub trait UploadBody: Read {
    /// The declared length, when there is one.
    fn length(&self) -> Option<u64>;
    /// A field sent after the body (a chunked trailer), once the body is read.
    fn trailer(&self, name: &str) -> Option<String>;
}

/// Bytes with nothing after them.
struct Plain<'a>(&'a mut dyn Read);

impl Read for Plain<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl UploadBody for Plain<'_> {
    fn length(&self) -> Option<u64> {
        None
    }
    fn trailer(&self, _: &str) -> Option<String> {
        None
    }
}

impl UploadBody for &[u8] {
    fn length(&self) -> Option<u64> {
        Some(self.len() as u64)
    }
    fn trailer(&self, _: &str) -> Option<String> {
        None
    }
}

/// What an upload may take.
#[derive(Debug, Clone, Copy)]
struct Room {
    len: Option<u64>,
    free: u64,
    store: &'static str,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Image name {0:?} must be 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'
    #[error("Image name {0:?} must be 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    /// Unknown image kind {0:?}: expected kernel, initrd or disk
    #[error("Unknown image kind {0:?}: expected kernel, initrd or disk")]
    BadKind(String),
    /// The {0} header must be 64 hex digits, got {1:?}
    #[error("The {0} header must be 64 hex digits, got {1:?}")]
    BadDigest(&'static str, String),
    /// No {0} image named {1:?}
    #[error("No {0} image named {1:?}")]
    NotFound(&'static str, String),
    /// A {0} image named {1:?} exists already; delete it first
    #[error("A {0} image named {1:?} exists already; delete it first")]
    Exists(&'static str, String),
    /// The upload of {len} bytes does not fit: {free} bytes free in the {store} store
    #[error("The upload of {len} bytes does not fit: {free} bytes free in the {store} store")]
    NoSpace {
        len: u64,
        free: u64,
        store: &'static str,
    },
    /// The upload ended after {got} of {len} bytes
    #[error("The upload ended after {got} of {len} bytes")]
    Short { got: u64, len: u64 },
    /// The upload broke off after {got} bytes: {reason}
    #[error("The upload broke off after {got} bytes: {reason}")]
    Broken { got: u64, reason: String },
    /// Send the image's SHA-256 (64 hex digits) in the {0} header or trailer
    #[error("Send the image's SHA-256 (64 hex digits) in the {0} header or trailer")]
    NoDigest(&'static str),
    /// SHA-256 mismatch: expected {expected}, the upload has {actual}; nothing was stored
    #[error("SHA-256 mismatch: expected {expected}, the upload has {actual}; nothing was stored")]
    Mismatch { expected: String, actual: String },
    /// Cannot {0} {1}: {2}
    #[error("Cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, io::Error),
}

impl StoreError {
    /// The HTTP status for this error: client mistakes are 4xx, the host's own failures 500.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadName(_)
            | Self::BadKind(_)
            | Self::BadDigest(..)
            | Self::Short { .. }
            | Self::Broken { .. }
            | Self::NoDigest(_)
            | Self::Mismatch { .. } => 400,
            Self::NotFound(..) => 404,
            Self::Exists(..) => 409,
            Self::NoSpace { .. } => 507,
            Self::Io(..) => 500,
        }
    }
}

/// Checks an image name: it becomes a file name, so no '/', no leading '.'.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// Parses a kind from a path segment.
pub fn parse_kind(s: &str) -> Result<ImageKind, StoreError> {
    ImageKind::parse(s).ok_or_else(|| StoreError::BadKind(s.to_string()))
}

fn check_digest(header: &'static str, digest: &str) -> Result<String, StoreError> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digest.to_ascii_lowercase())
    } else {
        Err(StoreError::BadDigest(header, digest.to_string()))
    }
}

/// Lowercase hex of `bytes` (keel-api's, the digests' wire form).
pub use keel_api::hex;

/// Total and free bytes of the filesystem holding `dir`.
fn space(dir: &Path) -> io::Result<(u64, u64)> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and st is writable.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    Ok((st.f_blocks * frsize, st.f_bavail * frsize))
}

/// The image store.
pub struct Store {
    root: PathBuf,
    kind: StoreKind,
    /// Serialises uploads and deletes of the same names; listing needs no lock.
    writing: Mutex<()>,
}

impl Store {
    /// A store in `root` (created if missing).
    pub fn open(root: PathBuf, kind: StoreKind) -> Result<Self, StoreError> {
        for k in ImageKind::ALL {
            let dir = root.join(k.as_str());
            fs::create_dir_all(&dir).map_err(|e| StoreError::Io("create", dir, e))?;
        }
        Ok(Self {
            root,
            kind,
            writing: Mutex::new(()),
        })
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Where VMs keep private copies of disk images (`<vm>/disk<N>.img`), in the same store so
    /// they share its space and its file system (reflinks work only within one).
    pub fn vm_copies(&self) -> PathBuf {
        self.root.join("vm-disks")
    }

    fn file(&self, kind: ImageKind, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.root.join(kind.as_str()).join(name))
    }

    fn digest_file(&self, kind: ImageKind, name: &str) -> PathBuf {
        self.root
            .join(kind.as_str())
            .join(format!(".{name}.sha256"))
    }

    /// The path of an existing image, for a VM to use.
    pub fn path(&self, kind: ImageKind, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.file(kind, name)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NotFound(kind.as_str(), name.to_string()))
        }
    }

    /// Every image, sorted by kind and name, and the store's space.
    pub fn list(&self) -> Result<ImageList, StoreError> {
        let mut images = Vec::new();
        for kind in ImageKind::ALL {
            let dir = self.root.join(kind.as_str());
            let entries = fs::read_dir(&dir).map_err(|e| StoreError::Io("list", dir.clone(), e))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let sha256 = fs::read_to_string(self.digest_file(kind, &name)).unwrap_or_default();
                images.push(Image {
                    kind,
                    name,
                    size: meta.len(),
                    sha256: sha256.trim().to_string(),
                });
            }
        }
        images.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
        let (capacity, free) =
            space(&self.root).map_err(|e| StoreError::Io("stat", self.root.clone(), e))?;
        Ok(ImageList {
            store: self.kind,
            capacity,
            free,
            images,
        })
    }

    /// Stores `len` bytes from `body` as `kind/name` if their SHA-256 is `expected`.
    pub fn upload(
        &self,
        kind: ImageKind,
        name: &str,
        expected: &str,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<Image, StoreError> {
        self.upload_stream(kind, name, Some(expected), Some(len), &mut Plain(body))
    }

    /// Stores `body` as `kind/name` if its SHA-256 is `expected` (or, when that is `None`, the
    /// one the body names after its end: a chunked upload's trailer). Without a `len`, the body
    /// runs to its end, within the free space.
    pub fn upload_stream(
        &self,
        kind: ImageKind,
        name: &str,
        expected: Option<&str>,
        len: Option<u64>,
        body: &mut dyn UploadBody,
    ) -> Result<Image, StoreError> {
        let path = self.file(kind, name)?;
        let header = super::api::SHA256_HEADER;
        let expected = expected.map(|e| check_digest(header, e)).transpose()?;
        let _guard = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if path.exists() {
            return Err(StoreError::Exists(kind.as_str(), name.to_string()));
        }
        let (_, free) =
            space(&self.root).map_err(|e| StoreError::Io("stat", self.root.clone(), e))?;
        let store = match self.kind {
            StoreKind::Disk => "disk",
            StoreKind::Ram => "RAM",
        };
        if let Some(len) = len.filter(|&len| len > free) {
            return Err(StoreError::NoSpace { len, free, store });
        }
        let part = self.root.join(kind.as_str()).join(format!(".{name}.part"));
        let room = Room { len, free, store };
        let result = Self::receive(&part, room, &mut *body).and_then(|(actual, size)| {
            let expected = match expected {
                Some(expected) => expected,
                None => {
                    let late = body.trailer(header).ok_or(StoreError::NoDigest(header))?;
                    check_digest(header, &late)?
                }
            };
            if actual == expected {
                Ok((expected, size))
            } else {
                Err(StoreError::Mismatch { expected, actual })
            }
        });
        let (expected, size) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        fs::write(self.digest_file(kind, name), format!("{expected}\n"))
            .map_err(|e| StoreError::Io("write", self.digest_file(kind, name), e))?;
        fs::rename(&part, &path).map_err(|e| StoreError::Io("rename", part.clone(), e))?;
        Ok(Image {
            kind,
            name: name.to_string(),
            size,
            sha256: expected,
        })
    }

    /// Copies the body (exactly `len` bytes when given) into `part`, synced; returns its
    /// SHA-256 and size.
    fn receive(part: &Path, room: Room, body: &mut dyn Read) -> Result<(String, u64), StoreError> {
        let io_err = |op, e| StoreError::Io(op, part.to_path_buf(), e);
        let mut file: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(part)
            .map_err(|e| io_err("create", e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let want = match room.len {
                Some(len) if got >= len => break,
                Some(len) => usize::try_from(len - got)
                    .unwrap_or(usize::MAX)
                    .min(buf.len()),
                None => buf.len(),
            };
            let n = match (body.read(&mut buf[..want]), room.len) {
                (Ok(0), Some(len)) => return Err(StoreError::Short { got, len }),
                (Ok(0), None) => break,
                (Ok(n), _) => n,
                (Err(e), _) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A client that stops sending is the client's problem, not the host's.
                (Err(_), Some(len)) => return Err(StoreError::Short { got, len }),
                (Err(e), None) => {
                    let reason = e.to_string();
                    return Err(StoreError::Broken { got, reason });
                }
            };
            if room.len.is_none() && got + n as u64 > room.free {
                let (len, free, store) = (got + n as u64, room.free, room.store);
                return Err(StoreError::NoSpace { len, free, store });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| io_err("write", e))?;
            got += n as u64;
        }
        file.sync_all().map_err(|e| io_err("sync", e))?;
        Ok((hex(&hasher.finalize()), got))
    }

    /// Removes an image.
    pub fn delete(&self, kind: ImageKind, name: &str) -> Result<(), StoreError> {
        let path = self.file(kind, name)?;
        let _guard = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = fs::remove_file(self.digest_file(kind, name));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(kind.as_str(), name.to_string()))
            }
            Err(e) => Err(StoreError::Io("remove", path, e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn names() {
        for ok in ["vmlinuz", "initrd-6.1.img", "a_b", "A9"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(129)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_kind("kernel").is_ok());
        assert!(parse_kind("kernels")
            .unwrap_err()
            .to_string()
            .contains("kernels"));
    }

    #[test]
    fn upload_list_delete() {
        let dir = TestDir::new("images");
        let store = Store::open(dir.path().join("store"), StoreKind::Ram).unwrap();
        let data = b"not really a kernel";
        let image = store
            .upload(
                ImageKind::Kernel,
                "k",
                &sha(data),
                data.len() as u64,
                &mut &data[..],
            )
            .unwrap();
        assert_eq!(image.size, data.len() as u64);
        assert_eq!(
            fs::read(store.path(ImageKind::Kernel, "k").unwrap()).unwrap(),
            data
        );
        let list = store.list().unwrap();
        assert_eq!(list.images, vec![image]);
        assert_eq!(list.store, StoreKind::Ram);
        assert!(list.capacity >= list.free && list.free > 0);

        let again = store.upload(ImageKind::Kernel, "k", &sha(data), 19, &mut &data[..]);
        assert_eq!(again.unwrap_err().status(), 409);
        // The same name under another kind is another image.
        assert!(store
            .upload(ImageKind::Initrd, "k", &sha(data), 19, &mut &data[..])
            .is_ok());
        store.delete(ImageKind::Kernel, "k").unwrap();
        assert_eq!(
            store.delete(ImageKind::Kernel, "k").unwrap_err().status(),
            404
        );
        assert_eq!(
            store.path(ImageKind::Kernel, "k").unwrap_err().status(),
            404
        );
    }

    #[test]
    fn bad_uploads_leave_nothing() {
        let dir = TestDir::new("images-bad");
        let store = Store::open(dir.path().to_path_buf(), StoreKind::Ram).unwrap();
        let data = b"abc";
        let cases: Vec<(&str, u64, String, &str)> = vec![
            ("m", 3, sha(b"abd"), "mismatch"),
            ("s", 10, sha(data), "ended after 3 of 10"),
            ("d", 3, "xyz".into(), "64 hex digits"),
            ("../x", 3, sha(data), "Image name"),
            ("big", u64::MAX, sha(data), "does not fit"),
        ];
        for (name, len, digest, want) in cases {
            let err = store
                .upload(ImageKind::Disk, name, &digest, len, &mut &data[..])
                .unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            assert!((400..500).contains(&err.status()) || err.status() == 507);
        }
        assert!(store.list().unwrap().images.is_empty());
        let leftovers = fs::read_dir(dir.path().join("disk")).unwrap().count();
        assert_eq!(leftovers, 0);
    }
}
