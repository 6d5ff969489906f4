//! The manager's certificate authority: it signs adopted hosts' certificates and the manager's
//! own client certificates. Manager-side code (keelctl and the tests); the host never signs.

use crate::fingerprint::{Fingerprint, FingerprintExt};
use crate::tls::{parse_cert_pem, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// Why the CA could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Cannot make a key or certificate: {0}
    #[error("Cannot make a key or certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Time {0:?} cannot be written into a certificate
    #[error("Time {0:?} cannot be written into a certificate")]
    Time(SystemTime),
    /// Cannot read random bytes from the kernel
    #[error("Cannot read random bytes from the kernel")]
    Random,
    /// The host's certificate signing request is invalid: {0}
    #[error("The host's certificate signing request is invalid: {0}")]
    Csr(rcgen::Error),
    /// The CSR is for key {actual}, not the pinned host key {expected}
    #[error("The CSR is for key {actual}, not the pinned host key {expected}")]
    WrongKey {
        expected: Fingerprint,
        actual: Fingerprint,
    },
    /// The CSR asks for name {0}, which is neither a DNS name nor an IP address
    #[error("The CSR asks for name {0}, which is neither a DNS name nor an IP address")]
    Name(String),
    /// The CA key does not belong to the CA certificate (key {key}, certificate {cert})
    #[error("The CA key does not belong to the CA certificate (key {key}, certificate {cert})")]
    KeyMismatch { key: Fingerprint, cert: Fingerprint },
    /// The CA {0} is unusable: {1}
    #[error("The CA {0} is unusable: {1}")]
    Load(&'static str, String),
    #[error(transparent)]
    Pem(#[from] TlsError),
}

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour before `now` (hosts' clocks drift), but not before 1970, to `days` days
    /// after it.
    pub fn days_from(now: SystemTime, days: u32) -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            not_before: now
                .checked_sub(hour)
                .filter(|t| *t >= UNIX_EPOCH)
                .unwrap_or(now),
            not_after: now + Duration::from_secs(86400) * days,
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CaError> {
        params.not_before = offset(self.not_before)?;
        params.not_after = offset(self.not_after)?;
        Ok(())
    }
}

fn offset(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(CaError::Time(t))
}

/// A random positive 128-bit serial number.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Parameters shared by every certificate the CA issues to a leaf.
fn leaf_params(
    dn: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
    validity: Validity,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial()?);
    validity.apply(&mut params)?;
    Ok(params)
}

/// A certificate issued with a fresh key (a client certificate, or the manager's server
/// certificate) and that key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// The certificate chain and key, as a TLS client presents them.
    pub fn tls_auth(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let cert = parse_cert_pem("client certificate", &self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| CaError::Load("client key", e.to_string()))?;
        Ok((vec![cert], key))
    }
}

/// The manager's CA.
pub struct ManagerCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ManagerCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerCa").finish_non_exhaustive()
    }
}

