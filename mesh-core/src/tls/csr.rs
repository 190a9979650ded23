//! Certificate signing requests as the CA protocol carries them (spec 4): an
//! ECDSA P-256 key, an empty subject and exactly one URI SAN, the SPIFFE id
//! asked for. Both sides live here: the client builds one, the CA checks one.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::TlsError;
use crate::identity::Identity;

/// A checked request: its self-signature verified, its key P-256.
pub struct VerifiedCsr {
    pub(crate) public_key: rcgen::PublicKey,
    /// The URI SANs, verbatim (a well-formed request has exactly one).
    pub uris: Vec<String>,
}

impl std::fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("uris", &self.uris)
            .finish_non_exhaustive()
    }
}

impl VerifiedCsr {
    /// Parses a PEM PKCS#10 request and verifies its signature and key type.
    pub fn parse(csr_pem: &str) -> Result<Self, TlsError> {
        let bad = |what: &str| TlsError::Csr(what.to_string());
        let block = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| TlsError::Csr(format!("no CERTIFICATE REQUEST PEM block: {e}")))?;
        let (rest, csr) = X509CertificationRequest::from_der(block.as_ref())
            .map_err(|e| TlsError::Csr(format!("not a PKCS#10 request: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the request"));
        }
        // rcgen verifies the self-signature and yields the key in the form it
        // signs with.
        let params =
            rcgen::CertificateSigningRequestParams::from_der(&block).map_err(|e| match e {
                rcgen::Error::RingUnspecified => {
                    bad("the request's signature does not verify with its own key")
                }
                rcgen::Error::UnsupportedExtension => {
                    bad("the request asks for an extension other than SAN, key usage or EKU")
                }
                other => TlsError::Csr(format!("unsupported request: {other}")),
            })?;
        let spki = &csr.certification_request_info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != oid!(1.2.840.10045.2.1)
            || curve != Some(oid!(1.2.840.10045.3.1.7))
        {
            return Err(bad("the key must be ECDSA P-256"));
        }
        let mut uris = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push(uri.to_string());
                    }
                }
            }
        }
        // The issued certificate describes the key by the request's
        // algorithm, so it must be exactly P-256 with SHA-256.
        if params.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(bad(
                "the request must be signed with ECDSA P-256 and SHA-256",
            ));
        }
        Ok(VerifiedCsr {
            public_key: params.public_key,
            uris,
        })
    }

    /// The identity the request names: exactly one URI SAN, a SPIFFE id.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        match self.uris.as_slice() {
            [one] => one
                .parse()
                .map_err(|e| TlsError::Csr(format!("the URI SAN is not a SPIFFE id: {e}"))),
            [] => Err(TlsError::Csr("the request has no URI SAN".into())),
            many => Err(TlsError::Csr(format!(
                "the request has {} URI SANs; exactly one is allowed",
                many.len()
            ))),
        }
    }
}

/// A new P-256 key (PKCS#8 PEM) and a request for `identity` signed with it.
pub fn new_csr(identity: &Identity) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| TlsError::Issue(e.to_string()))?,
    )];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let pem = csr.pem().map_err(|e| TlsError::Issue(e.to_string()))?;
    Ok((pem, key.serialize_pem()))
}
