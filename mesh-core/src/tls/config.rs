//! rustls configurations for HBONE (spec 2.1): TLS 1.3 only, AES-GCM suites,
//! ALPN `h2`, client certificates required, no SNI and no resumption.

use std::sync::{Arc, OnceLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::verify::{ExpectedServer, SameTrustDomainClient};
use super::{CertStore, TrustBundle};
use crate::identity::Identity;

pub const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider: aws-lc-rs, restricted to what HBONE allows.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs as p;
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    p::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    p::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                kx_groups: vec![
                    p::kx_group::X25519,
                    p::kx_group::SECP256R1,
                    p::kx_group::SECP384R1,
                    p::kx_group::X25519MLKEM768,
                ],
                ..p::default_provider()
            })
        })
        .clone()
}

/// Presents the current certificate of one identity from the store.
#[derive(Debug)]
pub struct IdentityResolver {
    store: Arc<CertStore>,
    identity: Identity,
}

impl IdentityResolver {
    pub fn new(store: Arc<CertStore>, identity: Identity) -> Self {
        IdentityResolver { store, identity }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let cert = self.store.current(&self.identity)?;
        if cert.is_expired(std::time::SystemTime::now()) {
            tracing::warn!(identity = %self.identity, "certificate expired and not renewed; refusing handshakes");
            return None;
        }
        Some(cert.certified.clone())
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The HBONE server side for a local workload identity.
pub fn server_config(store: Arc<CertStore>, local: Identity) -> Arc<ServerConfig> {
    let verifier = Arc::new(SameTrustDomainClient::new(
        store.roots().clone(),
        local.trust_domain(),
    ));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(IdentityResolver::new(store, local)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.max_fragment_size = None;
    Arc::new(config)
}

/// The HBONE client side: we present `source`, and the server must be one of `expected`.
pub fn client_config(
    store: Arc<CertStore>,
    roots: Arc<TrustBundle>,
    source: Identity,
    expected: Vec<Identity>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer::new(roots, expected)))
        .with_client_cert_resolver(Arc::new(IdentityResolver::new(store, source)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
