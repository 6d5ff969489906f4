//! The adoption state machine, pure logic (time and randomness come in as arguments):
//!
//! ```text
//! NotAdopted{token} --begin(token, manager CA)--> Adopting{token, session}
//! Adopting          --begin(token, manager CA)--> Adopting{token, new session}   (manager retried)
//! Adopting          --verify_completion + commit--> Adopted{manager CA, certificate chain}
//! any               --release(new token)--------> NotAdopted{new token}
//! ```
//!
//! The token is spent by the completion, so it adopts at most once; a begin that the manager
//! abandons costs nothing but the session, which expires. The completion is verified first and
//! committed only after the caller has persisted it, so a full disk cannot leave the host serving
//! a state it would not come back to after a reboot.

use super::api::{AdoptionPhase, CompleteRequest};
use keel_trust::fingerprint::{Fingerprint, FingerprintError, FingerprintExt};
use keel_trust::tls::{check_ca, parse_cert_pem, verify_host_cert, TlsError};
use keel_trust::token::{Secret, Token, TokenError};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Intermediate certificates accepted at most.
const MAX_CHAIN: usize = 4;

/// Why an adoption step was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// This host is already adopted; it must be released first
    #[error("This host is already adopted; it must be released first")]
    AlreadyAdopted,
    /// No adoption is in progress; start with POST /v1/adopt
    #[error("No adoption is in progress; start with POST /v1/adopt")]
    NotAdopting,
    /// The adoption session id is wrong
    #[error("The adoption session id is wrong")]
    BadSession,
    /// The adoption session expired {0} s ago; start again with POST /v1/adopt
    #[error("The adoption session expired {0} s ago; start again with POST /v1/adopt")]
    SessionExpired(u64),
    #[error(transparent)]
    Certificate(#[from] TlsError),
    /// Cannot read the host certificate's key: {0}
    #[error("Cannot read the host certificate's key: {0}")]
    Key(#[from] FingerprintError),
    /// The certificate is for key {actual}, not this host's key {expected}
    #[error("The certificate is for key {actual}, not this host's key {expected}")]
    WrongKey {
        expected: Fingerprint,
        actual: Fingerprint,
    },
    /// chain_pem has {0} certificates; at most 4 are accepted
    #[error("chain_pem has {0} certificates; at most 4 are accepted")]
    ChainTooLong(usize),
}

impl AdoptError {
    /// Whether this is a failed attempt at a secret, which the rate limiter counts.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Self::Token(TokenError::Mismatch | TokenError::Expired(_))
                | Self::BadSession
                | Self::SessionExpired(_)
        )
    }
}

/// What is persisted once adopted (as JSON): enough to serve and verify again at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptionRecord {
    pub manager_ca_pem: String,
    pub certificate_pem: String,
    pub chain_pem: Vec<String>,
}

/// A verified adoption.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub record: AdoptionRecord,
    /// The manager CA: client certificates must chain to it.
    pub manager_ca: CertificateDer<'static>,
    /// The host's manager-signed certificate first, then its intermediates.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Adopted {
    /// Parses and verifies `record`: the certificate is for the host key `host` and is a server
    /// certificate valid at `now` under the manager CA. Used for the completion and at boot.
    pub fn from_record(
        record: AdoptionRecord,
        host: Fingerprint,
        now: UnixTime,
    ) -> Result<Self, AdoptError> {
        if record.chain_pem.len() > MAX_CHAIN {
            return Err(AdoptError::ChainTooLong(record.chain_pem.len()));
        }
        let manager_ca = parse_cert_pem("manager_ca_pem", &record.manager_ca_pem)?;
        let leaf = parse_cert_pem("certificate_pem", &record.certificate_pem)?;
        let intermediates = record
            .chain_pem
            .iter()
            .map(|pem| parse_cert_pem("chain_pem", pem))
            .collect::<Result<Vec<_>, _>>()?;
        let actual = Fingerprint::of_cert(&leaf)?;
        if actual != host {
            return Err(AdoptError::WrongKey {
                expected: host,
                actual,
            });
        }
        verify_host_cert(&leaf, &intermediates, &manager_ca, now)?;
        let chain = std::iter::once(leaf).chain(intermediates).collect();
        Ok(Self {
            record,
            manager_ca,
            chain,
        })
    }
}

