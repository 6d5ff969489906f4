//! A host's identity as a manager pins it: SHA-256 of the public key (SubjectPublicKeyInfo DER),
//! written `sha256:<64 lowercase hex digits>`. Hashing the key rather than the certificate keeps
//! the pin valid when the host's certificate is re-issued for the same key.

use ring::digest::{digest, SHA256};
use rustls::pki_types::CertificateDer;
use rustls::server::ParsedCertificate;
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "sha256:";

/// SHA-256 of a SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// A bad fingerprint text or certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FingerprintError {
    /// Fingerprint {0:?} is not of the form sha256:<64 hex digits>
    #[error("Fingerprint {0:?} is not of the form sha256:<64 hex digits>")]
    Syntax(String),
    /// Cannot read the public key of a certificate: {0}
    #[error("Cannot read the public key of a certificate: {0}")]
    Certificate(String),
}

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, spki_der).as_ref());
        Self(out)
    }

    /// SHA-256 of a whole DER certificate: how a manager CA is pinned (`keel.manager_ca=`), since
    /// the operator copies it from the CA certificate file (`keelctl ca fingerprint`).
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Self {
        Self::of_spki(cert.as_ref())
    }

    /// The fingerprint of the public key a certificate carries.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, FingerprintError> {
        let parsed = ParsedCertificate::try_from(cert)
            .map_err(|e| FingerprintError::Certificate(e.to_string()))?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Accepts upper- or lowercase hex, as operators copy fingerprints from many tools.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintError::Syntax(s.to_string());
        let hex = s.strip_prefix(PREFIX).ok_or_else(bad)?.as_bytes();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            // to_digit(16) < 16, so the casts cannot truncate.
            *byte = (digit(pair[0])? as u8) << 4 | digit(pair[1])? as u8;
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
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
