//! A workload's certificate: its chain, private key, validity and identity,
//! loaded from PEM or issued by a CA.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::TlsError;
use crate::identity::Identity;

/// A certificate ready to be used in handshakes.
#[derive(Debug)]
pub struct WorkloadCertificate {
    pub identity: Identity,
    pub certified: Arc<CertifiedKey>,
    /// The trust roots that came with this certificate (the last element of a
    /// CA response), used to verify peers.
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    /// Builds from DER parts; the identity is read from the leaf's URI SAN.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let info = LeafInfo::parse(leaf)?;
        let identity = info
            .identities
            .into_iter()
            .next()
            .ok_or(TlsError::NoSpiffeIdentity)?;
        let signing = super::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey(e.to_string()))?;
        Ok(WorkloadCertificate {
            identity,
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Loads a certificate chain, its key and the roots from PEM text.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = parse_certs(chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Pem("private key", e.to_string()))?;
        let roots = parse_certs(roots_pem, "roots")?;
        Self::from_der(chain, key, roots)
    }

    /// When this certificate should be replaced: at half its lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }
}

/// What the project reads from a leaf certificate.
#[derive(Debug)]
pub struct LeafInfo {
    /// Every parsable SPIFFE id in the URI SANs, in order; others are ignored.
    pub identities: Vec<Identity>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

impl LeafInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let mut identities = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && let Ok(id) = uri.parse::<Identity>()
                {
                    identities.push(id);
                }
            }
        }
        let ts = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        Ok(LeafInfo {
            identities,
            not_before: ts(cert.validity().not_before),
            not_after: ts(cert.validity().not_after),
            serial: cert.raw_serial_as_string(),
        })
    }
}

/// The SPIFFE identities of a leaf certificate (empty if it has none or cannot be parsed).
pub fn spiffe_identities(der: &CertificateDer<'_>) -> Vec<Identity> {
    LeafInfo::parse(der)
        .map(|i| i.identities)
        .unwrap_or_default()
}

pub fn parse_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(what, e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(what, "no CERTIFICATE block".into()));
    }
    Ok(certs)
}
