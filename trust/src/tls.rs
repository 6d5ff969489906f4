//! TLS configurations for both ends of the agent's API, all on rustls with *ring*.
//!
//! Host, before adoption: the self-signed certificate, no client authentication (only the
//! unauthenticated routes answer; `server_config`, also the manager's registration endpoint).
//! Host, after adoption: the manager-signed certificate, and client certificates verified against
//! the pinned manager CA — optional at the TLS layer so that health checks still work, required
//! by the route layer for everything else (`adopted_server_config`).
//!
//! Manager: trusts no CA for the host; it pins the host's public-key fingerprint instead, and
//! still checks the handshake signature, which proves the host holds that key.
//!
//! Every client here judges the server through one verifier, `CheckedVerifier`: a `ServerCheck`
//! (the host key pin here, the manager CA pin and the CA probe in `ca_pin`) decides on the
//! certificates, the provider checks the handshake signatures.

use crate::fingerprint::{Fingerprint, FingerprintExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::fmt;
use std::sync::Arc;

/// Why a configuration could not be built or a certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Cannot build the TLS configuration: {0}
    #[error("Cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Cannot build the client certificate verifier: {0}
    #[error("Cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// {0} is not PEM holding exactly one CERTIFICATE (found {1})
    #[error("{0} is not PEM holding exactly one CERTIFICATE (found {1})")]
    Pem(&'static str, String),
    /// The manager CA certificate is unusable: {0}
    #[error("The manager CA certificate is unusable: {0}")]
    BadCa(rustls::Error),
    /// The certificate is not valid under the manager CA: {0}
    #[error("The certificate is not valid under the manager CA: {0}")]
    Untrusted(rustls::Error),
}

/// The host presented a key other than the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Host key fingerprint mismatch: expected {expected}, the host presented {actual}
#[error("Host key fingerprint mismatch: expected {expected}, the host presented {actual}")]
pub struct PinMismatch {
    pub expected: Fingerprint,
    pub actual: Fingerprint,
}

/// The one crypto provider used everywhere (never the process default, which may be unset).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses PEM holding exactly one certificate; `what` names it in the error.
pub fn parse_cert_pem(what: &'static str, pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match <[_; 1]>::try_from(certs) {
        Ok([Ok(cert)]) => Ok(cert),
        Ok([Err(e)]) => Err(TlsError::Pem(what, e.to_string())),
        Err(certs) => Err(TlsError::Pem(what, format!("{} certificates", certs.len()))),
    }
}

/// A trust store holding only `ca`.
fn roots(ca: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(TlsError::BadCa)?;
    Ok(Arc::new(roots))
}

/// Checks that the CA certificate can anchor a chain.
pub fn check_ca(ca: &CertificateDer<'_>) -> Result<(), TlsError> {
    roots(ca).map(drop)
}

/// Checks that `leaf` (with `intermediates`, nearest first) is a server certificate valid at
/// `now` under `ca`.
pub fn verify_host_cert(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    ca: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<(), TlsError> {
    let parsed = ParsedCertificate::try_from(leaf).map_err(TlsError::Untrusted)?;
    let algs = provider().signature_verification_algorithms.all;
    verify_server_cert_signed_by_trust_anchor(&parsed, &*roots(ca)?, intermediates, now, algs)
        .map_err(TlsError::Untrusted)
}

/// A server serving `chain` (its certificate first) with `key`, asking for no client
/// certificate: the host before adoption (its self-signed certificate), and the manager's
/// registration endpoint (its server certificate followed by the CA certificate, which hosts
/// look for by fingerprint; hosts prove themselves later, by the key the manager pins).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The host's configuration after adoption: `chain` is the manager-signed certificate and its
/// intermediates, `key` the host key, `ca` the pinned manager CA.
pub fn adopted_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &CertificateDer<'_>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The manager's configuration for talking to the host whose key fingerprint is `pin`,
/// presenting `client_auth` (certificate chain and key) when given.
pub fn pinned_client_config(
    pin: Fingerprint,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    checked_client_config(HostKeyPin(pin), client_auth)
}

/// What a server presented in a handshake, as a `ServerCheck` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The server's own certificate.
    pub end_entity: &'a CertificateDer<'a>,
    /// The certificates it sent after its own, in its order.
    pub intermediates: &'a [CertificateDer<'a>],
    /// The name the client asked for.
    pub server_name: &'a ServerName<'a>,
    pub now: UnixTime,
}