/// An adoption in progress.
#[derive(Debug, Clone)]
pub struct Session {
    id: Secret,
    manager_ca_pem: String,
    expires_at: Instant,
}

/// Where the host is in its adoption.
#[derive(Debug, Clone)]
pub enum Adoption {
    NotAdopted { token: Token },
    Adopting { token: Token, session: Session },
    Adopted(Adopted),
}

impl Adoption {
    pub fn phase(&self) -> AdoptionPhase {
        match self {
            Self::NotAdopted { .. } => AdoptionPhase::NotAdopted,
            Self::Adopting { .. } => AdoptionPhase::Adopting,
            Self::Adopted(_) => AdoptionPhase::Adopted,
        }
    }

    /// The adoption token, while the host can still be adopted.
    pub fn token(&self) -> Option<&Token> {
        match self {
            Self::NotAdopted { token } | Self::Adopting { token, .. } => Some(token),
            Self::Adopted(_) => None,
        }
    }

    /// The adoption, once adopted.
    pub fn adopted(&self) -> Option<&Adopted> {
        match self {
            Self::Adopted(adopted) => Some(adopted),
            _ => None,
        }
    }

    /// Starts (or restarts) an adoption by the holder of the token, as session `session_id`,
    /// which expires `session_ttl` after `now`.
    pub fn begin(
        &mut self,
        presented: &str,
        manager_ca_pem: &str,
        session_id: Secret,
        now: Instant,
        session_ttl: Duration,
    ) -> Result<(), AdoptError> {
        let token = self.token().ok_or(AdoptError::AlreadyAdopted)?;
        token.check(presented, now)?;
        check_ca(&parse_cert_pem("manager_ca_pem", manager_ca_pem)?)?;
        *self = Self::Adopting {
            token: token.clone(),
            session: Session {
                id: session_id,
                manager_ca_pem: manager_ca_pem.to_string(),
                expires_at: now + session_ttl,
            },
        };
        Ok(())
    }

    /// Checks the manager's completion for the host key `host`, without changing state.
    pub fn verify_completion(
        &self,
        request: &CompleteRequest,
        host: Fingerprint,
        now: Instant,
        wall: UnixTime,
    ) -> Result<Adopted, AdoptError> {
        let session = match self {
            Self::Adopting { session, .. } => session,
            Self::NotAdopted { .. } => return Err(AdoptError::NotAdopting),
            Self::Adopted(_) => return Err(AdoptError::AlreadyAdopted),
        };
        if !session.id.matches(&request.session_id) {
            return Err(AdoptError::BadSession);
        }
        if now >= session.expires_at {
            let ago = (now - session.expires_at).as_secs();
            return Err(AdoptError::SessionExpired(ago));
        }
        let record = AdoptionRecord {
            manager_ca_pem: session.manager_ca_pem.clone(),
            certificate_pem: request.certificate_pem.clone(),
            chain_pem: request.chain_pem.clone(),
        };
        Adopted::from_record(record, host, wall)
    }

    /// Enters the adopted state (after the caller persisted `adopted`).
    pub fn commit(&mut self, adopted: Adopted) {
        *self = Self::Adopted(adopted);
    }

