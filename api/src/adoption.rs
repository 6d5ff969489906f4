//! Adoption, the manager's side and the host's: the health check, then the two-step adoption
//! after the manager pinned the host's key fingerprint. Unknown fields are refused so that a typo
//! in a manager is an error, not a silently ignored setting.
//!
//! ```text
//! POST /v1/adopt           {token, manager_ca_pem}                  -> {session_id, csr_pem, fingerprint}
//! POST /v1/adopt/complete  {session_id, certificate_pem, chain_pem} -> {fingerprint}
//! ```

use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// `GET`: liveness and adoption phase, open to anyone.
pub const HEALTH: &str = "/v1/health";
/// `POST` [`AdoptRequest`] → [`AdoptResponse`]: start adoption.
pub const ADOPT: &str = "/v1/adopt";
/// `POST` [`CompleteRequest`] → [`CompleteResponse`]: finish adoption.
pub const ADOPT_COMPLETE: &str = "/v1/adopt/complete";

/// Where a host is in its adoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdoptionPhase {
    NotAdopted,
    Adopting,
    Adopted,
}

/// Answer to [`HEALTH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    /// Always "ok" when the agent answers.
    pub status: String,
    pub adoption: AdoptionPhase,
}

/// Body of [`ADOPT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    /// The host's adoption token.
    pub token: String,
    /// The manager's CA certificate, PEM: the host will only trust clients it issued.
    pub manager_ca_pem: String,
}

/// Answer to [`ADOPT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptResponse {
    /// Binds the completion to this request; valid for a few minutes.
    pub session_id: String,
    /// A certificate signing request for the host's existing key.
    pub csr_pem: String,
    /// The host key's fingerprint, for the manager to check the CSR against its pin.
    pub fingerprint: Fingerprint,
}

/// Body of [`ADOPT_COMPLETE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub session_id: String,
    /// The host's certificate, signed for the CSR's key, PEM.
    pub certificate_pem: String,
    /// Intermediate certificates between it and the manager CA, PEM, nearest first (usually
    /// none: the manager CA signs hosts directly).
    #[serde(default)]
    pub chain_pem: Vec<String>,
}

/// Answer to [`ADOPT_COMPLETE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteResponse {
    pub fingerprint: Fingerprint,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let fp = Fingerprint::from_digest([0xab; 32]);
        let cases: Vec<(String, &str)> = vec![
            (
                serde_json::to_string(&HealthResponse {
                    status: "ok".into(),
                    adoption: AdoptionPhase::NotAdopted,
                })
                .unwrap(),
                r#"{"status":"ok","adoption":"not-adopted"}"#,
            ),
            (
                serde_json::to_string(&AdoptRequest {
                    token: "t".into(),
                    manager_ca_pem: "p".into(),
                })
                .unwrap(),
                r#"{"token":"t","manager_ca_pem":"p"}"#,
            ),
            (
                serde_json::to_string(&CompleteResponse { fingerprint: fp }).unwrap(),
                r#"{"fingerprint":"sha256:abababababababababababababababababababababababababababababababab"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn chain_defaults_to_empty_and_unknown_fields_are_refused() {
        let c: CompleteRequest =
            serde_json::from_str(r#"{"session_id":"s","certificate_pem":"c"}"#).unwrap();
        assert!(c.chain_pem.is_empty());
        let err = serde_json::from_str::<AdoptRequest>(
            r#"{"token":"t","manager_ca_pem":"p","tokn":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tokn"), "{err}");
    }
}