/// How a client judges the server's certificates; the handshake signatures are checked the
/// usual way around it (`CheckedVerifier`).
pub trait ServerCheck: fmt::Debug + Send + Sync {
    /// `Ok` accepts the server; an error (`refuse`) ends the handshake before any request.
    fn check(&self, server: &Presented<'_>) -> Result<(), rustls::Error>;
}

/// A client configuration that accepts the servers `check` accepts.
pub fn checked_client_config(
    check: impl ServerCheck + 'static,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(CheckedVerifier {
        check,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts exactly the host key whose fingerprint is pinned, whatever names or issuer its
/// certificate has.
#[derive(Debug)]
struct HostKeyPin(Fingerprint);

impl ServerCheck for HostKeyPin {
    fn check(&self, server: &Presented<'_>) -> Result<(), rustls::Error> {
        let actual = Fingerprint::of_cert(server.end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if actual != self.0 {
            return Err(refuse(PinMismatch {
                expected: self.0,
                actual,
            }));
        }
        Ok(())
    }
}

/// A server certificate verifier made of a `ServerCheck` and the provider's signature checks.
#[derive(Debug)]
struct CheckedVerifier<C> {
    check: C,
    algs: WebPkiSupportedAlgorithms,
}

impl<C: ServerCheck> ServerCertVerifier for CheckedVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let server = Presented {
            end_entity,
            intermediates,
            server_name,
            now,
        };
        self.check
            .check(&server)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A `ServerCheck`'s refusal for `reason`, which the client finds again in the TLS error
/// (`refusal`) to tell the operator what was wrong rather than that the certificate was.
pub fn refuse(reason: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
}

/// The `refuse` reason of type `R` inside a TLS error, if that is what it is.
pub fn refusal<R: std::error::Error + Clone + 'static>(error: &rustls::Error) -> Option<R> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
            e.downcast_ref::<R>().cloned()
        }
        _ => None,
    }
}

/// The pin mismatch inside a TLS error, if that is what it is.
pub fn pin_mismatch(error: &rustls::Error) -> Option<PinMismatch> {
    refusal(error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ca::{ManagerCa, Validity};
    use crate::test_host::TestHost;
    use std::time::{Duration, SystemTime};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn pem_parsing_wants_exactly_one_certificate() {
        let ca = ManagerCa::generate("m", Validity::days_from(SystemTime::now(), 1)).unwrap();
        let one = ca.cert_pem();
        assert!(parse_cert_pem("x", &one).is_ok());
        let cases = [
            (String::new(), "found 0 certificates"),
            (format!("{one}{one}"), "found 2 certificates"),
            (
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_string(),
                "found",
            ),
        ];
        for (pem, want) in cases {
            let err = parse_cert_pem("the CA", &pem).unwrap_err().to_string();
            assert!(err.starts_with("the CA is not PEM"), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn host_cert_verification() {
        let host = TestHost::new();
        let validity = Validity::days_from(SystemTime::now(), 30);
        let ca = ManagerCa::generate("manager", validity).unwrap();
        let other = ManagerCa::generate("other", validity).unwrap();
        let csr = host.csr_pem(&["h"]);
        let signed = ca
            .sign_host_csr(&csr, host.fingerprint(), validity)
            .unwrap();
        let leaf = parse_cert_pem("leaf", &signed).unwrap();
        let ca_der = parse_cert_pem("ca", &ca.cert_pem()).unwrap();
        let other_der = parse_cert_pem("ca", &other.cert_pem()).unwrap();

        assert!(verify_host_cert(&leaf, &[], &ca_der, now()).is_ok());
        assert!(matches!(
            verify_host_cert(&leaf, &[], &other_der, now()),
            Err(TlsError::Untrusted(_))
        ));
        let in_a_year = UnixTime::since_unix_epoch(
            Duration::from_secs(now().as_secs()) + Duration::from_secs(365 * 86400),
        );
        let err = verify_host_cert(&leaf, &[], &ca_der, in_a_year).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // A client certificate is not a server certificate.
        let client = ca.issue_client_cert("admin", validity).unwrap();
        let client_der = parse_cert_pem("client", &client.cert_pem).unwrap();
        assert!(verify_host_cert(&client_der, &[], &ca_der, now()).is_err());
        // A self-signed host certificate is not under any manager CA.
        assert!(verify_host_cert(host.self_signed_cert(), &[], &ca_der, now()).is_err());
    }

    #[test]
    fn pin_mismatch_is_recognised() {
        let e = PinMismatch {
            expected: Fingerprint::of_spki(b"a"),
            actual: Fingerprint::of_spki(b"b"),
        };
        assert_eq!(pin_mismatch(&refuse(e)), Some(e));
        assert_eq!(pin_mismatch(&rustls::Error::DecryptError), None);
        let text = e.to_string();
        assert!(text.contains(&e.expected.to_string()) && text.contains(&e.actual.to_string()));
    }

    #[test]
    fn configurations_build() {
        let host = TestHost::new();
        let key = || host.private_key_der();
        assert!(server_config(vec![host.self_signed_cert().clone()], key()).is_ok());
        let validity = Validity::days_from(SystemTime::now(), 30);
        let ca = ManagerCa::generate("manager", validity).unwrap();
        let signed = ca
            .sign_host_csr(&host.csr_pem(&[]), host.fingerprint(), validity)
            .unwrap();
        let chain = vec![parse_cert_pem("leaf", &signed).unwrap()];
        let ca_der = parse_cert_pem("ca", &ca.cert_pem()).unwrap();
        assert!(adopted_server_config(chain, key(), &ca_der).is_ok());
        // A chain for another key is refused rather than served.
        let stranger = TestHost::new();
        let foreign = vec![stranger.self_signed_cert().clone()];
        assert!(adopted_server_config(foreign.clone(), key(), &ca_der).is_err());
        assert!(server_config(foreign, key()).is_err());
        assert!(pinned_client_config(host.fingerprint(), None).is_ok());
    }
}
