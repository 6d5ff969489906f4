//! The host's ingress firewall as the API shows it (`GET /v1/host/firewall`).

use serde::{Deserialize, Serialize};

/// `GET` → [`Description`]: the host's ingress firewall, as loaded at boot.
pub const HOST_FIREWALL: &str = "/v1/host/firewall";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Input,
}

impl Verdict {
    /// As nft and the JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        }
    }
}

impl Hook {
    /// As nft and the JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
        }
    }
}

/// The ruleset as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub family: String,
    pub table: String,
    pub chains: Vec<ChainDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainDescription {
    pub name: String,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Verdict,
    pub rules: Vec<RuleDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDescription {
    /// The rule in `nft` syntax.
    pub rule: String,
    pub comment: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let text = r#"{"family":"inet","table":"keel","chains":[{"name":"input","hook":"input","priority":0,"policy":"drop","rules":[{"rule":"iif lo accept","comment":"loopback"}]}]}"#;
        let d: Description = serde_json::from_str(text).unwrap();
        assert_eq!(d.chains[0].policy, Verdict::Drop);
        assert_eq!(serde_json::to_string(&d).unwrap(), text);
        for v in [Verdict::Accept, Verdict::Drop] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        assert_eq!(
            serde_json::to_value(Hook::Input).unwrap(),
            Hook::Input.as_str()
        );
    }
}
