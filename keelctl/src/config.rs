//! keelctl's configuration directory (`$XDG_CONFIG_HOME/keel`, else `~/.config/keel`):
//!
//! ```text
//! ca.pem, ca-key.pem            the manager CA (`keelctl ca init`), key mode 0600
//! client.pem, client-key.pem    keelctl's client certificate from that CA
//! hosts/<name>.json             adopted hosts: {"addr": "10.0.0.5:8443", "fingerprint": "sha256:…"}
//! current                       the name of the host commands go to by default
//! ```

use keel_trust::ca::{CaError, ClientCert, ManagerCa, Validity};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use keel_trust::tls::parse_cert_pem;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The agent's port when an address names none.
pub const DEFAULT_PORT: u16 = 8443;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Cannot find the configuration directory: set XDG_CONFIG_HOME or HOME, or pass --config-dir
    #[error("Cannot find the configuration directory: set XDG_CONFIG_HOME or HOME, or pass --config-dir")]
    NoDir,
    /// No manager CA in {0}: run `keelctl ca init` first
    #[error("No manager CA in {0}: run `keelctl ca init` first")]
    NoCa(PathBuf),
    /// A manager CA exists in {0} already; pass --force to replace it (adopted hosts will then refuse keelctl)
    #[error("A manager CA exists in {0} already; pass --force to replace it (adopted hosts will then refuse keelctl)")]
    CaExists(PathBuf),
    /// No host given and no current host: pass --host or adopt one with `keelctl host adopt`
    #[error(
        "No host given and no current host: pass --host or adopt one with `keelctl host adopt`"
    )]
    NoHost,
    /// Unknown host {0:?}: not in {1} and not an address; adopt it first
    #[error("Unknown host {0:?}: not in {1} and not an address; adopt it first")]
    UnknownHost(String, PathBuf),
    /// Cannot resolve {0:?}: {1}
    #[error("Cannot resolve {0:?}: {1}")]
    Resolve(String, String),
    /// Cannot {0} {1}: {2}
    #[error("Cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, io::Error),
    /// {0} is not valid: {1}
    #[error("{0} is not valid: {1}")]
    Bad(PathBuf, String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Where an adopted host is and which key it must present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub addr: String,
    pub fingerprint: Fingerprint,
}

pub struct Config {
    dir: PathBuf,
}

