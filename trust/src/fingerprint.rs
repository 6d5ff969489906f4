//! A host's identity as a manager pins it: SHA-256 of the public key (SubjectPublicKeyInfo DER),
//! written `sha256:<64 lowercase hex digits>`. Hashing the key rather than the certificate keeps
//! the pin valid when the host's certificate is re-issued for the same key.
//!
//! The value, its text and its JSON are `keel_api::fingerprint` (the wire carries it); computing
//! one is here, as `FingerprintExt`'s functions: `Fingerprint::of_spki(..)` with the trait in
//! scope.

pub use keel_api::fingerprint::{Fingerprint, FingerprintError};
use ring::digest::{digest, SHA256};
use rustls::pki_types::CertificateDer;
use rustls::server::ParsedCertificate;

/// How fingerprints are computed.
pub trait FingerprintExt: Sized {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    fn of_spki(spki_der: &[u8]) -> Self;

    /// SHA-256 of a whole DER certificate: how a manager CA is pinned (`keel.manager_ca=`), since
    /// the operator copies it from the CA certificate file (`keelctl ca fingerprint`).
    fn of_certificate(cert: &CertificateDer<'_>) -> Self;

    /// The fingerprint of the public key a certificate carries.
    fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, FingerprintError>;
}

impl FingerprintExt for Fingerprint {
    fn of_spki(spki_der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, spki_der).as_ref());
        Self::from_digest(out)
    }

    fn of_certificate(cert: &CertificateDer<'_>) -> Self {
        Self::of_spki(cert.as_ref())
    }

    fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, FingerprintError> {
        let parsed = ParsedCertificate::try_from(cert)
            .map_err(|e| FingerprintError::Certificate(e.to_string()))?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SHA-256 of the empty string.
        let text = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Fingerprint::of_spki(b"").to_string(), text);
        let der = CertificateDer::from(Vec::new());
        assert_eq!(Fingerprint::of_certificate(&der).to_string(), text);
    }

    #[test]
    fn certificate_fingerprint_is_the_key_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            Fingerprint::of_cert(cert.der()).unwrap(),
            Fingerprint::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            Fingerprint::of_cert(&junk),
            Err(FingerprintError::Certificate(_))
        ));
    }
}
