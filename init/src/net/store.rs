//! Where the saved network configuration lives, and the resolver configuration Keel writes.
//!
//! The saved configuration is `network.json` on the state partition (`state::STATE_DIR`) when
//! one is mounted, else in `/var/lib/keel`, a tmpfs: then settings do not survive a reboot and
//! the status says so. PID 1's store follows the state record, so a state partition created
//! while the host runs (`state::create_on`) is used from then on.
//! `/etc` is part of the read-only root image: its `resolv.conf` is a symlink to
//! `/run/keel/resolv.conf`, which is written here.

use std::path::{Path, PathBuf};

use super::model::NetConfig;
use crate::sys::atomic::{write_atomic, AtomicError};

/// The saved configuration's file name.
pub const CONFIG_FILE: &str = "network.json";
/// The resolver configuration `/etc/resolv.conf` points to.
pub const RESOLV_CONF: &str = "/run/keel/resolv.conf";
/// The resolver reads at most three name servers.
const MAX_NAMESERVERS: usize = 3;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Cannot read {0}: {1}
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// {0} is not a valid network configuration: {1}
    #[error("{0} is not a valid network configuration: {1}")]
    Parse(PathBuf, serde_json::Error),
    /// Cannot create {0}: {1}
    #[error("cannot create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// {0}
    #[error("{0}")]
    Write(#[from] AtomicError),
    /// Cannot encode the configuration: {0}
    #[error("cannot encode the configuration: {0}")]
    Encode(serde_json::Error),
}

/// The saved configuration's home.
#[derive(Debug, Clone)]
pub struct Store {
    /// None: wherever `state::dir_or_ram` says, at each use.
    dir: Option<PathBuf>,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: Some(dir.to_path_buf()),
        }
    }

    /// The store on the state partition, or in RAM while there is none.
    pub fn following_state() -> Store {
        Store { dir: None }
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(crate::state::dir_or_ram)
    }

    pub fn path(&self) -> PathBuf {
        self.dir().join(CONFIG_FILE)
    }

    /// True if the state directory is on a file system that survives a reboot.
    pub fn persistent(&self) -> bool {
        let Ok(path) = crate::sys::syscall::cpath(&self.dir()) else {
            return false;
        };
        // SAFETY: statfs is plain old data, filled by the call.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: path is NUL-terminated and st valid for writes.
        if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
            return false;
        }
        let kind = st.f_type as i64;
        kind != TMPFS_MAGIC && kind != RAMFS_MAGIC
    }

    /// The saved configuration; None if nothing was saved.
    pub fn load(&self) -> Result<Option<NetConfig>, StoreError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Parse(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Read(path, e)),
        }
    }

    pub fn save(&self, config: &NetConfig) -> Result<(), StoreError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Dir(dir.clone(), e))?;
        let mut text = serde_json::to_vec_pretty(config).map_err(StoreError::Encode)?;
        text.push(b'\n');
        write_atomic(&self.path(), &text, 0o600)?;
        Ok(())
    }
}

/// The text of resolv.conf for these servers and search domains.
pub fn resolv_conf(servers: &[String], search: &[String]) -> String {
    let mut out = String::from("# Written by Keel (host network configuration)\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for server in servers.iter().take(MAX_NAMESERVERS) {
        out.push_str(&format!("nameserver {server}\n"));
    }
    out
}

/// Writes the resolver configuration (at `path`, normally `RESOLV_CONF`).
pub fn write_resolv_conf(
    path: &Path,
    servers: &[String],
    search: &[String],
) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_path_buf(), e))?;
    }
    write_atomic(path, resolv_conf(servers, search).as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads() {
        let dir = temp_dir("store");
        let store = Store::new(&dir);
        assert!(store.load().unwrap().is_none());
        let config = NetConfig {
            hostname: Some("h".into()),
            ntp: Some(vec!["pool.ntp.org".into()]),
            ..NetConfig::default()
        };
        store.save(&config).unwrap();
        assert_eq!(store.load().unwrap(), Some(config));
        std::fs::write(store.path(), "{\"hostname\": 1}").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{} is not a valid network configuration: ",
                store.path().display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn knows_tmpfs_is_not_persistent() {
        // /dev/shm is a tmpfs on Linux; /proc is not a RAM file system but nothing survives there
        // either, so only the tmpfs answer is meaningful here.
        assert!(!Store::new(Path::new("/dev/shm")).persistent());
        assert!(!Store::new(Path::new("/no/such/dir")).persistent());
    }

    #[test]
    fn renders_resolv_conf() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases = [
            (
                s(&[]),
                s(&[]),
                "# Written by Keel (host network configuration)\n",
            ),
            (
                s(&["10.0.2.3", "1.1.1.1", "8.8.8.8", "9.9.9.9"]),
                s(&["example.com", "lab"]),
                "# Written by Keel (host network configuration)\nsearch example.com lab\n\
                 nameserver 10.0.2.3\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n",
            ),
        ];
        for (servers, search, want) in cases {
            assert_eq!(resolv_conf(&servers, &search), want);
        }
        let dir = temp_dir("resolv");
        let path = dir.join("run/resolv.conf");
        write_resolv_conf(&path, &s(&["10.0.2.3"]), &[]).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("nameserver 10.0.2.3\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