/// `host[:port]` into a socket address (port 8443 when none).
pub fn resolve(addr: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let with_port = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve(addr.into(), e.to_string()))?
        .next()
        .ok_or_else(|| ConfigError::Resolve(addr.into(), "no address".into()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ConfigError> {
    let io = |e| ConfigError::Io("write", path.to_path_buf(), e);
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|e| ConfigError::Io("read", path.to_path_buf(), e))
}

impl Config {
    /// `explicit`, else `$XDG_CONFIG_HOME/keel`, else `$HOME/.config/keel`.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, ConfigError> {
        let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
        let dir = explicit
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME")
                    .and_then(non_empty)
                    .map(|d| d.join("keel"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .and_then(non_empty)
                    .map(|h| h.join(".config").join("keel"))
            })
            .ok_or(ConfigError::NoDir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), ConfigError> {
        fs::create_dir_all(dir).map_err(|e| ConfigError::Io("create", dir.to_path_buf(), e))
    }

    /// Makes the manager CA and keelctl's client certificate.
    pub fn init_ca(&self, name: &str, days: u32, force: bool) -> Result<(), ConfigError> {
        if self.dir.join("ca.pem").exists() && !force {
            return Err(ConfigError::CaExists(self.dir.clone()));
        }
        self.ensure_dir(&self.dir)?;
        let validity = Validity::days_from(SystemTime::now(), days);
        let ca = ManagerCa::generate(name, validity)?;
        let client = ca.issue_client_cert("keelctl", validity)?;
        write_file(&self.dir.join("ca-key.pem"), &ca.key_pem(), 0o600)?;
        write_file(&self.dir.join("ca.pem"), &ca.cert_pem(), 0o644)?;
        write_file(&self.dir.join("client-key.pem"), &client.key_pem, 0o600)?;
        write_file(&self.dir.join("client.pem"), &client.cert_pem, 0o644)?;
        Ok(())
    }

    pub fn ca(&self) -> Result<ManagerCa, ConfigError> {
        let cert = self.dir.join("ca.pem");
        if !cert.exists() {
            return Err(ConfigError::NoCa(self.dir.clone()));
        }
        Ok(ManagerCa::load(
            &read_file(&cert)?,
            &read_file(&self.dir.join("ca-key.pem"))?,
        )?)
    }

    /// SHA-256 of the CA certificate, as hosts pin it (`keel.manager_ca=`).
    pub fn ca_fingerprint(&self) -> Result<Fingerprint, ConfigError> {
        let cert = parse_cert_pem("ca.pem", &self.ca()?.cert_pem()).map_err(CaError::from)?;
        Ok(Fingerprint::of_certificate(&cert))
    }

    pub fn client_cert(&self) -> Result<ClientCert, ConfigError> {
        let cert = self.dir.join("client.pem");
        if !cert.exists() {
            return Err(ConfigError::NoCa(self.dir.clone()));
        }
        Ok(ClientCert {
            cert_pem: read_file(&cert)?,
            key_pem: read_file(&self.dir.join("client-key.pem"))?,
        })
    }

    fn host_file(&self, name: &str) -> PathBuf {
        self.dir
            .join("hosts")
            .join(format!("{}.json", name.replace(['/', ':'], "_")))
    }

    /// Records an adopted host and makes it the current one.
    pub fn save_host(&self, name: &str, entry: &HostEntry) -> Result<(), ConfigError> {
        self.update_host(name, entry)?;
        write_file(&self.dir.join("current"), name, 0o644)
    }

    /// Records where a host is, leaving the current host as it is.
    pub fn update_host(&self, name: &str, entry: &HostEntry) -> Result<(), ConfigError> {
        self.ensure_dir(&self.dir.join("hosts"))?;
        let json = serde_json::to_string_pretty(entry)
            .map_err(|e| ConfigError::Bad(self.host_file(name), e.to_string()))?;
        write_file(&self.host_file(name), &json, 0o644)
    }

    pub fn forget_host(&self, name: &str) {
        let _ = fs::remove_file(self.host_file(name));
        if self.current().as_deref() == Some(name) {
            let _ = fs::remove_file(self.dir.join("current"));
        }
    }

    pub fn current(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("current"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The host `name` (or the current one): its name, address and pinned fingerprint.
    pub fn host(
        &self,
        name: Option<&str>,
    ) -> Result<(String, SocketAddr, Fingerprint), ConfigError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => self.current().ok_or(ConfigError::NoHost)?,
        };
        let path = self.host_file(&name);
        if !path.exists() {
            return Err(ConfigError::UnknownHost(name, self.dir.join("hosts")));
        }
        let entry: HostEntry = serde_json::from_str(&read_file(&path)?)
            .map_err(|e| ConfigError::Bad(path.clone(), e.to_string()))?;
        let addr = resolve(&entry.addr)?;
        Ok((name, addr, entry.fingerprint))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keelctl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn addresses() {
        assert_eq!(resolve("10.0.0.5").unwrap().to_string(), "10.0.0.5:8443");
        assert_eq!(resolve("10.0.0.5:9").unwrap().to_string(), "10.0.0.5:9");
        assert_eq!(resolve("localhost:1").unwrap().port(), 1);
        assert!(resolve("no such host.invalid").is_err());
    }

    #[test]
    fn ca_and_hosts() {
        let dir = tmp("config");
        let config = Config::locate(Some(dir.clone())).unwrap();
        assert!(matches!(config.ca(), Err(ConfigError::NoCa(_))));
        config.init_ca("m", 10, false).unwrap();
        assert!(matches!(
            config.init_ca("m", 10, false),
            Err(ConfigError::CaExists(_))
        ));
        assert!(config.ca().is_ok() && config.client_cert().is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(config.host(None), Err(ConfigError::NoHost)));
        let entry = HostEntry {
            addr: "127.0.0.1:8443".into(),
            fingerprint: Fingerprint::of_spki(b"x"),
        };
        config.save_host("h1", &entry).unwrap();
        let (name, addr, fp) = config.host(None).unwrap();
        assert_eq!(
            (name.as_str(), addr.port(), fp),
            ("h1", 8443, entry.fingerprint)
        );
        let err = config.host(Some("h2")).unwrap_err().to_string();
        assert!(err.contains("\"h2\""), "{err}");
        config.forget_host("h1");
        assert!(config.current().is_none());
        let _ = fs::remove_dir_all(dir);
    }
}
