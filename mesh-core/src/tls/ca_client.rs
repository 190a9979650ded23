//! The client of the CA service (spec 4): a fresh P-256 key and CSR per
//! fetch, `CreateCertificate` over the control-plane channel, and the answer
//! checked before it is used: the leaf must name the identity asked for, and
//! it must chain to the roots the CA sent with it (those roots then verify
//! peers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::Channel;

use super::{CertificateSource, TlsError, TrustBundle, WorkloadCertificate, new_csr, parse_certs};
use crate::control::{ControlError, ControlPlane};
use crate::identity::Identity;

/// Metadata field naming the identity a node proxy asks for on behalf of a
/// workload.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// How long one `CreateCertificate` call may take before it counts as failed
/// (the certificate store then retries with back-off).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("CA {address}: {source}")]
    Control {
        address: String,
        source: ControlError,
    },
    #[error("CA {address} refused the certificate for {identity}: {status}")]
    Call {
        address: String,
        identity: Identity,
        status: Box<tonic::Status>,
    },
    #[error("CA {address} did not answer within {timeout:?} for {identity}")]
    Timeout {
        address: String,
        identity: Identity,
        timeout: Duration,
    },
    #[error("CA {address} sent an unusable answer for {identity}: {reason}")]
    Response {
        address: String,
        identity: Identity,
        reason: String,
    },
}

impl From<CaClientError> for TlsError {
    fn from(e: CaClientError) -> Self {
        TlsError::CaClient(Box::new(e))
    }
}

/// Fetches workload certificates from an Istio-compatible CA.
#[derive(Debug)]
pub struct IstioCaClient {
    control: ControlPlane,
    /// Ask for identities other than our own via `ImpersonatedIdentity`
    /// (a node proxy serving many workloads).
    impersonate: bool,
    ttl: Duration,
    /// Created on first use (it needs a runtime) and kept: it reconnects by itself.
    channel: Mutex<Option<Channel>>,
    /// Peer-verification roots to keep equal to `extra` plus the roots of the
    /// latest answer, so a CA root rotation reaches handshakes.
    peer_roots: Option<(Arc<TrustBundle>, Vec<CertificateDer<'static>>)>,
}

impl IstioCaClient {
    pub fn new(control: ControlPlane, impersonate: bool, ttl: Duration) -> Self {
        IstioCaClient {
            control,
            impersonate,
            ttl,
            channel: Mutex::new(None),
            peer_roots: None,
        }
    }

    /// Keeps `bundle` at `extra` plus the roots of every answer.
    pub fn updating_trust_bundle(
        mut self,
        bundle: Arc<TrustBundle>,
        extra: Vec<CertificateDer<'static>>,
    ) -> Self {
        self.peer_roots = Some((bundle, extra));
        self
    }

    fn channel(&self) -> Result<Channel, CaClientError> {
        let mut slot = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = slot.as_ref() {
            return Ok(channel.clone());
        }
        let channel = self
            .control
            .channel()
            .map_err(|source| self.control_err(source))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    fn control_err(&self, source: ControlError) -> CaClientError {
        CaClientError::Control {
            address: self.control.address.clone(),
            source,
        }
    }

    /// The request for `identity`: a CSR and, when impersonating, the
    /// identity in the metadata. Returns the request and the new key (PEM).
    pub fn request(
        &self,
        identity: &Identity,
    ) -> Result<(IstioCertificateRequest, String), TlsError> {
        let (csr, key) = new_csr(identity)?;
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let request = IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        };
        Ok((request, key))
    }

