//! TLS for registration: the host trusts a manager by the SHA-256 fingerprint of the manager's CA
//! certificate (`keel.manager_ca=`), and the manager serves a certificate from that CA.
//!
//! The host carries no CA certificate, only its fingerprint, so the manager sends the CA
//! certificate in its chain. The host accepts the server only when one of the certificates it
//! presented hashes to the pin, the server certificate verifies under that certificate as the
//! sole trust anchor, and the server certificate names the address in `keel.manager=` (hosts
//! adopted by the same CA hold server certificates from it, for their own addresses only). The
//! verification happens in the handshake, before any request byte is written: a host that refuses
//! the manager has sent it nothing.

use crate::fingerprint::{Fingerprint, FingerprintExt};
use crate::tls::{
    checked_client_config, provider, refusal, refuse, Presented, ServerCheck, TlsError,
};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::fmt;
use std::sync::Arc;

/// No certificate the manager presented is the pinned CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CaPinMismatch {
    pub expected: Fingerprint,
    /// The fingerprints of the certificates the server sent after its own.
    pub presented: Vec<Fingerprint>,
}

impl fmt::Display for CaPinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "The manager's certificate chain does not hold the pinned CA {}",
            self.expected
        )?;
        if self.presented.is_empty() {
            f.write_str(" (it sent no CA certificate)")
        } else {
            let list: Vec<String> = self.presented.iter().map(ToString::to_string).collect();
            write!(f, " (it sent {})", list.join(", "))
        }
    }
}

/// The pinned-CA mismatch inside a TLS error, if that is what it is.
pub fn ca_pin_mismatch(error: &rustls::Error) -> Option<CaPinMismatch> {
    refusal(error)
}

/// The pure check behind the verifier: `end_entity` (with `chain`, as the server sent it) is a
/// server certificate for `name`, valid at `now` under the presented certificate whose
/// fingerprint is `pin`.
pub fn verify_pinned_chain(
    pin: Fingerprint,
    end_entity: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let Some(at) = chain
        .iter()
        .position(|c| Fingerprint::of_certificate(c) == pin)
    else {
        let mismatch = CaPinMismatch {
            expected: pin,
            presented: chain.iter().map(Fingerprint::of_certificate).collect(),
        };
        return Err(refuse(mismatch));
    };
    let mut roots = RootCertStore::empty();
    roots.add(chain[at].clone().into_owned())?;
    let intermediates: Vec<_> = chain
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, c)| c.clone())
        .collect();
    let parsed = ParsedCertificate::try_from(end_entity)?;
    let algs = provider().signature_verification_algorithms.all;
    verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &intermediates, now, algs)?;
    verify_server_name(&parsed, name)
}

/// The CA a probe found: the presented certificate that the manager's server certificate (for
/// the name asked for) verifies under. Carried out of the handshake as its error, so that the
/// probe ends there, before any request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The manager's CA certificate has fingerprint {0}")]
pub struct ProbedCa(pub Fingerprint);

/// The CA found by a probe handshake (`CaCheck::Probe`), if that is how it ended.
pub fn probed_ca(error: &rustls::Error) -> Option<Fingerprint> {
    refusal::<ProbedCa>(error).map(|found| found.0)
}