    /// Forgets any manager; adoptable again with `token`.
    pub fn release(&mut self, token: Token) {
        *self = Self::NotAdopted { token };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::identity::HostIdentity;
    use super::*;
    use crate::sys::atomic::testdir::TestDir;
    use keel_trust::ca::{ManagerCa, Validity};
    use std::time::SystemTime;

    const TOKEN: &str = "the-adoption-token";
    const TTL: Duration = Duration::from_secs(300);

    struct Fixture {
        _dir: TestDir,
        host: HostIdentity,
        ca: ManagerCa,
        other_ca: ManagerCa,
        t0: Instant,
    }

    fn fixture() -> Fixture {
        let dir = TestDir::new("adoption");
        let host = HostIdentity::load_or_create(dir.path(), &["h".into()]).unwrap();
        let validity = Validity::days_from(SystemTime::now(), 30);
        Fixture {
            _dir: dir,
            host,
            ca: ManagerCa::generate("manager", validity).unwrap(),
            other_ca: ManagerCa::generate("other", validity).unwrap(),
            t0: Instant::now(),
        }
    }

    impl Fixture {
        fn fresh(&self) -> Adoption {
            let token = Token::new(Secret::preset(TOKEN).unwrap(), self.t0, Some(TTL));
            Adoption::NotAdopted { token }
        }

        fn adopting(&self) -> Adoption {
            let mut a = self.fresh();
            let sid = Secret::preset("session-id-0123456789").unwrap();
            a.begin(TOKEN, &self.ca.cert_pem(), sid, self.t0, TTL)
                .unwrap();
            a
        }

        fn signed_by(&self, ca: &ManagerCa) -> String {
            let csr = self.host.csr_pem(&["h".into()]).unwrap();
            let validity = Validity::days_from(SystemTime::now(), 30);
            ca.sign_host_csr(&csr, self.host.fingerprint(), validity)
                .unwrap()
        }

        fn completion(&self, session: &str, cert: String) -> CompleteRequest {
            CompleteRequest {
                session_id: session.into(),
                certificate_pem: cert,
                chain_pem: vec![],
            }
        }
    }

    fn kind(r: &Result<(), AdoptError>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => format!("{e:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .into(),
        }
    }

    #[test]
    fn begin_table() {
        let f = fixture();
        let ca = f.ca.cert_pem();
        let adopted = {
            let mut a = f.adopting();
            let req = f.completion("session-id-0123456789", f.signed_by(&f.ca));
            let done = a.verify_completion(&req, f.host.fingerprint(), f.t0, UnixTime::now());
            a.commit(done.unwrap());
            a
        };
        let late = f.t0 + TTL + Duration::from_secs(1);
        let cases: Vec<(&str, Adoption, &str, &str, Instant, &str, AdoptionPhase)> = vec![
            (
                "fresh",
                f.fresh(),
                TOKEN,
                &ca,
                f.t0,
                "ok",
                AdoptionPhase::Adopting,
            ),
            (
                "wrong token",
                f.fresh(),
                "nope",
                &ca,
                f.t0,
                "Token",
                AdoptionPhase::NotAdopted,
            ),
            (
                "expired",
                f.fresh(),
                TOKEN,
                &ca,
                late,
                "Token",
                AdoptionPhase::NotAdopted,
            ),
            (
                "bad ca",
                f.fresh(),
                TOKEN,
                "junk",
                f.t0,
                "Certificate",
                AdoptionPhase::NotAdopted,
            ),
            (
                "retry",
                f.adopting(),
                TOKEN,
                &ca,
                f.t0,
                "ok",
                AdoptionPhase::Adopting,
            ),
            (
                "retry wrong",
                f.adopting(),
                "nope",
                &ca,
                f.t0,
                "Token",
                AdoptionPhase::Adopting,
            ),
            (
                "adopted",
                adopted,
                TOKEN,
                &ca,
                f.t0,
                "AlreadyAdopted",
                AdoptionPhase::Adopted,
            ),
        ];
        for (name, mut state, token, ca_pem, now, want, phase) in cases {
            let sid = Secret::random().unwrap();
            let got = state.begin(token, ca_pem, sid, now, TTL);
            assert_eq!(kind(&got), want, "{name}: {got:?}");
            assert_eq!(state.phase(), phase, "{name}");
        }
    }

    #[test]
    fn completion_table() {
        let f = fixture();
        let good = f.signed_by(&f.ca);
        let foreign = f.signed_by(&f.other_ca);
        let sid = "session-id-0123456789";
        let stranger = {
            let dir = TestDir::new("adoption-stranger");
            let other = HostIdentity::load_or_create(dir.path(), &[]).unwrap();
            let csr = other.csr_pem(&[]).unwrap();
            let v = Validity::days_from(SystemTime::now(), 30);
            f.ca.sign_host_csr(&csr, other.fingerprint(), v).unwrap()
        };
        let client =
            f.ca.issue_client_cert("admin", Validity::days_from(SystemTime::now(), 30))
                .unwrap()
                .cert_pem;
        let mut long = f.completion(sid, good.clone());
        long.chain_pem = vec![f.ca.cert_pem(); 5];
        let late = f.t0 + TTL;
        let cases: Vec<(&str, Adoption, CompleteRequest, Instant, &str)> = vec![
            (
                "good",
                f.adopting(),
                f.completion(sid, good.clone()),
                f.t0,
                "ok",
            ),
            (
                "not adopting",
                f.fresh(),
                f.completion(sid, good.clone()),
                f.t0,
                "NotAdopting",
            ),
            (
                "bad session",
                f.adopting(),
                f.completion("x", good.clone()),
                f.t0,
                "BadSession",
            ),
            (
                "late",
                f.adopting(),
                f.completion(sid, good.clone()),
                late,
                "SessionExpired",
            ),
            (
                "other ca",
                f.adopting(),
                f.completion(sid, foreign),
                f.t0,
                "Certificate",
            ),
            (
                "other key",
                f.adopting(),
                f.completion(sid, stranger),
                f.t0,
                "WrongKey",
            ),
            (
                "client cert",
                f.adopting(),
                f.completion(sid, client),
                f.t0,
                "WrongKey",
            ),
            (
                "junk",
                f.adopting(),
                f.completion(sid, "junk".into()),
                f.t0,
                "Certificate",
            ),
            ("long chain", f.adopting(), long, f.t0, "ChainTooLong"),
        ];
        for (name, state, request, now, want) in cases {
            let got = state
                .verify_completion(&request, f.host.fingerprint(), now, UnixTime::now())
                .map(drop);
            assert_eq!(kind(&got), want, "{name}: {got:?}");
            assert_ne!(
                state.phase(),
                AdoptionPhase::Adopted,
                "verification alone changes nothing"
            );
        }
    }

    #[test]
    fn commit_then_release() {
        let f = fixture();
        let mut a = f.adopting();
        let req = f.completion("session-id-0123456789", f.signed_by(&f.ca));
        let adopted = a
            .verify_completion(&req, f.host.fingerprint(), f.t0, UnixTime::now())
            .unwrap();
        assert_eq!(adopted.chain.len(), 1);
        a.commit(adopted.clone());
        assert_eq!(a.phase(), AdoptionPhase::Adopted);
        assert!(a.token().is_none());
        let sid = Secret::random().unwrap();
        assert!(matches!(
            a.begin(TOKEN, &f.ca.cert_pem(), sid, f.t0, TTL),
            Err(AdoptError::AlreadyAdopted)
        ));
        // The record verifies again at boot.
        let again = Adopted::from_record(adopted.record, f.host.fingerprint(), UnixTime::now());
        assert!(again.is_ok());

        let new_token = Token::new(Secret::random().unwrap(), f.t0, Some(TTL));
        a.release(new_token.clone());
        assert_eq!(a.phase(), AdoptionPhase::NotAdopted);
        let sid = Secret::random().unwrap();
        assert!(matches!(
            a.begin(TOKEN, &f.ca.cert_pem(), sid, f.t0, TTL),
            Err(AdoptError::Token(TokenError::Mismatch))
        ));
        let sid = Secret::random().unwrap();
        let fresh = new_token.secret().expose();
        assert!(a.begin(fresh, &f.ca.cert_pem(), sid, f.t0, TTL).is_ok());
    }

    #[test]
    fn auth_failures_are_classified() {
        let cases = [
            (AdoptError::Token(TokenError::Mismatch), true),
            (AdoptError::Token(TokenError::Expired(3)), true),
            (AdoptError::BadSession, true),
            (AdoptError::SessionExpired(1), true),
            (AdoptError::AlreadyAdopted, false),
            (AdoptError::NotAdopting, false),
            (AdoptError::ChainTooLong(9), false),
        ];
        for (e, want) in cases {
            assert_eq!(e.is_auth_failure(), want, "{e}");
        }
    }
}
