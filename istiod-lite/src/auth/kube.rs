//! Kubernetes mode's credentials: projected service-account tokens (audience
//! `istio-ca`) checked with a TokenReview. The reviewed user names the
//! caller's identity; the node comes from the token's bound-pod claims.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use mesh_core::Identity;
use tokio::time::Instant;

use super::{AuthError, Authenticate, Caller, bearer_token};
use crate::model::{NamespacedName, Store};
use crate::registry::Registry;

pub const AUDIENCE: &str = "istio-ca";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// How long a positive review is trusted, and how many are kept.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_SIZE: usize = 4096;
/// A slow API server fails the call rather than holding it.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KubeTokenReview {
    client: kube::Client,
    trust_domain: String,
    registry: Registry,
    cache: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl std::fmt::Debug for KubeTokenReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print cached tokens.
        f.debug_struct("KubeTokenReview")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl KubeTokenReview {
    pub fn new(client: kube::Client, trust_domain: impl Into<String>, registry: Registry) -> Self {
        KubeTokenReview {
            client,
            trust_domain: trust_domain.into(),
            registry,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, token: &str) -> Option<Caller> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (caller, at) = cache.get(token)?;
        (at.elapsed() < CACHE_TTL).then(|| caller.clone())
    }

    fn remember(&self, token: &str, caller: &Caller) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if cache.len() >= CACHE_SIZE {
            // Still full of live entries: start over rather than grow.
            cache.clear();
        }
        cache.insert(token.to_string(), (caller.clone(), Instant::now()));
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some(caller) = self.cached(token) {
            return Ok(caller);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!("TokenReview took over {REVIEW_TIMEOUT:?}"))
                })?
                .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer
            .status
            .ok_or_else(|| AuthError::Unavailable("TokenReview answer without status".into()))?;
        let caller = caller_from_review(&status, &self.trust_domain, &self.registry.snapshot())?;
        self.remember(token, &caller);
        Ok(caller)
    }
}

impl Authenticate for KubeTokenReview {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let token = bearer_token(metadata)?;
            self.review(token).await
        })
    }
}

/// The caller a TokenReview status describes: its service account as an
/// identity, its node from the node-name claim or else from the bound pod.
pub fn caller_from_review(
    status: &TokenReviewStatus,
    trust_domain: &str,
    store: &Store,
) -> Result<Caller, AuthError> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("not authenticated");
        return Err(AuthError::Invalid(format!("TokenReview: {why}")));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.is_empty()
        && !audiences.iter().any(|a| a == AUDIENCE)
    {
        return Err(AuthError::Invalid(format!(
            "the token is not for the audience {AUDIENCE:?}"
        )));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| AuthError::Invalid("TokenReview names no user".into()))?;
    let username = user.username.as_deref().unwrap_or("");
    let (namespace, service_account) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| AuthError::Invalid(format!("{username:?} is not a service account")))?;
    let identity = Identity::new(trust_domain, namespace, service_account)
        .map_err(|e| AuthError::Invalid(format!("service account {username:?}: {e}")))?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|values| values.first())
            .filter(|v| !v.is_empty())
    };
    let node = match extra(NODE_NAME_EXTRA) {
        Some(node) => Some(node.clone()),
        None => extra(POD_NAME_EXTRA).and_then(|pod_name| {
            let pod = store
                .pods
                .get(&NamespacedName::new(namespace, pod_name.as_str()))?;
            // A recreated pod of the same name is not the one the token was bound to.
            if let Some(uid) = extra(POD_UID_EXTRA)
                && pod.metadata.uid.as_ref().is_some_and(|u| u != uid)
            {
                return None;
            }
            pod.spec.as_ref()?.node_name.clone()
        }),
    };
    Ok(Caller {
        description: format!("{namespace}/{service_account}"),
        node,
        identity: Some(identity),
    })
}

#[cfg(test)]
mod tests;
