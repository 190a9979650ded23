//! A certificate authority that issues short-lived workload certificates:
//! ECDSA P-256 keys, an empty subject, one URI SAN with the SPIFFE id, and both
//! serverAuth and clientAuth EKUs (the same leaf is used on both HBONE sides).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::csr::VerifiedCsr;
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

    /// Signs a PKCS#10 request for `identity`, valid from now (minus clock
    /// skew) for `ttl`, and returns the leaf as PEM. The request's signature
    /// is verified, its key must be P-256 and its one URI SAN must be
    /// `identity`: a request naming anyone else is refused.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, TlsError> {
        let csr = VerifiedCsr::parse(csr_pem)?;
        self.sign_verified_csr(&csr, identity, ttl)
    }

    /// Signs an already parsed request (the CA service parses once to learn
    /// the identity it names).
    pub fn sign_verified_csr(
        &self,
        csr: &VerifiedCsr,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, TlsError> {
        match csr.identity() {
            Ok(named) if &named == identity => {}
            _ => {
                return Err(TlsError::CsrIdentity {
                    requested: Box::new(identity.clone()),
                    found: csr.uris.join(", "),
                });
            }
        }
        let now = SystemTime::now();
        let params = leaf_params(identity, now - CLOCK_SKEW, now + ttl)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(rcgen_err)?;
        Ok(cert.pem())
    }

    /// A server certificate for the control plane's own TLS port: DNS SANs,
    /// serverAuth. Returns the chain (leaf, root) and the PKCS#8 key as PEM.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(String, String), TlsError> {
        if dns_names.is_empty() {
            return Err(TlsError::Issue(
                "a server certificate needs a DNS name".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::new(dns_names.to_vec())
            .map_err(|e| TlsError::Issue(format!("server names {dns_names:?}: {e}")))?;
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(rcgen_err)?;
        Ok((
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        ))
    }

    fn sign(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let params = leaf_params(identity, not_before, not_after)?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(rcgen_err)?;
        Ok((cert, key))
    }
}

/// The shape of every workload leaf (spec 2.1).
fn leaf_params(
    identity: &Identity,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, TlsError> {
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
    Ok(params)
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
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

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

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn a_csr_is_signed_with_its_own_key_and_the_leaf_shape() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let (csr, key) = crate::tls::new_csr(&who).unwrap();
        let leaf = ca.sign_csr(&csr, &who, Duration::from_secs(600)).unwrap();
        let cert = WorkloadCertificate::from_pem(
            leaf.as_bytes(),
            key.as_bytes(),
            ca.root_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(cert.identity, who);
        // The leaf carries the request's public key, so the client's key signs for it.
        assert_eq!(
            cert.certified.keys_match().map_err(|e| e.to_string()),
            Ok(())
        );
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(life >= Duration::from_secs(600) && life <= Duration::from_secs(661));
        crate::tls::verify::verify_chain(
            &cert.certified.cert,
            &crate::tls::TrustBundle::new(vec![ca.root_der().clone()]).unwrap(),
            webpki::KeyUsage::server_auth(),
        )
        .unwrap();
    }

    #[test]
    fn a_csr_naming_another_identity_is_refused() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let (csr, _) = crate::tls::new_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
        let err = ca
            .sign_csr(
                &csr,
                &id("spiffe://cluster.local/ns/a/sa/other"),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, TlsError::CsrIdentity { .. }), "{err}");
        assert!(err.to_string().contains("sa/other"), "{err}");
    }

    #[test]
    fn a_tampered_csr_fails_its_signature_check() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let (csr, _) = crate::tls::new_csr(&who).unwrap();
        // Ten base64 characters from the end lie inside the signature value.
        let body_end = csr.find("-----END").unwrap();
        let at = csr[..body_end]
            .char_indices()
            .rev()
            .filter(|(_, c)| c.is_ascii_alphanumeric())
            .nth(10)
            .unwrap()
            .0;
        let mut tampered = csr.clone().into_bytes();
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let err = ca
            .sign_csr(&tampered, &who, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn a_csr_with_a_p384_key_or_garbage_is_refused() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(who.to_string().try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let err = ca
            .sign_csr(&csr, &who, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
        assert!(matches!(
            ca.sign_csr("not a csr", &who, Duration::from_secs(60)),
            Err(TlsError::Csr(_))
        ));
    }

    #[test]
    fn a_server_certificate_has_dns_names_and_the_root_appended() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let (chain, _key) = ca
            .issue_server(
                &["istiod.istio-system.svc".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let certs = crate::tls::parse_certs(chain.as_bytes(), "chain").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(&certs[1], ca.root_der());
        let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(matches!(
            san.value.general_names.as_slice(),
            [GeneralName::DNSName("istiod.istio-system.svc")]
        ));
        assert!(ca.issue_server(&[], Duration::from_secs(1)).is_err());
    }
}
