//! `MacAddr`: an Ethernet address, written `52:54:00:12:34:56`. The one parser of MAC addresses
//! (VM definitions, `vm.json`, taps, the host's links).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

/// Why a text is not a MAC address, or not one a guest NIC may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacError {
    /// needs six colon-separated bytes
    Count,
    /// needs six colon-separated bytes of two hex digits
    Digits,
    /// not hexadecimal
    NotHex,
    /// is a multicast address
    Multicast,
    /// is all zeros
    Zero,
}

impl fmt::Display for MacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Count => "needs six colon-separated bytes",
            Self::Digits => "needs six colon-separated bytes of two hex digits",
            Self::NotHex => "not hexadecimal",
            Self::Multicast => "is a multicast address",
            Self::Zero => "is all zeros",
        })
    }
}

impl std::error::Error for MacError {}

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The group bit of the first octet.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// What a guest NIC may have: a unicast address other than all zeros.
    pub fn check_unicast(self) -> Result<Self, MacError> {
        if self.is_multicast() {
            return Err(MacError::Multicast);
        }
        if self.0 == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(self)
    }

    /// Parses `text` and checks it is a guest NIC's address ([`MacAddr::check_unicast`]).
    pub fn parse_unicast(text: &str) -> Result<Self, MacError> {
        text.parse::<Self>()?.check_unicast()
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Six colon-separated bytes of two hex digits each, in either case.
    fn from_str(text: &str) -> Result<Self, MacError> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(MacError::Count)?;
            if part.len() != 2 {
                return Err(MacError::Digits);
            }
            // from_str_radix alone would take "+f".
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacError::NotHex);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacError::NotHex)?;
        }
        if parts.next().is_some() {
            return Err(MacError::Count);
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    /// Lowercase, `52:54:00:ab:cd:ef`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format_args!("MAC address {text:?}: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing_table() {
        let cases: &[(&str, Result<[u8; 6], &str>)] = &[
            ("52:54:00:12:34:56", Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            ("52:54:00:AB:cd:ef", Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
            ("52:54:00:12:34", Err("needs six colon-separated bytes")),
            (
                "52:54:00:12:34:56:78",
                Err("needs six colon-separated bytes"),
            ),
            (
                "52:54:0:12:34:56",
                Err("needs six colon-separated bytes of two hex digits"),
            ),
            ("52:54:00:12:34:zz", Err("not hexadecimal")),
            ("52:54:00:12:34:+f", Err("not hexadecimal")),
            ("", Err("needs six colon-separated bytes of two hex digits")),
            ("01:00:5e:00:00:01", Err("is a multicast address")),
            ("00:00:00:00:00:00", Err("is all zeros")),
        ];
        for (mac, want) in cases {
            let got = MacAddr::parse_unicast(mac)
                .map(MacAddr::octets)
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "{mac}");
        }
        // Syntax alone: what a host link or a tap may have.
        assert!("ff:ff:ff:ff:ff:ff"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddr>().unwrap().octets(),
            [0; 6]
        );
    }

    #[test]
    fn prints_lowercase_and_round_trips_through_json() {
        let mac: MacAddr = "52:54:00:AA:bb:0C".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:0c");
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"52:54:00:aa:bb:0c\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        let err = serde_json::from_str::<MacAddr>("\"52:54\"").unwrap_err();
        assert!(err.to_string().contains("MAC address \"52:54\""), "{err}");
    }
}