/// The CA among `chain` that `end_entity` verifies under for `name`: what an operator is shown
/// to compare before pinning it. Without one, the reason the last candidate failed.
pub fn find_ca(
    end_entity: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<Fingerprint, rustls::Error> {
    // No certificate sent after the server's own: nothing to pin.
    let mut last = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
    for candidate in chain.iter().map(Fingerprint::of_certificate) {
        match verify_pinned_chain(candidate, end_entity, chain, name, now) {
            Ok(()) => return Ok(candidate),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What the verifier accepts.
#[derive(Debug, Clone, Copy)]
enum CaCheck {
    /// The server whose chain reaches the CA with this fingerprint (see the module doc).
    Pin(Fingerprint),
    /// Nothing: it finds the CA (`find_ca`) and ends the handshake with it (`ProbedCa`).
    Probe,
}

impl ServerCheck for CaCheck {
    fn check(&self, server: &Presented<'_>) -> Result<(), rustls::Error> {
        let Presented {
            end_entity,
            intermediates,
            server_name,
            now,
        } = *server;
        match *self {
            CaCheck::Pin(pin) => {
                verify_pinned_chain(pin, end_entity, intermediates, server_name, now)
            }
            CaCheck::Probe => {
                let found = find_ca(end_entity, intermediates, server_name, now)?;
                Err(refuse(ProbedCa(found)))
            }
        }
    }
}

/// The host's configuration for registering with the manager whose CA has fingerprint `pin`.
pub fn pinned_ca_client_config(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    manager_client_config(CaCheck::Pin(pin))
}

/// A configuration whose handshakes only find the manager's CA (`probed_ca` on their error):
/// the console shows it to the operator before anything is sent.
pub fn probe_ca_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    manager_client_config(CaCheck::Probe)
}

fn manager_client_config(check: CaCheck) -> Result<Arc<ClientConfig>, TlsError> {
    checked_client_config(check, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ca::{ManagerCa, Validity};
    use crate::tls::{parse_cert_pem, server_config};
    use std::time::{Duration, SystemTime};

    fn validity() -> Validity {
        Validity::days_from(SystemTime::now(), 30)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        parse_cert_pem("test", pem).unwrap()
    }

    fn ip(text: &str) -> ServerName<'static> {
        ServerName::try_from(text.to_string()).unwrap()
    }

    /// What is checked, the server certificate, the rest of the chain, the name, when, the outcome.
    type Case<'a> = (
        &'a str,
        &'a CertificateDer<'static>,
        Vec<CertificateDer<'static>>,
        ServerName<'static>,
        UnixTime,
        &'a str,
    );

    #[test]
    fn the_chain_must_reach_the_pinned_ca_and_name_the_manager() {
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let other = ManagerCa::generate("other", validity()).unwrap();
        let ca_der = der(&ca.cert_pem());
        let other_der = der(&other.cert_pem());
        let pin = Fingerprint::of_certificate(&ca_der);
        let names = vec!["10.0.2.2".to_string(), "manager.example".to_string()];
        let leaf = der(&ca.issue_server_cert(&names, validity()).unwrap().cert_pem);
        let foreign = der(&other
            .issue_server_cert(&names, validity())
            .unwrap()
            .cert_pem);
        let client = der(&ca.issue_client_cert("c", validity()).unwrap().cert_pem);
        let now = UnixTime::now();
        let later = UnixTime::since_unix_epoch(
            Duration::from_secs(now.as_secs()) + Duration::from_secs(365 * 86400),
        );
        let m = ip("10.0.2.2");
        let cases: Vec<Case> = vec![
            ("good", &leaf, vec![ca_der.clone()], m.clone(), now, "ok"),
            (
                "dns name",
                &leaf,
                vec![ca_der.clone()],
                ip("manager.example"),
                now,
                "ok",
            ),
            (
                "ca among others",
                &leaf,
                vec![other_der.clone(), ca_der.clone()],
                m.clone(),
                now,
                "ok",
            ),
            ("no ca sent", &leaf, vec![], m.clone(), now, "pin"),
            (
                "other ca",
                &foreign,
                vec![other_der.clone()],
                m.clone(),
                now,
                "pin",
            ),
            (
                "pinned ca, other signer",
                &foreign,
                vec![ca_der.clone()],
                m.clone(),
                now,
                "cert",
            ),
            (
                "wrong name",
                &leaf,
                vec![ca_der.clone()],
                ip("10.0.2.3"),
                now,
                "cert",
            ),
            (
                "expired",
                &leaf,
                vec![ca_der.clone()],
                m.clone(),
                later,
                "cert",
            ),
            (
                "client certificate",
                &client,
                vec![ca_der.clone()],
                m.clone(),
                now,
                "cert",
            ),
        ];
        for (what, end, chain, name, at, want) in cases {
            let got = verify_pinned_chain(pin, end, &chain, &name, at);
            let kind = match &got {
                Ok(()) => "ok",
                Err(e) if ca_pin_mismatch(e).is_some() => "pin",
                Err(_) => "cert",
            };
            assert_eq!(kind, want, "{what}: {got:?}");
        }
    }

    #[test]
    fn a_probe_finds_the_ca_the_server_certificate_verifies_under() {
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let other = ManagerCa::generate("other", validity()).unwrap();
        let (ca_der, other_der) = (der(&ca.cert_pem()), der(&other.cert_pem()));
        let names = vec!["10.0.2.2".to_string()];
        let leaf = der(&ca.issue_server_cert(&names, validity()).unwrap().cert_pem);
        let m = ip("10.0.2.2");
        let now = UnixTime::now();
        let fp = Fingerprint::of_certificate;
        let cases: Vec<(
            &str,
            Vec<CertificateDer<'static>>,
            ServerName<'static>,
            Option<Fingerprint>,
        )> = vec![
            (
                "ca sent",
                vec![ca_der.clone()],
                m.clone(),
                Some(fp(&ca_der)),
            ),
            (
                "ca after another",
                vec![other_der.clone(), ca_der.clone()],
                m.clone(),
                Some(fp(&ca_der)),
            ),
            ("no ca sent", vec![], m.clone(), None),
            (
                "only a foreign ca",
                vec![other_der.clone()],
                m.clone(),
                None,
            ),
            ("another name", vec![ca_der.clone()], ip("10.0.2.3"), None),
        ];
        for (what, chain, name, want) in cases {
            let got = find_ca(&leaf, &chain, &name, now).ok();
            assert_eq!(got, want, "{what}");
        }
        assert_eq!(probed_ca(&refuse(ProbedCa(fp(&ca_der)))), Some(fp(&ca_der)));
        assert_eq!(probed_ca(&rustls::Error::DecryptError), None);
        assert!(probe_ca_client_config().is_ok());
    }

    #[test]
    fn the_mismatch_names_both_sides() {
        let e = CaPinMismatch {
            expected: Fingerprint::of_spki(b"a"),
            presented: vec![Fingerprint::of_spki(b"b")],
        };
        let text = e.to_string();
        assert!(text.contains(&e.expected.to_string()), "{text}");
        assert!(text.contains(&e.presented[0].to_string()), "{text}");
        let none = CaPinMismatch {
            presented: vec![],
            ..e
        };
        assert!(none.to_string().contains("no CA certificate"));
        assert_eq!(ca_pin_mismatch(&rustls::Error::DecryptError), None);
    }

    #[test]
    fn configurations_build() {
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let server = ca
            .issue_server_cert(&["127.0.0.1".into()], validity())
            .unwrap();
        let (chain, key) = server.tls_auth().unwrap();
        let mut chain = chain;
        chain.push(der(&ca.cert_pem()));
        assert!(server_config(chain, key).is_ok());
        assert!(pinned_ca_client_config(Fingerprint::of_spki(b"x")).is_ok());
    }
}
