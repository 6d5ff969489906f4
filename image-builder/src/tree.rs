//! An in-memory description of a file tree (paths, kinds, permissions, where the bytes come
//! from). The same tree is written as a newc cpio (`cpio.rs`) or staged on disk for
//! `mksquashfs` (`squashfs.rs`). Owners and times are deliberately not part of it: both writers
//! use root and a fixed time, which is what makes the images reproducible.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors building a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Path {0:?} is not a clean relative path (no empty, `.` or `..` components)
    #[error("Path {0:?} is not a clean relative path (no empty, `.` or `..` components)")]
    BadPath(String),
    /// Cannot add {0}: its parent {1} is not a directory in the image
    #[error("Cannot add {0}: its parent {1} is not a directory in the image")]
    ParentNotDir(String, String),
    /// Cannot add {0}: a directory of that name is already in the image
    #[error("Cannot add {0}: a directory of that name is already in the image")]
    ReplacesDir(String),
    /// Cannot read {0}: {1}
    #[error("Cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// {0} is neither a file, a directory nor a symlink
    #[error("{0} is neither a file, a directory nor a symlink")]
    Unsupported(PathBuf),
    /// File name {0:?} is not UTF-8
    #[error("File name {0:?} is not UTF-8")]
    NotUtf8(PathBuf),
}

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Bytes(Vec<u8>),
    /// Read when the image is written (large files are never held in memory).
    Path(PathBuf),
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        source: Source,
        executable: bool,
    },
    Symlink(String),
    /// Only the cpio writer supports device nodes (the initramfs needs `/dev/console`).
    CharDevice {
        major: u32,
        minor: u32,
    },
}

impl Node {
    /// The full `st_mode` both writers use.
    pub fn mode(&self) -> u32 {
        match self {
            Node::Dir => 0o040_755,
            Node::File {
                executable: true, ..
            } => 0o100_755,
            Node::File { .. } => 0o100_644,
            Node::Symlink(_) => 0o120_777,
            Node::CharDevice { .. } => 0o020_600,
        }
    }
}

/// A file tree keyed by relative path; iteration is sorted, so parents come before children.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `path`, creating missing parent directories. A later file replaces
    /// an earlier one, which is how overlays override `rootfs/files`.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let path = clean(path)?;
        for (end, _) in path.match_indices('/') {
            let parent = &path[..end];
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(parent.to_string(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => return Err(TreeError::ParentNotDir(path.clone(), parent.to_string())),
            }
        }
        match (self.entries.get(&path), &node) {
            (Some(Node::Dir), Node::Dir) => return Ok(()),
            (Some(Node::Dir), _) => return Err(TreeError::ReplacesDir(path)),
            _ => {}
        }
        self.entries.insert(path, node);
        Ok(())
    }

    pub fn add_dir(&mut self, path: &str) -> Result<(), TreeError> {
        self.add(path, Node::Dir)
    }

    pub fn add_bytes(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Result<(), TreeError> {
        self.add(
            path,
            Node::File {
                source: Source::Bytes(bytes.into()),
                executable: false,
            },
        )
    }

    pub fn add_file(&mut self, path: &str, from: &Path, executable: bool) -> Result<(), TreeError> {
        self.add(
            path,
            Node::File {
                source: Source::Path(from.to_path_buf()),
                executable,
            },
        )
    }

    /// Adds everything below the host directory `dir` under `prefix` (empty for the root),
    /// keeping only the executable bit of each file's mode.
    pub fn add_host_dir(&mut self, prefix: &str, dir: &Path) -> Result<(), TreeError> {
        let mut children: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| TreeError::Read(dir.to_path_buf(), e))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| TreeError::Read(dir.to_path_buf(), e))?;
        children.sort();
        for child in children {
            let name = child
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| TreeError::NotUtf8(child.clone()))?;
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let meta =
                fs::symlink_metadata(&child).map_err(|e| TreeError::Read(child.clone(), e))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.add_dir(&path)?;
                self.add_host_dir(&path, &child)?;
            } else if kind.is_file() {
                let executable = meta.permissions().mode() & 0o111 != 0;
                self.add_file(&path, &child, executable)?;
            } else if kind.is_symlink() {
                let target =
                    fs::read_link(&child).map_err(|e| TreeError::Read(child.clone(), e))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| TreeError::NotUtf8(target.clone()))?;
                self.add(&path, Node::Symlink(target.to_string()))?;
            } else {
                return Err(TreeError::Unsupported(child));
            }
        }
        Ok(())
    }

    /// Entries in sorted path order (every parent before its children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries
            .iter()
            .map(|(path, node)| (path.as_str(), node))
    }

    /// Number of regular files whose path ends in `suffix`.
    pub fn count_files(&self, suffix: &str) -> usize {
        self.entries
            .iter()
            .filter(|(path, node)| matches!(node, Node::File { .. }) && path.ends_with(suffix))
            .count()
    }
}

fn clean(path: &str) -> Result<String, TreeError> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(TreeError::BadPath(path.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn adds_parents_and_sorts_parents_first() {
        let mut tree = Tree::new();
        tree.add_bytes("usr/lib/a-b", "x").unwrap();
        tree.add_bytes("/usr/bin/keel", "y").unwrap();
        tree.add("sbin/init", Node::Symlink("/usr/bin/keel".into()))
            .unwrap();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "sbin",
                "sbin/init",
                "usr",
                "usr/bin",
                "usr/bin/keel",
                "usr/lib",
                "usr/lib/a-b"
            ]
        );
    }

    #[test]
    fn rejects_bad_paths_and_kind_conflicts() {
        let mut tree = Tree::new();
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/."] {
            assert!(
                matches!(tree.add_dir(bad), Err(TreeError::BadPath(_))),
                "{bad}"
            );
        }
        tree.add_bytes("etc/os-release", "x").unwrap();
        assert!(matches!(
            tree.add_bytes("etc/os-release/x", "y"),
            Err(TreeError::ParentNotDir(..))
        ));
        assert!(matches!(
            tree.add_bytes("etc", "y"),
            Err(TreeError::ReplacesDir(_))
        ));
        tree.add_bytes("etc/os-release", "replaced").unwrap();
        tree.add_dir("etc").unwrap();
        assert_eq!(tree.count_files("os-release"), 1);
    }

    #[test]
    fn host_dir_keeps_executable_bit_and_symlinks() {
        let dir = std::env::temp_dir().join(format!("keel-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/conf"), "c").unwrap();
        fs::write(dir.join("tool"), "t").unwrap();
        fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("tool", dir.join("link")).unwrap();
        let mut tree = Tree::new();
        tree.add_host_dir("opt", &dir).unwrap();
        let modes: Vec<(&str, u32)> = tree.iter().map(|(p, n)| (p, n.mode())).collect();
        assert_eq!(
            modes,
            [
                ("opt", 0o040_755),
                ("opt/etc", 0o040_755),
                ("opt/etc/conf", 0o100_644),
                ("opt/link", 0o120_777),
                ("opt/tool", 0o100_755),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
