//! A host's identity as a manager pins it: SHA-256 of the public key (SubjectPublicKeyInfo DER),
//! written `sha256:<64 lowercase hex digits>`. Hashing the key rather than the certificate keeps
//! the pin valid when the host's certificate is re-issued for the same key. The value and its
//! text form are keel-api's; computing one is here.

use ring::digest::{digest, SHA256};
use rustls::pki_types::CertificateDer;
use rustls::server::ParsedCertificate;

pub use keel_api::fingerprint::{Fingerprint, FingerprintError};

/// Computing fingerprints (`Fingerprint::of_spki(..)` with this trait in scope).
pub trait FingerprintOf: Sized {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    fn of_spki(spki_der: &[u8]) -> Self;

    /// SHA-256 of a whole DER certificate: how a manager CA is pinned (`keel.manager_ca=`), since
    /// the operator copies it from the CA certificate file (`keelctl ca fingerprint`).
    fn of_certificate(cert: &CertificateDer<'_>) -> Self {
        Self::of_spki(cert.as_ref())
    }

    /// The fingerprint of the public key a certificate carries.
    fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, FingerprintError> {
        let parsed = ParsedCertificate::try_from(cert)
            .map_err(|e| FingerprintError::Certificate(e.to_string()))?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }
}

impl FingerprintOf for Fingerprint {
    fn of_spki(spki_der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, spki_der).as_ref());
        Fingerprint::from_digest(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_round_trip() {
        // SHA-256 of the empty string.
        let fp = Fingerprint::of_spki(b"");
        let text = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(fp.to_string(), text);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn bad_text_is_refused_naming_it() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            String::new(),
            good.to_string(),
            format!("sha1:{good}"),
            format!("sha256:{}", &good[2..]),
            format!("sha256:{good}00"),
            format!("sha256:{}zz", &good[2..]),
            format!("sha256:{}é", &good[1..]),
        ];
        for case in cases {
            assert_eq!(
                case.parse::<Fingerprint>(),
                Err(FingerprintError::Syntax(case.clone())),
                "{case}"
            );
        }
        assert!(serde_json::from_str::<Fingerprint>("\"sha256:00\"").is_err());
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
