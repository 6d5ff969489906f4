//! The agent's wire format: paths and JSON messages, shared by the host (`server`) and the
//! manager (`client`, later keelctl). Unknown fields are refused so that a typo in a manager is an
//! error, not a silently ignored setting.
//!
//! Adoption, after the manager pinned the host's key fingerprint:
//!
//! ```text
//! POST /v1/adopt           {token, manager_ca_pem}                  -> {session_id, csr_pem, fingerprint}
//! POST /v1/adopt/complete  {session_id, certificate_pem, chain_pem} -> {fingerprint}
//! ```
//!
//! Errors are `{"error": "..."}` with 400 (bad input), 401 (wrong or expired token or session),
//! 403 (route needs the manager's client certificate), 404/405, 409 (already adopted, no
//! adoption in progress), 413, 429 (rate limited, with `Retry-After`) or 500.

use super::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// `GET`: liveness and adoption phase, open to anyone.
pub const HEALTH: &str = "/v1/health";
/// `POST` [`AdoptRequest`] → [`AdoptResponse`]: start adoption.
pub const ADOPT: &str = "/v1/adopt";
/// `POST` [`CompleteRequest`] → [`CompleteResponse`]: finish adoption.
pub const ADOPT_COMPLETE: &str = "/v1/adopt/complete";
/// `POST` (manager only) → [`ReleaseResponse`]: forget the manager, back to not adopted.
pub const RELEASE: &str = "/v1/release";
/// `GET` (manager only) → [`HostInfo`]: the host; grows into the host API.
pub const HOST: &str = "/v1/host";

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

/// Answer to [`RELEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseResponse {
    pub adoption: AdoptionPhase,
}

/// Answer to [`HOST`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub fingerprint: Fingerprint,
    /// Host names and addresses the host was started with.
    pub names: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let fp = Fingerprint::of_spki(b"");
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
                r#"{"fingerprint":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
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
