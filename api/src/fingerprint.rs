//! A host's identity as a manager pins it: SHA-256 of the public key (SubjectPublicKeyInfo DER),
//! written `sha256:<64 lowercase hex digits>`. This is the value as it crosses the wire; computing
//! one from a key or a certificate needs a hash and an X.509 parser and belongs to keel-trust
//! (`keel_trust::fingerprint::FingerprintExt`).

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "sha256:";

/// SHA-256 of a SubjectPublicKeyInfo (or of a whole certificate, for a pinned manager CA).
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
            Self::Syntax(text) => {
                write!(
                    f,
                    "Fingerprint {text:?} is not of the form sha256:<64 hex digits>"
                )
            }
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

    pub const fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&crate::hex::hex(&self.0))
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
pub(crate) mod tests {
    use super::*;

    /// SHA-256 of the empty string.
    pub(crate) const EMPTY_SHA256: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];

    #[test]
    fn text_and_json_round_trip() {
        let fp = Fingerprint::from_digest(EMPTY_SHA256);
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
}
