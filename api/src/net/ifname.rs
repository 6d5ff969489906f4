//! `IfName`: a Linux network interface name. The one check of interface names (the host's
//! network configuration, VM NICs' bridges, taps, `vm.json`).

use std::fmt;
use std::str::FromStr;

/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A name the kernel accepts for a network interface (its `dev_valid_name`): 1 to 15 bytes, not
/// `.` or `..`, no '/', ':', white space or control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// A text that is not an interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfNameError {
    pub name: String,
}

impl IfNameError {
    /// The rule, for messages.
    pub const RULE: &'static str = "1 to 15 characters, no '/', ':' or spaces";
}

impl fmt::Display for IfNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an interface name ({})",
            self.name,
            Self::RULE
        )
    }
}

impl std::error::Error for IfNameError {}

impl IfName {
    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= MAX_IFNAME_LEN
            && name != "."
            && name != ".."
            && !name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b < 0x20);
        if ok {
            Ok(Self(name))
        } else {
            Err(IfNameError { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = IfNameError;

    fn from_str(s: &str) -> Result<Self, IfNameError> {
        Self::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl serde::Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn interface_name_table() {
        let cases: &[(&str, bool)] = &[
            ("eth0", true),
            ("keelbr0", true),
            ("br-vm.7", true),
            ("bond0.100", true),
            ("kt0123abcdn7", true),
            ("a", true),
            ("x".repeat(15).leak(), true),
            ("x".repeat(16).leak(), false),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("tap/0", false),
            ("eth0:1", false),
            ("my nic", false),
            ("tab\t", false),
            ("nl\n", false),
        ];
        for (name, ok) in cases {
            assert_eq!(IfName::new(*name).is_ok(), *ok, "{name:?}");
        }
        assert_eq!(
            IfName::new("a/b").unwrap_err().to_string(),
            "\"a/b\" is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let name = IfName::new("keelbr0").unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"keelbr0\"");
        assert_eq!(serde_json::from_str::<IfName>(&json).unwrap(), name);
        assert!(serde_json::from_str::<IfName>("\"a/b\"").is_err());
    }
}
