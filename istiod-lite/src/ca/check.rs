//! Whether a certificate request may be signed, and for whom: the identity
//! asked for (the `ImpersonatedIdentity` metadata field, else the CSR's URI
//! SAN), who may ask for it, and the lifetime. No I/O: the service and the
//! fuzz target call this directly.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_core::Identity;
use mesh_core::tls::VerifiedCsr;

use crate::auth::Caller;
use crate::model::Store;

/// The metadata field a node proxy names the workload identity in.
pub use mesh_core::tls::IMPERSONATED_IDENTITY;

/// What the CA allows.
#[derive(Clone, Debug)]
pub struct CaPolicy {
    pub trust_domain: String,
    /// Service accounts (namespace, name) whose callers may ask for the
    /// identities of pods on their node: the node proxies.
    pub trusted_node_accounts: Vec<(String, String)>,
    /// Lifetime when the request asks for none.
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for CaPolicy {
    fn default() -> Self {
        CaPolicy {
            trust_domain: "cluster.local".into(),
            trusted_node_accounts: vec![("istio-system".into(), "ztunnel".into())],
            default_ttl: Duration::from_secs(24 * 3600),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A request that may be signed.
#[derive(Debug)]
pub struct Approved {
    pub identity: Identity,
    pub csr: VerifiedCsr,
    pub ttl: Duration,
}

/// Why a request is refused; `reason` labels the refusal counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    Unauthenticated,
    /// The credential could not be checked (the API server is down).
    AuthUnavailable,
    BadRequest,
    BadCsr,
    WrongTrustDomain,
    /// A caller that may not impersonate asked for someone else.
    NotOwnIdentity,
    /// A node proxy asked for an identity with no pod on its node.
    NotOnNode,
    SigningFailed,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unauthenticated => "unauthenticated",
            RefusalReason::AuthUnavailable => "auth_unavailable",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::BadCsr => "bad_csr",
            RefusalReason::WrongTrustDomain => "wrong_trust_domain",
            RefusalReason::NotOwnIdentity => "not_own_identity",
            RefusalReason::NotOnNode => "not_on_node",
            RefusalReason::SigningFailed => "signing_failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl Refusal {
    fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        match r.reason {
            RefusalReason::Unauthenticated => tonic::Status::unauthenticated(r.message),
            RefusalReason::AuthUnavailable => tonic::Status::unavailable(r.message),
            RefusalReason::BadRequest | RefusalReason::BadCsr => {
                tonic::Status::invalid_argument(r.message)
            }
            RefusalReason::SigningFailed => tonic::Status::internal(r.message),
            RefusalReason::WrongTrustDomain
            | RefusalReason::NotOwnIdentity
            | RefusalReason::NotOnNode => tonic::Status::permission_denied(r.message),
        }
    }
}

/// Decides a request from `caller` against the pods in `store`.
pub fn check_request(
    request: &IstioCertificateRequest,
    caller: &Caller,
    store: &Store,
    policy: &CaPolicy,
) -> Result<Approved, Refusal> {
    let csr = VerifiedCsr::parse(&request.csr)
        .map_err(|e| Refusal::new(RefusalReason::BadCsr, e.to_string()))?;
    let identity = match impersonated(request)? {
        Some(named) => named,
        None => csr
            .identity()
            .map_err(|e| Refusal::new(RefusalReason::BadCsr, e.to_string()))?,
    };
    if identity.trust_domain() != policy.trust_domain {
        return Err(Refusal::new(
            RefusalReason::WrongTrustDomain,
            format!(
                "{identity} is not in this CA's trust domain {:?}",
                policy.trust_domain
            ),
        ));
    }
    authorize(caller, &identity, store, policy)?;
    match csr.identity() {
        Ok(named) if named == identity => {}
        _ => {
            return Err(Refusal::new(
                RefusalReason::BadCsr,
                format!(
                    "the CSR's URI SANs [{}] are not exactly {identity}",
                    csr.uris.join(", ")
                ),
            ));
        }
    }
    Ok(Approved {
        identity,
        csr,
        ttl: lifetime(request.validity_duration, policy),
    })
}

/// The `ImpersonatedIdentity` metadata field, if present.
fn impersonated(request: &IstioCertificateRequest) -> Result<Option<Identity>, Refusal> {
    use prost_types::value::Kind;
    let Some(value) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => s.parse().map(Some).map_err(|e| {
            Refusal::new(
                RefusalReason::BadRequest,
                format!("metadata.{IMPERSONATED_IDENTITY}: {e}"),
            )
        }),
        _ => Err(Refusal::new(
            RefusalReason::BadRequest,
            format!("metadata.{IMPERSONATED_IDENTITY} must be a string"),
        )),
    }
}

/// The impersonation rule: a caller gets its own identity; a node proxy (a
/// node token, or a trusted node account) gets identities that have a pod on
/// its node; nobody gets anything else.
fn authorize(
    caller: &Caller,
    identity: &Identity,
    store: &Store,
    policy: &CaPolicy,
) -> Result<(), Refusal> {
    if caller.identity.as_ref() == Some(identity) {
        return Ok(());
    }
    let node_proxy = match &caller.identity {
        None => caller.node.is_some(),
        Some(own) => {
            own.trust_domain() == policy.trust_domain
                && policy
                    .trusted_node_accounts
                    .iter()
                    .any(|(ns, sa)| own.namespace() == ns && own.service_account() == sa)
        }
    };
    if !node_proxy {
        return Err(Refusal::new(
            RefusalReason::NotOwnIdentity,
            format!(
                "{} may only obtain its own identity, not {identity}",
                caller.description
            ),
        ));
    }
    let Some(node) = &caller.node else {
        return Err(Refusal::new(
            RefusalReason::NotOnNode,
            format!(
                "{} is a node proxy but its node is unknown, so it may not obtain {identity}",
                caller.description
            ),
        ));
    };
    if !has_pod_on_node(store, identity, node, &policy.trust_domain) {
        return Err(Refusal::new(
            RefusalReason::NotOnNode,
            format!(
                "{identity} has no pod on node {node:?} of the caller {}",
                caller.description
            ),
        ));
    }
    Ok(())
}

/// Whether a running (or pending) pod on `node` has `identity`.
pub fn has_pod_on_node(store: &Store, identity: &Identity, node: &str, trust_domain: &str) -> bool {
    store.pods.values().any(|pod| {
        pod_node(pod) == Some(node) && pod_identity(pod, trust_domain).as_ref() == Some(identity)
    })
}

fn pod_node(pod: &Pod) -> Option<&str> {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished {
        return None;
    }
    pod.spec.as_ref()?.node_name.as_deref()
}

/// A pod's identity: its namespace and service account (`default` when unset).
pub fn pod_identity(pod: &Pod, trust_domain: &str) -> Option<Identity> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("");
    Identity::for_workload(trust_domain, namespace, sa).ok()
}

/// The lifetime granted: the request's, clamped to the policy's bounds; the
/// default when the request names none.
pub fn lifetime(requested_secs: i64, policy: &CaPolicy) -> Duration {
    if requested_secs <= 0 {
        return bounded(policy.default_ttl, policy);
    }
    bounded(Duration::from_secs(requested_secs as u64), policy)
}

// Not `clamp`: a policy with min > max must not panic; max wins.
fn bounded(ttl: Duration, policy: &CaPolicy) -> Duration {
    ttl.max(policy.min_ttl).min(policy.max_ttl)
}

#[cfg(test)]
mod tests;
