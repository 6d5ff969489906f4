//! The manager's registrations and join tokens, in an embedded SQLite database
//! (`manager.db` in the configuration directory, mode 0600: it holds hosts' adoption tokens).
//!
//! A host is keyed by the random ID it made at first boot; its key fingerprint is fixed at first
//! registration, so a host ID announced with another key is refused rather than taken over.
//! Join tokens are stored as SHA-256 hashes, with an optional expiry.

use keel_api::agent::RegistrationRequest;
use keel_init::agent::fingerprint::Fingerprint;
use keel_init::agent::token::Secret;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The database file in the configuration directory.
pub const DB_FILE: &str = "manager.db";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Cannot open the manager database {0}: {1}
    #[error("Cannot open the manager database {0}: {1}")]
    Open(PathBuf, String),
    /// Manager database query failed: {0}
    #[error("Manager database query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Stored registration of {0} is unreadable: {1}
    #[error("Stored registration of {0} is unreadable: {1}")]
    Corrupt(String, String),
    /// Host {id} registered with key {known}; this registration has key {presented}, and is refused
    #[error("Host {id} registered with key {known}; this registration has key {presented}, and is refused")]
    KeyChanged {
        id: String,
        known: Fingerprint,
        presented: Fingerprint,
    },
    /// No registered host {0} (see `keelctl host pending`)
    #[error("No registered host {0} (see `keelctl host pending`)")]
    Unknown(String),
    /// No such join token
    #[error("No such join token")]
    UnknownToken,
    /// Cannot make a join token: {0}
    #[error("Cannot make a join token: {0}")]
    Token(String),
}

/// Where a registered host is, as the manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Waiting for `keelctl host approve`.
    Pending,
    Adopting,
    Adopted,
    /// The adoption failed; `reason` says why. Approving tries again.
    Failed,
}

impl HostState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Adopting => "adopting",
            Self::Adopted => "adopted",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Adopting, Self::Adopted, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One registered host.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub id: String,
    pub state: HostState,
    pub reason: Option<String>,
    /// The address the registration came from.
    pub peer: String,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    #[serde(skip)]
    pub document: RegistrationRequest,
}

/// Unix seconds, as SQLite stores integers.
fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn hash(token: &str) -> String {
    keel_api::hex(&Sha256::digest(token.as_bytes()))
}

pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let fail = |e: String| DbError::Open(path.to_path_buf(), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| fail(e.to_string()))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS hosts (
                 id TEXT PRIMARY KEY,
                 fingerprint TEXT NOT NULL,
                 document TEXT NOT NULL,
                 peer TEXT NOT NULL,
                 state TEXT NOT NULL,
                 reason TEXT,
                 first_seen INTEGER NOT NULL,
                 last_seen INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS join_tokens (
                 hash TEXT PRIMARY KEY,
                 created INTEGER NOT NULL,
                 expires INTEGER);",
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(Self { conn })
    }

    /// Makes a join token valid until `now + ttl` (forever without one); returns its text,
    /// which is not stored.
    pub fn create_join_token(
        &self,
        now: SystemTime,
        ttl: Option<Duration>,
    ) -> Result<String, DbError> {
        let secret = Secret::random().map_err(|e| DbError::Token(e.to_string()))?;
        let token = secret.expose().to_string();
        let expires = ttl.map(|ttl| unix(now + ttl));
        self.conn.execute(
            "INSERT INTO join_tokens (hash, created, expires) VALUES (?1, ?2, ?3)",
            params![hash(&token), unix(now), expires],
        )?;
        Ok(token)
    }

    /// Revokes a join token: hosts presenting it from now on wait for approval.
    pub fn revoke_join_token(&self, token: &str) -> Result<(), DbError> {
        let removed = self.conn.execute(
            "DELETE FROM join_tokens WHERE hash = ?1",
            params![hash(token)],
        )?;
        if removed == 0 {
            return Err(DbError::UnknownToken);
        }
        Ok(())
    }

    /// Whether `token` is a join token that has not expired at `now`.
    pub fn join_token_valid(&self, token: &str, now: SystemTime) -> Result<bool, DbError> {
        let expires: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT expires FROM join_tokens WHERE hash = ?1",
                params![hash(token)],
                |row| row.get(0),
            )
            .optional()?;
        Ok(match expires {
            None => false,
            Some(None) => true,
            Some(Some(at)) => unix(now) < at,
        })
    }

    /// Records a registration from `peer`: a new host is pending, a known one keeps its state.
    pub fn record(
        &self,
        doc: &RegistrationRequest,
        peer: &str,
        now: SystemTime,
    ) -> Result<Registration, DbError> {
        let json = serde_json::to_string(doc)
            .map_err(|e| DbError::Corrupt(doc.host_id.clone(), e.to_string()))?;
        match self.get(&doc.host_id)? {
            Some(known) if known.document.fingerprint != doc.fingerprint => {
                Err(DbError::KeyChanged {
                    id: doc.host_id.clone(),
                    known: known.document.fingerprint,
                    presented: doc.fingerprint,
                })
            }
            Some(_) => {
                self.conn.execute(
                    "UPDATE hosts SET document = ?2, peer = ?3, last_seen = ?4 WHERE id = ?1",
                    params![doc.host_id, json, peer, unix(now)],
                )?;
                self.require(&doc.host_id)
            }
            None => {
                self.conn.execute(
                    "INSERT INTO hosts (id, fingerprint, document, peer, state, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![
                        doc.host_id,
                        doc.fingerprint.to_string(),
                        json,
                        peer,
                        HostState::Pending.as_str(),
                        unix(now)
                    ],
                )?;
                self.require(&doc.host_id)
            }
        }
    }

    pub fn set_state(
        &self,
        id: &str,
        state: HostState,
        reason: Option<&str>,
    ) -> Result<(), DbError> {
        let changed = self.conn.execute(
            "UPDATE hosts SET state = ?2, reason = ?3 WHERE id = ?1",
            params![id, state.as_str(), reason],
        )?;
        if changed == 0 {
            return Err(DbError::Unknown(id.to_string()));
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Registration>, DbError> {
        Ok(self.select("WHERE id = ?1", params![id])?.pop())
    }

    /// The host `id`, which must be registered.
    pub fn require(&self, id: &str) -> Result<Registration, DbError> {
        self.get(id)?
            .ok_or_else(|| DbError::Unknown(id.to_string()))
    }

    /// Registered hosts, all or in one state, oldest first.
    pub fn list(&self, state: Option<HostState>) -> Result<Vec<Registration>, DbError> {
        match state {
            Some(s) => self.select("WHERE state = ?1", params![s.as_str()]),
            None => self.select("", params![]),
        }
    }

    fn select(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Registration>, DbError> {
        let sql = format!(
            "SELECT id, state, reason, peer, first_seen, last_seen, document FROM hosts {filter} \
             ORDER BY first_seen, id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, state, reason, peer, first_seen, last_seen, document) = row?;
            let corrupt = |why: String| DbError::Corrupt(id.clone(), why);
            let state =
                HostState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?;
            let document = serde_json::from_str(&document).map_err(|e| corrupt(e.to_string()))?;
            out.push(Registration {
                id,
                state,
                reason,
                peer,
                first_seen,
                last_seen,
                document,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keel_api::host::Hardware;
    use keel_init::agent::fingerprint::FingerprintOf;

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keelctl-db-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(DB_FILE)
    }

    fn doc(id: &str, key: &[u8]) -> RegistrationRequest {
        RegistrationRequest {
            host_id: id.into(),
            fingerprint: Fingerprint::of_spki(key),
            hostname: None,
            hardware: Hardware::default(),
            nics: vec![],
            addresses: vec!["10.0.2.15".parse().unwrap()],
            api_port: 8443,
            keel_version: "0.1.0".into(),
            join_token: None,
            adopt_token: Some("t".into()),
        }
    }

    #[test]
    fn join_tokens_expire_and_are_stored_hashed() {
        let path = tmp("tokens");
        let db = Db::open(&path).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        let day = db.create_join_token(t0, Some(hour)).unwrap();
        let forever = db.create_join_token(t0, None).unwrap();
        assert_ne!(day, forever);
        let cases = [
            (day.as_str(), t0, true),
            (day.as_str(), t0 + hour - Duration::from_secs(1), true),
            (day.as_str(), t0 + hour, false),
            (forever.as_str(), t0 + hour * 1000, true),
            ("not-a-token", t0, false),
            ("", t0, false),
        ];
        for (token, at, want) in cases {
            assert_eq!(db.join_token_valid(token, at).unwrap(), want, "{token}");
        }
        db.revoke_join_token(&forever).unwrap();
        assert!(!db.join_token_valid(&forever, t0).unwrap());
        assert!(matches!(
            db.revoke_join_token(&forever),
            Err(DbError::UnknownToken)
        ));
        drop(db);
        let raw = std::fs::read(&path).unwrap();
        let leaked = raw.windows(day.len()).any(|w| w == day.as_bytes());
        assert!(!leaked, "the join token is stored in clear");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn registrations_keep_their_key_and_state() {
        let db = Db::open(&tmp("hosts")).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = t0 + Duration::from_secs(60);
        let first = db.record(&doc("a", b"k1"), "10.0.0.1", t0).unwrap();
        assert_eq!(
            (first.state, first.first_seen),
            (HostState::Pending, unix(t0))
        );
        db.record(&doc("b", b"k2"), "10.0.0.2", later).unwrap();
        db.set_state("a", HostState::Adopted, None).unwrap();
        let mut moved = doc("a", b"k1");
        moved.addresses = vec!["10.0.2.16".parse().unwrap()];
        let again = db.record(&moved, "10.0.0.9", later).unwrap();
        assert_eq!(again.state, HostState::Adopted);
        assert_eq!((again.first_seen, again.last_seen), (unix(t0), unix(later)));
        assert_eq!(again.peer, "10.0.0.9");
        assert_eq!(again.document.addresses, moved.addresses);
        let err = db.record(&doc("a", b"other"), "x", later).unwrap_err();
        assert!(matches!(err, DbError::KeyChanged { .. }), "{err}");
        let ids = |l: Vec<Registration>| l.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(db.list(None).unwrap()), ["a", "b"]);
        assert_eq!(ids(db.list(Some(HostState::Pending)).unwrap()), ["b"]);
        db.set_state("b", HostState::Failed, Some("no route"))
            .unwrap();
        let b = db.require("b").unwrap();
        assert_eq!(
            (b.state, b.reason.as_deref()),
            (HostState::Failed, Some("no route"))
        );
        assert!(matches!(db.require("c"), Err(DbError::Unknown(_))));
        assert!(matches!(
            db.set_state("c", HostState::Adopted, None),
            Err(DbError::Unknown(_))
        ));
    }
}
