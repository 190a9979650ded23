//! Certificates and TLS for HBONE: a CA for short-lived workload certificates,
//! a rotating per-identity store, SPIFFE peer verification and the rustls
//! configurations of spec 2.1.

mod ca;
mod ca_client;
mod cert;
mod config;
mod csr;
mod store;
pub mod verify;

pub use ca::CertificateAuthority;
pub use ca_client::{CaClientError, IMPERSONATED_IDENTITY, IstioCaClient};
pub use cert::{LeafInfo, WorkloadCertificate, parse_certs, spiffe_identities};
pub use config::{ALPN_H2, IdentityResolver, client_config, provider, server_config};
pub use csr::{VerifiedCsr, new_csr};
pub use store::{CertStore, CertificateSource, LocalCa, StaticCertificates};
pub use verify::TrustBundle;

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the leaf certificate has no SPIFFE identity in its URI SANs")]
    NoSpiffeIdentity,
    #[error("cannot parse {0}: {1}")]
    Pem(&'static str, String),
    #[error("bad private key: {0}")]
    BadKey(String),
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    #[error("no certificate is configured for {0}")]
    NoCertificateFor(Identity),
    #[error("bad certificate signing request: {0}")]
    Csr(String),
    #[error("the signing request names {found} but the certificate is for {requested}")]
    CsrIdentity {
        requested: Box<Identity>,
        found: String,
    },
    #[error(transparent)]
    CaClient(Box<CaClientError>),
    #[error("asked for a certificate for {asked} but got one for {got}")]
    WrongIdentity {
        asked: Box<Identity>,
        got: Box<Identity>,
    },
}

/// The first SPIFFE identity of a TLS peer's leaf certificate: the
/// connection's source principal.
pub fn peer_identity(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Option<Identity> {
    spiffe_identities(certs?.first()?).into_iter().next()
}
