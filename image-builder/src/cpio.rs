//! A reproducible newc ("070701") cpio writer, the format the kernel unpacks an initramfs
//! from: entries in sorted order, inode numbers counted from 1 in that order, owner root,
//! mtime 0. Output is optionally zstd-compressed as one frame stream.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::tree::{Node, Source, Tree};

/// zstd level for initramfs images: most of the bytes are the already-compressed root image,
/// so a higher level buys little and costs seconds on every build.
pub const ZSTD_LEVEL: i32 = 9;

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Cannot read {0} for the archive: {1}
    #[error("Cannot read {0} for the archive: {1}")]
    Read(PathBuf, io::Error),
    /// {0} changed size while being archived ({1} bytes expected, {2} read)
    #[error("{0} changed size while being archived ({1} bytes expected, {2} read)")]
    Changed(PathBuf, u64, u64),
    /// {0} is too large for a newc cpio archive ({1} bytes; limit is 4 GiB)
    #[error("{0} is too large for a newc cpio archive ({1} bytes; limit is 4 GiB)")]
    TooLarge(String, u64),
    /// Cannot write archive {0}: {1}
    #[error("Cannot write archive {0}: {1}")]
    Write(PathBuf, io::Error),
}

/// Writes `tree` as a newc archive (with trailer) to `out`.
pub fn write_newc<W: Write>(tree: &Tree, out: &mut W, name: &Path) -> Result<(), CpioError> {
    let mut writer = NewcWriter {
        out,
        offset: 0,
        name,
    };
    for (ino, (path, node)) in (1u32..).zip(tree.iter()) {
        writer.entry(ino, path, node)?;
    }
    writer.header(0, "TRAILER!!!", 0, 1, 0, NO_RDEV)?;
    Ok(())
}

/// Writes `tree` as a zstd-compressed newc archive to the file `path`.
pub fn write_zstd_file(tree: &Tree, path: &Path) -> Result<(), CpioError> {
    let werr = |e| CpioError::Write(path.to_path_buf(), e);
    let file = File::create(path).map_err(werr)?;
    let mut encoder =
        zstd::stream::Encoder::new(io::BufWriter::new(file), ZSTD_LEVEL).map_err(werr)?;
    encoder.include_checksum(true).map_err(werr)?;
    write_newc(tree, &mut encoder, path)?;
    encoder.finish().map_err(werr)?.flush().map_err(werr)
}

/// Device number of everything but device nodes.
const NO_RDEV: (u32, u32) = (0, 0);

struct NewcWriter<'a, W: Write> {
    out: &'a mut W,
    offset: u64,
    /// The archive's name, for errors.
    name: &'a Path,
}

impl<W: Write> NewcWriter<'_, W> {
    fn entry(&mut self, ino: u32, path: &str, node: &Node) -> Result<(), CpioError> {
        let mode = node.mode();
        match node {
            Node::Dir => self.header(ino, path, mode, 2, 0, NO_RDEV),
            Node::Symlink(target) => {
                let size = self.size32(path, target.len() as u64)?;
                self.header(ino, path, mode, 1, size, NO_RDEV)?;
                self.data(target.as_bytes())?;
                self.pad()
            }
            Node::CharDevice { major, minor } => {
                self.header(ino, path, mode, 1, 0, (*major, *minor))
            }
            Node::File {
                source: Source::Bytes(bytes),
                ..
            } => {
                let size = self.size32(path, bytes.len() as u64)?;
                self.header(ino, path, mode, 1, size, NO_RDEV)?;
                self.data(bytes)?;
                self.pad()
            }
            Node::File {
                source: Source::Path(from),
                ..
            } => {
                let rerr = |e| CpioError::Read(from.clone(), e);
                let mut file = File::open(from).map_err(rerr)?;
                let len = file.metadata().map_err(rerr)?.len();
                let size = self.size32(path, len)?;
                self.header(ino, path, mode, 1, size, NO_RDEV)?;
                let copied = io::copy(&mut (&mut file).take(len), &mut self.out).map_err(rerr)?;
                if copied != len {
                    return Err(CpioError::Changed(from.clone(), len, copied));
                }
                self.offset += copied;
                self.pad()
            }
        }
    }

    fn size32(&self, path: &str, len: u64) -> Result<u32, CpioError> {
        u32::try_from(len).map_err(|_| CpioError::TooLarge(path.to_string(), len))
    }

    fn header(
        &mut self,
        ino: u32,
        path: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        (rdevmajor, rdevminor): (u32, u32),
    ) -> Result<(), CpioError> {
        let namesize = path.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {devmajor:08x}{devminor:08x}{rdevmajor:08x}{rdevminor:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            devmajor = 0,
            devminor = 0,
            check = 0,
        );
        self.data(header.as_bytes())?;
        self.data(path.as_bytes())?;
        self.data(&[0])?;
        self.pad()
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out
            .write_all(bytes)
            .map_err(|e| CpioError::Write(self.name.to_path_buf(), e))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Pads to the 4-byte alignment newc requires after names and after data.
    fn pad(&mut self) -> Result<(), CpioError> {
        let fill = (4 - self.offset % 4) % 4;
        self.data(&[0u8; 3][..fill as usize])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample_tree(dir: &Path) -> Tree {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("big"), vec![7u8; 100_003]).unwrap();
        let mut tree = Tree::new();
        tree.add_file("init", &dir.join("big"), true).unwrap();
        tree.add_bytes("early/modules.order", "loop.ko\n").unwrap();
        tree.add("dev/console", Node::CharDevice { major: 5, minor: 1 })
            .unwrap();
        tree.add("sbin/init", Node::Symlink("/init".into()))
            .unwrap();
        tree
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-cpio-{name}-{}", std::process::id()))
    }

    #[test]
    fn header_layout_matches_newc() {
        let mut tree = Tree::new();
        tree.add_bytes("a", "xyz").unwrap();
        let mut out = Vec::new();
        write_newc(&tree, &mut out, Path::new("mem")).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        // 110-byte header, "a\0" padded to 112, 3 data bytes padded to 116, then the trailer.
        assert!(text.starts_with("07070100000001000081a4000000000000000000000001"));
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn same_tree_gives_identical_bytes() {
        let dir = scratch("twice");
        let tree = sample_tree(&dir);
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        write_zstd_file(&tree, &a).unwrap();
        write_zstd_file(&sample_tree(&dir), &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// GNU cpio (installed by `make deps`) must read back exactly what was written.
    #[test]
    fn gnu_cpio_extracts_the_archive() {
        let dir = scratch("gnu");
        let tree = sample_tree(&dir);
        let mut raw = Vec::new();
        write_newc(&tree, &mut raw, Path::new("mem")).unwrap();
        let listing = Command::new("sh")
            .arg("-c")
            .arg("TZ=UTC LC_ALL=C cpio -itv --quiet")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&raw)?;
                child.wait_with_output()
            })
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        let want = "\
drwxr-xr-x   2 root     root            0 Jan  1  1970 dev
crw-------   1 root     root       5,   1 Jan  1  1970 dev/console
drwxr-xr-x   2 root     root            0 Jan  1  1970 early
-rw-r--r--   1 root     root            8 Jan  1  1970 early/modules.order
-rwxr-xr-x   1 root     root       100003 Jan  1  1970 init
drwxr-xr-x   2 root     root            0 Jan  1  1970 sbin
lrwxrwxrwx   1 root     root            5 Jan  1  1970 sbin/init -> /init
";
        assert_eq!(listing, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
