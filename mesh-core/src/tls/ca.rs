//! A certificate authority that issues short-lived workload certificates:
//! ECDSA P-256 keys, an empty subject, one URI SAN with the SPIFFE id, and both
//! serverAuth and clientAuth EKUs (the same leaf is used on both HBONE sides).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{TlsError, WorkloadCertificate};
use crate::identity::Identity;

/// Leaves are back-dated a little so a peer whose clock lags still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub struct CertificateAuthority {
    issuer: rcgen::Certificate,
    key: KeyPair,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed root.
    pub fn generate(organization: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, organization);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let issuer = params.self_signed(&key).map_err(rcgen_err)?;
        let root_der = issuer.der().clone();
        let root_pem = issuer.pem();
        Ok(CertificateAuthority {
            issuer,
            key,
            root_der,
            root_pem,
        })
    }

    /// Loads an existing root (certificate and PKCS#8 key, PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| TlsError::BadCertificate(format!("CA certificate: {e}")))?;
        let root_der = super::cert::parse_certs(cert_pem.as_bytes(), "CA certificate")?.remove(0);
        // Re-signing the parsed parameters gives an issuer with the root's name
        // and key; leaves still chain to the original root certificate.
        let issuer = params.self_signed(&key).map_err(rcgen_err)?;
        Ok(CertificateAuthority {
            issuer,
            key,
            root_der,
            root_pem: cert_pem.to_string(),
        })
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for `identity`, valid from now (minus clock skew)
    /// for `ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, TlsError> {
        self.issue_between(
            identity,
            SystemTime::now() - CLOCK_SKEW,
            SystemTime::now() + ttl,
        )
    }

    /// Issues a certificate with an explicit validity window (tests use this
    /// for expired or not-yet-valid certificates).
    pub fn issue_between(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, TlsError> {
        let (cert, key) = self.sign(identity, not_before, not_after)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCertificate::from_der(
            vec![cert.der().clone()],
            key_der,
            vec![self.root_der.clone()],
        )
    }

    /// Issues a certificate and returns it and its PKCS#8 key as PEM, for
    /// writing to files.
    pub fn issue_pem_between(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String), TlsError> {
        let (cert, key) = self.sign(identity, not_before, not_after)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn sign(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(identity.to_string().try_into().map_err(
                |e: rcgen::Error| TlsError::BadCertificate(e.to_string()),
            )?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(rcgen_err)?;
        Ok((cert, key))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive integer in DER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn rcgen_err(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::LeafInfo;

    #[test]
    fn issues_a_spiffe_leaf_with_the_requested_lifetime() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(cert.identity, id);
        let info = LeafInfo::parse(cert.leaf()).unwrap();
        assert_eq!(info.identities, vec![id]);
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 61));
        assert_eq!(cert.roots, vec![ca.root_der().clone()]);
    }

    #[test]
    fn a_reloaded_root_still_signs_verifiable_leaves() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let again = CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.root_der(), ca.root_der());
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = again.issue(&id, Duration::from_secs(60)).unwrap();
        crate::tls::verify::verify_chain(
            &cert.certified.cert,
            &crate::tls::TrustBundle::new(vec![ca.root_der().clone()]).unwrap(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
    }
}
