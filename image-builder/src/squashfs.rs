//! The read-only root image: a `Tree` staged on disk with normalised modes and times, packed by
//! Debian's `mksquashfs` with flags that make the output depend only on the staged content.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::tool::{self, ToolError};
use crate::tree::{Node, Source, Tree};

/// zstd level and block size: measured on the real root image, level 12 with 1 MiB blocks is
/// within 10% of the smallest setting (19) at a twentieth of the time (about 1 s against 20 s).
const ZSTD_LEVEL: &str = "12";
const BLOCK_SIZE: &str = "1M";

/// Time stamped on every inode and on the filesystem itself (seconds since the epoch).
pub const FIXED_TIME: u64 = 0;

/// Errors building the root image.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// Cannot stage {0}: {1}
    #[error("Cannot stage {0}: {1}")]
    Stage(PathBuf, std::io::Error),
    /// Cannot put device node {0} into the root image; only the initramfs may hold devices
    #[error("Cannot put device node {0} into the root image; only the initramfs may hold devices")]
    Device(String),
    /// mksquashfs failed: {0}
    #[error("mksquashfs failed: {0}")]
    Mksquashfs(ToolError),
}

/// Stages `tree` in `staging` (recreated) and packs it into `image`.
pub fn build(tree: &Tree, staging: &Path, image: &Path) -> Result<(), SquashfsError> {
    stage(tree, staging)?;
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(staging)
        .arg(image)
        .args([
            "-comp",
            "zstd",
            "-Xcompression-level",
            ZSTD_LEVEL,
            "-b",
            BLOCK_SIZE,
        ])
        .args([
            "-all-root",
            "-no-xattrs",
            "-noappend",
            "-no-progress",
            "-quiet",
        ])
        .args(["-all-time", &FIXED_TIME.to_string()])
        .args(["-mkfs-time", &FIXED_TIME.to_string()])
        // mksquashfs refuses -all-time/-mkfs-time when this is set; the flags say the same.
        .env_remove("SOURCE_DATE_EPOCH");
    tool::run(&mut cmd).map_err(SquashfsError::Mksquashfs)?;
    Ok(())
}

fn stage(tree: &Tree, staging: &Path) -> Result<(), SquashfsError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |e| SquashfsError::Stage(path, e)
    };
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(err(staging))?;
    }
    fs::create_dir_all(staging).map_err(err(staging))?;
    let mut dirs = vec![staging.to_path_buf()];
    for (path, node) in tree.iter() {
        let target = staging.join(path);
        match node {
            Node::Dir => {
                fs::create_dir(&target).map_err(err(&target))?;
                dirs.push(target.clone());
            }
            Node::File { source, .. } => {
                match source {
                    Source::Bytes(bytes) => fs::write(&target, bytes).map(|_| ()),
                    Source::Path(from) => fs::copy(from, &target).map(|_| ()),
                }
                .map_err(err(&target))?;
                set_time(&target)?;
            }
            Node::Symlink(link) => {
                std::os::unix::fs::symlink(link, &target).map_err(err(&target))?;
                continue;
            }
            Node::CharDevice { .. } => return Err(SquashfsError::Device(path.to_string())),
        }
        let mode = fs::Permissions::from_mode(node.mode() & 0o7777);
        fs::set_permissions(&target, mode).map_err(err(&target))?;
    }
    // Directory times last: creating children updated them.
    for dir in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err(dir))?;
        set_time(dir)?;
    }
    Ok(())
}

fn set_time(path: &Path) -> Result<(), SquashfsError> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(FIXED_TIME);
    File::open(path)
        .and_then(|f| f.set_modified(time))
        .map_err(|e| SquashfsError::Stage(path.to_path_buf(), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest::sha256_file;

    #[test]
    fn same_tree_gives_identical_image_and_unsquashfs_reads_it() {
        let dir = std::env::temp_dir().join(format!("keel-squashfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut tree = Tree::new();
        tree.add_bytes("etc/os-release", "NAME=Keel\n").unwrap();
        tree.add_bytes("usr/bin/keel", vec![1u8; 5000]).unwrap();
        tree.add("sbin/init", Node::Symlink("/usr/bin/keel".into()))
            .unwrap();
        tree.add_dir("proc").unwrap();
        let (a, b) = (dir.join("a.sqfs"), dir.join("b.sqfs"));
        build(&tree, &dir.join("stage"), &a).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        build(&tree, &dir.join("stage"), &b).unwrap();
        assert_eq!(sha256_file(&a).unwrap(), sha256_file(&b).unwrap());

        let listing =
            tool::run(Command::new("unsquashfs").args(["-lln", "-d", ""]).arg(&a)).unwrap();
        let listing = String::from_utf8(listing).unwrap();
        assert!(listing.contains("lrwxrwxrwx 0/0"), "{listing}");
        assert!(listing.contains("/sbin/init -> /usr/bin/keel"), "{listing}");
        assert!(
            listing.contains("1970-01-01 00:00 /etc/os-release"),
            "{listing}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_nodes_are_refused() {
        let mut tree = Tree::new();
        tree.add("dev/console", Node::CharDevice { major: 5, minor: 1 })
            .unwrap();
        let dir = std::env::temp_dir().join(format!("keel-squashfs-dev-{}", std::process::id()));
        let err = build(&tree, &dir.join("stage"), &dir.join("x.sqfs")).unwrap_err();
        assert!(matches!(err, SquashfsError::Device(ref p) if p == "dev/console"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
