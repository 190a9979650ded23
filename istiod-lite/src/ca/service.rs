//! The gRPC service: authenticate, check against the current registry
//! snapshot, sign, count.

use std::sync::Arc;

use mesh_api::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_core::tls::CertificateAuthority;

use super::{CaMetrics, CaPolicy, Refusal, RefusalReason, check_request};
use crate::auth::{AuthError, Authenticate};
use crate::registry::Registry;

#[derive(Clone, Debug)]
pub struct CaServer {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticate>,
    registry: Registry,
    policy: Arc<CaPolicy>,
    metrics: CaMetrics,
}

impl CaServer {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticate>,
        registry: Registry,
        policy: CaPolicy,
        metrics: CaMetrics,
    ) -> Self {
        CaServer {
            ca,
            auth,
            registry,
            policy: Arc::new(policy),
            metrics,
        }
    }

    /// The tonic service, to add to a router.
    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    async fn create(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let caller = match self.auth.authenticate(request.metadata()).await {
            Ok(caller) => caller,
            Err(e) => {
                self.metrics.refused(match e {
                    AuthError::Unavailable(_) => RefusalReason::AuthUnavailable,
                    _ => RefusalReason::Unauthenticated,
                });
                tracing::warn!(error = %e, "certificate request refused: not authenticated");
                return Err(e.into());
            }
        };
        let store = self.registry.snapshot();
        let approved = check_request(request.get_ref(), &caller, &store, &self.policy)
            .inspect_err(|refusal| {
                self.metrics.refused(refusal.reason);
                tracing::warn!(
                    caller = %caller.description,
                    reason = refusal.reason.as_str(),
                    error = %refusal.message,
                    "certificate request refused"
                );
            })?;
        let leaf = self
            .ca
            .sign_verified_csr(&approved.csr, &approved.identity, approved.ttl)
            .map_err(|e| {
                self.metrics.refused(RefusalReason::SigningFailed);
                tracing::error!(identity = %approved.identity, error = %e, "signing failed");
                Refusal {
                    reason: RefusalReason::SigningFailed,
                    message: format!("could not sign for {}: {e}", approved.identity),
                }
            })?;
        self.metrics.signed.inc();
        tracing::info!(
            caller = %caller.description,
            identity = %approved.identity,
            ttl = ?approved.ttl,
            "certificate signed"
        );
        Ok(IstioCertificateResponse {
            cert_chain: vec![leaf, self.ca.root_pem().to_string()],
        })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.create(request).await.map(tonic::Response::new)
    }
}