impl ManagerCa {
    /// A new CA named `name`, allowed to sign leaves only (path length 0).
    pub fn generate(name: &str, validity: Validity) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        validity.apply(&mut params)?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA saved as `cert_pem` and `key_pem`.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = parse_cert_pem("CA certificate", cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Load("key", e.to_string()))?;
        let key_fp = Fingerprint::of_spki(&key.subject_public_key_info());
        let cert_fp =
            Fingerprint::of_cert(&cert).map_err(|e| CaError::Load("certificate", e.to_string()))?;
        if key_fp != cert_fp {
            return Err(CaError::KeyMismatch {
                key: key_fp,
                cert: cert_fp,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| CaError::Load("certificate", e.to_string()))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate, PEM: what hosts pin.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PKCS#8 PEM, to save.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a host's CSR after checking it is for the pinned key `pin`: a server certificate
    /// for the CSR's DNS names and IP addresses. Whatever else the CSR asks (CA rights, other
    /// usages) is ignored.
    pub fn sign_host_csr(
        &self,
        csr_pem: &str,
        pin: Fingerprint,
        validity: Validity,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::Csr)?;
        let actual = Fingerprint::of_spki(&csr.public_key.subject_public_key_info());
        if actual != pin {
            return Err(CaError::WrongKey {
                expected: pin,
                actual,
            });
        }
        let mut params = leaf_params(
            csr.params.distinguished_name.clone(),
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )?;
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(_) | SanType::IpAddress(_) => {
                    params.subject_alt_names.push(san.clone())
                }
                other => return Err(CaError::Name(format!("{other:?}"))),
            }
        }
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// A new client certificate (and key) for the manager itself, named `name`.
    pub fn issue_client_cert(&self, name: &str, validity: Validity) -> Result<ClientCert, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = leaf_params(
            common_name(name),
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        Ok(ClientCert {
            cert_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A new server certificate (and key) for the manager's registration endpoint, valid for
    /// `names` (DNS names or IP addresses, as hosts reach it). Hosts pin the CA and check the name.
    pub fn issue_server_cert(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<ClientCert, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(
            common_name(names.first().map_or("keel manager", String::as_str)),
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )?;
        params.subject_alt_names = CertificateParams::new(names.to_vec())?.subject_alt_names;
        Ok(ClientCert {
            cert_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_host::TestHost;

    fn validity() -> Validity {
        Validity::days_from(SystemTime::now(), 30)
    }

    #[test]
    fn validity_window() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = Validity::days_from(now, 2);
        assert_eq!(v.not_before, now - Duration::from_secs(3600));
        assert_eq!(v.not_after, now + Duration::from_secs(2 * 86400));
        let early = Validity::days_from(UNIX_EPOCH, 1);
        assert!(matches!(
            early.apply(&mut CertificateParams::default()),
            Ok(())
        ));
        let before_epoch = Validity {
            not_before: UNIX_EPOCH - Duration::from_secs(1),
            not_after: UNIX_EPOCH,
        };
        assert!(matches!(
            before_epoch.apply(&mut CertificateParams::default()),
            Err(CaError::Time(_))
        ));
    }

    #[test]
    fn save_and_load() {
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let loaded = ManagerCa::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let other = ManagerCa::generate("other", validity()).unwrap();
        let err = ManagerCa::load(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert!(ManagerCa::load("junk", &ca.key_pem()).is_err());
        assert!(ManagerCa::load(&ca.cert_pem(), "junk").is_err());
    }

    #[test]
    fn signs_only_the_pinned_key() {
        let host = TestHost::new();
        let csr = host.csr_pem(&["h1.example", "10.1.2.3"]);
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let cert = ca
            .sign_host_csr(&csr, host.fingerprint(), validity())
            .unwrap();
        let der = parse_cert_pem("cert", &cert).unwrap();
        assert_eq!(Fingerprint::of_cert(&der).unwrap(), host.fingerprint());

        let wrong = Fingerprint::of_spki(b"someone else");
        let err = ca.sign_host_csr(&csr, wrong, validity()).unwrap_err();
        assert!(matches!(err, CaError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains(&wrong.to_string()));

        let mut tampered = csr.clone().into_bytes();
        let at = tampered.len() / 2;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            ca.sign_host_csr(&tampered, host.fingerprint(), validity()),
            Err(CaError::Csr(_))
        ));
    }

    #[test]
    fn refuses_odd_names() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI("https://x".try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let pin = Fingerprint::of_spki(&key.subject_public_key_info());
        let err = ca.sign_host_csr(&csr, pin, validity()).unwrap_err();
        assert!(matches!(err, CaError::Name(_)), "{err}");
    }

    #[test]
    fn client_certificates_load_into_tls() {
        let ca = ManagerCa::generate("manager", validity()).unwrap();
        let client = ca.issue_client_cert("admin", validity()).unwrap();
        let (chain, _key) = client.tls_auth().unwrap();
        assert_eq!(chain.len(), 1);
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));
    }
}
