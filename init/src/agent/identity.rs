//! The host's identity: an ECDSA P-256 key made at first boot, and a self-signed certificate for
//! it that the host serves until a manager adopts it.
//!
//! The key is the identity (managers pin its fingerprint); the self-signed certificate is only a
//! carrier for it, and is re-issued whenever it is missing or does not match the key.

use crate::sys::atomic::{write_atomic, AtomicError};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::path::{Path, PathBuf};

/// The private key, PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "host.key";
/// The self-signed certificate, PEM.
pub const CERT_FILE: &str = "host.crt";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Cannot read {0}: {1}
    #[error("Cannot read {0}: {1}")]
    Read(PathBuf, io::Error),
    /// Host key {0} is unreadable ({1}); it is kept as is: move it away to make a new identity
    #[error(
        "Host key {0} is unreadable ({1}); it is kept as is: move it away to make a new identity"
    )]
    BadKey(PathBuf, rcgen::Error),
    /// Host key {0} is not ECDSA P-256
    #[error("Host key {0} is not ECDSA P-256")]
    WrongAlgorithm(PathBuf),
    /// Cannot make a certificate or request for the host key with names {0:?}: {1}
    #[error("Cannot make a certificate or request for the host key with names {0:?}: {1}")]
    Certificate(Vec<String>, rcgen::Error),
    /// Cannot make the host key: {0}
    #[error("Cannot make the host key: {0}")]
    Generate(rcgen::Error),
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// The host's key pair and self-signed certificate.
#[derive(Debug)]
pub struct HostIdentity {
    key: KeyPair,
    self_signed: CertificateDer<'static>,
    fingerprint: Fingerprint,
}

impl HostIdentity {
    /// Loads the identity from `dir`, making the missing parts. `names` (host names and
    /// addresses) go into a newly made self-signed certificate as subject alternative names.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let key = match read_optional(&key_path)? {
            Some(pem) => {
                let key = KeyPair::from_pem(&pem)
                    .map_err(|e| IdentityError::BadKey(key_path.clone(), e))?;
                if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
                    return Err(IdentityError::WrongAlgorithm(key_path));
                }
                key
            }
            None => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(IdentityError::Generate)?;
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
        };
        let fingerprint = Fingerprint::of_spki(&key.subject_public_key_info());

        let cert_path = dir.join(CERT_FILE);
        let stored = read_optional(&cert_path)?
            .and_then(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).ok())
            .filter(|cert| Fingerprint::of_cert(cert).ok() == Some(fingerprint));
        let self_signed = match stored {
            Some(cert) => cert,
            None => {
                let cert = params(names)?
                    .self_signed(&key)
                    .map_err(|e| IdentityError::Certificate(names.to_vec(), e))?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
                cert.der().clone()
            }
        };
        Ok(Self {
            key,
            self_signed,
            fingerprint,
        })
    }

    /// The fingerprint managers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// The self-signed certificate served before adoption.
    pub fn self_signed_cert(&self) -> &CertificateDer<'static> {
        &self.self_signed
    }

    /// The private key, for the TLS stack (it stays in this process).
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// A certificate signing request for the host key, naming `names`.
    pub fn csr_pem(&self, names: &[String]) -> Result<String, IdentityError> {
        params(names)?
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| IdentityError::Certificate(names.to_vec(), e))
    }
}

/// Certificate fields for the host: its names as SANs (IP literals become IP SANs).
fn params(names: &[String]) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| IdentityError::Certificate(names.to_vec(), e))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("keel host", String::as_str),
    );
    params.distinguished_name = dn;
    Ok(params)
}

/// The text of `path`, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityError::Read(path.to_path_buf(), e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;
    use std::os::unix::fs::PermissionsExt;

    fn names() -> Vec<String> {
        vec!["host1.example".to_string(), "192.0.2.10".to_string()]
    }

    #[test]
    fn first_boot_creates_and_next_boot_loads() {
        let dir = TestDir::new("identity");
        let first = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert_pem = std::fs::read(dir.path().join(CERT_FILE)).unwrap();

        let second = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        assert_eq!(second.fingerprint(), first.fingerprint());
        assert_eq!(second.self_signed_cert(), first.self_signed_cert());
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), cert_pem);
        assert_eq!(
            Fingerprint::of_cert(first.self_signed_cert()).unwrap(),
            first.fingerprint()
        );
        assert!(first.fingerprint().to_string().starts_with("sha256:"));
    }

    #[test]
    fn certificate_is_reissued_when_missing_or_foreign() {
        let dir = TestDir::new("identity-reissue");
        let first = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let again = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        assert_eq!(again.fingerprint(), first.fingerprint());
        assert_eq!(
            Fingerprint::of_cert(again.self_signed_cert()).unwrap(),
            first.fingerprint()
        );

        let other = TestDir::new("identity-other");
        HostIdentity::load_or_create(other.path(), &names()).unwrap();
        std::fs::copy(other.path().join(CERT_FILE), dir.path().join(CERT_FILE)).unwrap();
        let fixed = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        assert_eq!(
            Fingerprint::of_cert(fixed.self_signed_cert()).unwrap(),
            first.fingerprint()
        );
    }

    #[test]
    fn a_damaged_key_is_reported_and_kept() {
        let dir = TestDir::new("identity-bad");
        let key_path = dir.path().join(KEY_FILE);
        std::fs::write(&key_path, "not a key").unwrap();
        let err = HostIdentity::load_or_create(dir.path(), &names()).unwrap_err();
        assert!(matches!(err, IdentityError::BadKey(..)), "{err}");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), "not a key");
    }

    #[test]
    fn a_non_p256_key_is_refused() {
        let dir = TestDir::new("identity-alg");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), key.serialize_pem()).unwrap();
        let err = HostIdentity::load_or_create(dir.path(), &names()).unwrap_err();
        assert!(matches!(err, IdentityError::WrongAlgorithm(_)), "{err}");
    }

    #[test]
    fn bad_names_are_named() {
        let dir = TestDir::new("identity-names");
        let bad = vec!["bad\u{e9}name".to_string()];
        let err = HostIdentity::load_or_create(dir.path(), &bad).unwrap_err();
        assert!(err.to_string().contains("bad\u{e9}name"), "{err}");
    }

    #[test]
    fn csr_carries_the_host_key() {
        let dir = TestDir::new("identity-csr");
        let id = HostIdentity::load_or_create(dir.path(), &names()).unwrap();
        let csr = id.csr_pem(&names()).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();

        assert_eq!(
            Fingerprint::of_spki(&parsed.public_key.subject_public_key_info()),
            id.fingerprint()
        );
        assert_eq!(parsed.params.subject_alt_names.len(), 2);
    }
}
