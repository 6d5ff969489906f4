//! Secrets a manager must present: the adoption token and the adoption session id.
//!
//! Both are random URL-safe strings compared in constant time. The adoption token also expires,
//! and can instead be preset by the operator (`keel.adopt_token=` on the kernel command line) for
//! unattended provisioning.

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::time::{Duration, Instant};

/// Random bytes in a generated secret: 192 bits, 32 characters of base64url.
pub const SECRET_BYTES: usize = 24;

/// Accepted lengths of a preset token, in characters.
const PRESET_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a secret was refused or could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The adoption token is wrong
    #[error("The adoption token is wrong")]
    Mismatch,
    /// The adoption token expired {0} s ago; a new one is needed from the host's console
    #[error("The adoption token expired {0} s ago; a new one is needed from the host's console")]
    Expired(u64),
    /// Preset adoption token (keel.adopt_token) has {0} characters; it needs 16 to 128
    #[error("Preset adoption token (keel.adopt_token) has {0} characters; it needs 16 to 128")]
    PresetLength(usize),
    /// Preset adoption token (keel.adopt_token) has {0:?} at position {1}; only A-Z a-z 0-9 - _ are allowed
    #[error(
        "Preset adoption token (keel.adopt_token) has {0:?} at position {1}; only A-Z a-z 0-9 - _ are allowed"
    )]
    PresetCharacter(char, usize),
    /// Cannot read random bytes from the kernel
    #[error("Cannot read random bytes from the kernel")]
    Random,
}

/// A secret string. Its `Debug` does not show it, so it never lands in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A fresh random secret.
    pub fn random() -> Result<Self, TokenError> {
        let mut bytes = [0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        Ok(Self(base64url(&bytes)))
    }

    /// An operator-chosen secret. The error shows the offending character but never the secret.
    pub fn preset(text: &str) -> Result<Self, TokenError> {
        let len = text.chars().count();
        if !PRESET_LEN.contains(&len) {
            return Err(TokenError::PresetLength(len));
        }
        match text
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            Some((at, c)) => Err(TokenError::PresetCharacter(c, at)),
            None => Ok(Self(text.to_string())),
        }
    }

    /// The secret itself, to show on the console or send to the host.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time independent of where they differ. Both sides
    /// are hashed first so that the comparison also runs on equal lengths.
    pub fn matches(&self, presented: &str) -> bool {
        let ours = digest(&SHA256, self.0.as_bytes());
        let theirs = digest(&SHA256, presented.as_bytes());
        constant_time_eq(ours.as_ref(), theirs.as_ref())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Equality whose running time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Unpadded base64url (RFC 4648 §5): safe in URLs, JSON and on a kernel command line.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The adoption token: a secret with an optional expiry.
#[derive(Debug, Clone)]
pub struct Token {
    secret: Secret,
    expires_at: Option<Instant>,
}

impl Token {
    /// A token valid for `ttl` from `now`, or forever when `ttl` is `None`.
    pub fn new(secret: Secret, now: Instant, ttl: Option<Duration>) -> Self {
        Self {
            secret,
            expires_at: ttl.map(|ttl| now + ttl),
        }
    }

    /// The token's text.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Accepts `presented` at `now`. Expiry is only reported for the right token, so a guess
    /// learns nothing from it.
    pub fn check(&self, presented: &str, now: Instant) -> Result<(), TokenError> {
        if !self.secret.matches(presented) {
            return Err(TokenError::Mismatch);
        }
        match self.expires_at {
            Some(at) if now >= at => Err(TokenError::Expired((now - at).as_secs())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64url_vectors() {
        // RFC 4648 §10, with the URL alphabet and no padding.
        let cases: [(&[u8], &str); 8] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "-_-_"),
        ];
        for (input, want) in cases {
            assert_eq!(base64url(input), want, "{input:?}");
        }
    }

    #[test]
    fn random_secrets_are_url_safe_and_distinct() {
        let a = Secret::random().unwrap();
        let b = Secret::random().unwrap();
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
        assert!(
            Secret::preset(a.expose()).is_ok(),
            "a random secret is a valid preset"
        );
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn preset_validation() {
        let cases = [
            ("abcdefgh-_ABCD09", Ok(())),
            ("short", Err(TokenError::PresetLength(5))),
            (&"x".repeat(129), Err(TokenError::PresetLength(129))),
            (
                "abcdefgh ABCD0912",
                Err(TokenError::PresetCharacter(' ', 8)),
            ),
            (
                "abcdefgh+ABCD0912",
                Err(TokenError::PresetCharacter('+', 8)),
            ),
            (
                "éabcdefghABCD0912",
                Err(TokenError::PresetCharacter('é', 0)),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Secret::preset(text).map(|_| ()), want, "{text}");
        }
        let err = Secret::preset("abcdefgh+ABCD0912").unwrap_err().to_string();
        assert!(
            !err.contains("abcdefgh"),
            "the error must not leak the secret: {err}"
        );
    }

    #[test]
    fn matching() {
        let s = Secret::preset("abcdefghijklmnop").unwrap();
        let cases = [
            ("abcdefghijklmnop", true),
            ("abcdefghijklmnoq", false),
            ("abcdefghijklmno", false),
            ("abcdefghijklmnopq", false),
            ("", false),
        ];
        for (presented, want) in cases {
            assert_eq!(s.matches(presented), want, "{presented}");
        }
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn token_expiry() {
        let t0 = Instant::now();
        let secret = Secret::preset("abcdefghijklmnop").unwrap();
        let token = Token::new(secret.clone(), t0, Some(Duration::from_secs(60)));
        let forever = Token::new(secret, t0, None);
        let late = t0 + Duration::from_secs(75);
        let cases = [
            (&token, "abcdefghijklmnop", t0, Ok(())),
            (
                &token,
                "abcdefghijklmnop",
                t0 + Duration::from_secs(59),
                Ok(()),
            ),
            (
                &token,
                "abcdefghijklmnop",
                late,
                Err(TokenError::Expired(15)),
            ),
            (&token, "wrong-token-text", late, Err(TokenError::Mismatch)),
            (&token, "wrong-token-text", t0, Err(TokenError::Mismatch)),
            (&forever, "abcdefghijklmnop", late, Ok(())),
        ];
        for (i, (token, presented, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(token.check(presented, now), want, "case {i}");
        }
    }
}
