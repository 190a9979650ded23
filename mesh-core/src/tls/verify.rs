//! SPIFFE peer verification for HBONE. The chain is verified against the
//! current trust roots (which rotate), then the identity is checked: on the
//! client side the server must be one of the expected identities; on the
//! server side the client must share our trust domain.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::{TlsError, spiffe_identities};
use crate::identity::Identity;

/// The current set of trust roots; swapped atomically when the CA rotates them.
#[derive(Debug)]
pub struct TrustBundle {
    anchors: ArcSwap<Vec<TrustAnchor<'static>>>,
}

impl TrustBundle {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        Ok(TrustBundle {
            anchors: ArcSwap::from_pointee(anchors(&roots)?),
        })
    }

    pub fn replace(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        self.anchors.store(Arc::new(anchors(&roots)?));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.anchors.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn anchors(roots: &[CertificateDer<'static>]) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| TlsError::BadCertificate(format!("trust root: {e}")))
        })
        .collect()
}

/// Verifies a presented chain against the bundle for one key usage.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &TrustBundle,
    usage: webpki::KeyUsage,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verify_leaf(leaf, intermediates, roots, usage, UnixTime::now())
}

fn verify_leaf(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &TrustBundle,
    usage: webpki::KeyUsage,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
    let anchors = roots.anchors.load();
    ee.verify_for_usage(
        super::provider().signature_verification_algorithms.all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(pki_error)
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct IdentityMismatch(String);

fn identity_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        IdentityMismatch(msg),
    ))))
}

fn signature_schemes() -> Vec<SignatureScheme> {
    super::provider()
        .signature_verification_algorithms
        .supported_schemes()
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &super::provider().signature_verification_algorithms,
    )
}

/// Client side: the server must present one of the identities we expect for
/// the destination.
#[derive(Debug)]
pub struct ExpectedServer {
    roots: Arc<TrustBundle>,
    expected: Vec<Identity>,
}

impl ExpectedServer {
    pub fn new(roots: Arc<TrustBundle>, expected: Vec<Identity>) -> Self {
        ExpectedServer { roots, expected }
    }
}

impl ServerCertVerifier for ExpectedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_leaf(
            end_entity,
            intermediates,
            &self.roots,
            webpki::KeyUsage::server_auth(),
            now,
        )?;
        let presented = spiffe_identities(end_entity);
        if presented.iter().any(|id| self.expected.contains(id)) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(identity_error(format!(
            "server identity {} is not one of the expected {}",
            list(&presented),
            list(&self.expected)
        )))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

/// Server side: a client certificate is required, must chain to our roots and
/// carry a SPIFFE identity of our trust domain.
#[derive(Debug)]
pub struct SameTrustDomainClient {
    roots: Arc<TrustBundle>,
    trust_domain: String,
}

impl SameTrustDomainClient {
    pub fn new(roots: Arc<TrustBundle>, trust_domain: impl Into<String>) -> Self {
        SameTrustDomainClient {
            roots,
            trust_domain: trust_domain.into(),
        }
    }
}

impl ClientCertVerifier for SameTrustDomainClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_leaf(
            end_entity,
            intermediates,
            &self.roots,
            webpki::KeyUsage::client_auth(),
            now,
        )?;
        let presented = spiffe_identities(end_entity);
        if presented
            .iter()
            .any(|id| id.trust_domain() == self.trust_domain)
        {
            return Ok(ClientCertVerified::assertion());
        }
        Err(identity_error(format!(
            "client identity {} is not in trust domain {:?}",
            list(&presented),
            self.trust_domain
        )))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

fn list(ids: &[Identity]) -> String {
    if ids.is_empty() {
        return "(none)".into();
    }
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