    async fn fetch_one(&self, identity: &Identity) -> Result<WorkloadCertificate, TlsError> {
        let (body, key_pem) = self.request(identity)?;
        let mut request = tonic::Request::new(body);
        self.control
            .authorize(&mut request)
            .map_err(|source| self.control_err(source))?;
        let mut client = IstioCertificateServiceClient::new(self.channel()?);
        let response = tokio::time::timeout(CALL_TIMEOUT, client.create_certificate(request))
            .await
            .map_err(|_| CaClientError::Timeout {
                address: self.control.address.clone(),
                identity: identity.clone(),
                timeout: CALL_TIMEOUT,
            })?
            .map_err(|status| CaClientError::Call {
                address: self.control.address.clone(),
                identity: identity.clone(),
                status: Box::new(status),
            })?
            .into_inner();
        let unusable = |reason: String| CaClientError::Response {
            address: self.control.address.clone(),
            identity: identity.clone(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::BadKey(e.to_string()))?;
        let cert = certificate_from_chain(&response.cert_chain, key)
            .map_err(|e| unusable(e.to_string()))?;
        if &cert.identity != identity {
            return Err(TlsError::WrongIdentity {
                asked: Box::new(identity.clone()),
                got: Box::new(cert.identity.clone()),
            });
        }
        if let Some((bundle, extra)) = &self.peer_roots {
            let mut roots = extra.clone();
            roots.extend(cert.roots.iter().cloned());
            bundle.replace(roots)?;
        }
        Ok(cert)
    }
}

/// Builds a certificate from a CA's `cert_chain` (leaf, intermediates, then
/// the root(s) as the last element, possibly several PEM blocks) and checks
/// that the leaf chains to those roots.
pub fn certificate_from_chain(
    chain: &[String],
    key: PrivateKeyDer<'static>,
) -> Result<WorkloadCertificate, TlsError> {
    let [leaf_and_intermediates @ .., roots_pem] = chain else {
        return Err(TlsError::EmptyChain);
    };
    if leaf_and_intermediates.is_empty() {
        return Err(TlsError::BadCertificate(
            "the chain has one element; a leaf and the root(s) are needed".into(),
        ));
    }
    let mut certs: Vec<CertificateDer<'static>> = Vec::new();
    for pem in leaf_and_intermediates {
        certs.extend(parse_certs(pem.as_bytes(), "certificate chain")?);
    }
    let roots = parse_certs(roots_pem.as_bytes(), "roots")?;
    super::verify::verify_chain(
        &certs,
        &TrustBundle::new(roots.clone())?,
        webpki::KeyUsage::client_auth(),
    )
    .map_err(|e| {
        TlsError::BadCertificate(format!("the leaf does not chain to the CA's roots: {e}"))
    })?;
    let cert = WorkloadCertificate::from_der(certs, key, roots)?;
    cert.certified.keys_match().map_err(|e| {
        TlsError::BadCertificate(format!("the leaf is not for the key of our request: {e}"))
    })?;
    Ok(cert)
}

impl CertificateSource for IstioCaClient {
    fn fetch(&self, identity: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
        let identity = identity.clone();
        Box::pin(async move { self.fetch_one(&identity).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertificateAuthority;

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_chain_is_split_into_leaf_and_roots_and_checked() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let other = CertificateAuthority::generate("other").unwrap();
        let who: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let (csr, key_pem) = new_csr(&who).unwrap();
        let leaf = ca.sign_csr(&csr, &who, Duration::from_secs(600)).unwrap();

        let both_roots = format!("{}{}", other.root_pem(), ca.root_pem());
        let cert = certificate_from_chain(&[leaf.clone(), both_roots], key(&key_pem)).unwrap();
        assert_eq!(cert.identity, who);
        assert_eq!(cert.roots.len(), 2);

        let err = certificate_from_chain(std::slice::from_ref(&leaf), key(&key_pem)).unwrap_err();
        assert!(err.to_string().contains("one element"), "{err}");
        let err = certificate_from_chain(&[leaf.clone(), other.root_pem().into()], key(&key_pem))
            .unwrap_err();
        assert!(err.to_string().contains("chain"), "{err}");
        let (_, stranger) = new_csr(&who).unwrap();
        let err =
            certificate_from_chain(&[leaf, ca.root_pem().into()], key(&stranger)).unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
    }

    #[test]
    fn impersonation_puts_the_identity_in_the_request_metadata() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let control = ControlPlane {
            address: "https://localhost:15012".into(),
            server_name: None,
            roots: vec![ca.root_der().clone()],
            token: None,
            cluster_id: String::new(),
            headers: vec![],
            mark: None,
        };
        let who: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let client = IstioCaClient::new(control.clone(), true, Duration::from_secs(3600));
        let (request, _) = client.request(&who).unwrap();
        assert_eq!(request.validity_duration, 3600);
        let field = &request.metadata.unwrap().fields[IMPERSONATED_IDENTITY];
        assert_eq!(
            field.kind,
            Some(prost_types::value::Kind::StringValue(who.to_string()))
        );
        let plain = IstioCaClient::new(control, false, Duration::from_secs(60));
        assert!(plain.request(&who).unwrap().0.metadata.is_none());
    }
}
