//! A key or certificate fingerprint as it crosses the wire: SHA-256, written
//! `sha256:<64 lowercase hex digits>`. A manager pins a host by the fingerprint of its public key
//! (SubjectPublicKeyInfo DER); a host pins a manager by that of its CA certificate. Computing
//! one needs the crypto stack, so it lives in keel-trust (`keel_trust::fingerprint`); this is the
//! value, its text and its JSON.

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "sha256:";

/// A SHA-256 digest of a SubjectPublicKeyInfo or a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// A bad fingerprint text or certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FingerprintError {
    /// Fingerprint {0:?} is not of the form sha256:<64 hex digits>
    Syntax(String),
    /// Cannot read the public key of a certificate: {0}
    Certificate(String),
}

impl fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(text) => write!(
                f,
                "Fingerprint {text:?} is not of the form sha256:<64 hex digits>"
            ),
            Self::Certificate(why) => {
                write!(f, "Cannot read the public key of a certificate: {why}")
            }
        }
    }
}

impl std::error::Error for FingerprintError {}

impl Fingerprint {
    /// The fingerprint whose SHA-256 digest is `digest`.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The SHA-256 digest.
    pub const fn digest(&self) -> &[u8; 32] {
        &self.0
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

    /// SHA-256 of the empty string.
    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn text_and_json_round_trip() {
        let fp: Fingerprint = EMPTY.parse().unwrap();
        assert_eq!(fp.to_string(), EMPTY);
        assert_eq!(format!("{fp:?}"), EMPTY);
        assert_eq!(Fingerprint::from_digest(*fp.digest()), fp);
        assert_eq!(
            EMPTY
                .to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn bad_text_is_refused_naming_it() {
        let good = &EMPTY[PREFIX.len()..];
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
        let err = "sha256:00".parse::<Fingerprint>().unwrap_err().to_string();
        assert_eq!(
            err,
            "Fingerprint \"sha256:00\" is not of the form sha256:<64 hex digits>"
        );
        assert!(serde_json::from_str::<Fingerprint>("\"sha256:00\"").is_err());
    }
}
