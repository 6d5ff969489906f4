//! A host key for the tests: what the agent's host identity holds, without its files.

use crate::fingerprint::{Fingerprint, FingerprintExt};
use rcgen::{CertificateParams, KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// An ECDSA P-256 key and a self-signed certificate for it.
pub struct TestHost {
    key: KeyPair,
    self_signed: CertificateDer<'static>,
}

#[allow(clippy::unwrap_used)]
impl TestHost {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let self_signed = CertificateParams::new(vec!["h".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone();
        Self { key, self_signed }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.key.subject_public_key_info())
    }

    pub fn self_signed_cert(&self) -> &CertificateDer<'static> {
        &self.self_signed
    }

    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// A certificate signing request for the key, naming `names`.
    pub fn csr_pem(&self, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        CertificateParams::new(names)
            .unwrap()
            .serialize_request(&self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}
