//! The registry's data: one typed map per watched kind, keyed by namespace and
//! name. Both sources (directory and Kubernetes API) fill the same `Store`, and
//! translation reads only this.

pub mod istio;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gateway_api::apis::standard::gateways::Gateway;
use gateway_api::apis::standard::grpcroutes::GrpcRoute;
use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use istio::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication, ServiceEntry};

/// Namespace and name of an object; the namespace is empty for cluster-scoped
/// kinds (Namespace, Node).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A cluster-scoped object's key.
    pub fn cluster(name: impl Into<String>) -> Self {
        Self::new("", name)
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Declares the watched kinds once: the `Kind` enum, the `Object` enum and the
/// `Store` maps all come from this list, so adding a kind touches one line.
macro_rules! kinds {
    ($( $variant:ident, $field:ident, $ty:ty, $api_version:literal, $namespaced:literal; )*) => {
        /// A watched kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $( $variant, )*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[ $( Kind::$variant, )* ];

            /// The `kind:` field of this kind's documents.
            pub fn name(self) -> &'static str {
                match self {
                    $( Kind::$variant => stringify!($variant), )*
                }
            }

            /// The `apiVersion:` this kind is read at.
            pub fn api_version(self) -> &'static str {
                match self {
                    $( Kind::$variant => $api_version, )*
                }
            }

            pub fn namespaced(self) -> bool {
                match self {
                    $( Kind::$variant => $namespaced, )*
                }
            }

            /// The kind named by a document's `kind:` field.
            pub fn from_name(name: &str) -> Option<Kind> {
                match name {
                    $( stringify!($variant) => Some(Kind::$variant), )*
                    _ => None,
                }
            }
        }

        /// One object of a watched kind.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Object {
            $( $variant(Arc<$ty>), )*
        }

        impl Object {
            pub fn kind(&self) -> Kind {
                match self {
                    $( Object::$variant(_) => Kind::$variant, )*
                }
            }

            pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                match self {
                    $( Object::$variant(o) => &o.metadata, )*
                }
            }

            pub fn key(&self) -> ObjectKey {
                let meta = self.metadata();
                let namespace = if self.kind().namespaced() {
                    meta.namespace.clone().unwrap_or_default()
                } else {
                    String::new()
                };
                ObjectKey {
                    kind: self.kind(),
                    name: NamespacedName::new(namespace, meta.name.clone().unwrap_or_default()),
                }
            }

            /// Reads a document of `kind` from JSON-shaped data (YAML parsed
            /// to a value, or an API server's JSON).
            pub fn from_value(kind: Kind, value: serde_json::Value) -> Result<Object, serde_path_to_error::Error<serde_json::Error>> {
                match kind {
                    $( Kind::$variant => serde_path_to_error::deserialize(value).map(|o| Object::$variant(Arc::new(o))), )*
                }
            }
        }

        /// Every watched object, by kind then namespace/name.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Store {
            $( pub $field: BTreeMap<NamespacedName, Arc<$ty>>, )*
        }

        impl Store {
            /// Inserts or replaces an object; returns whether the store changed.
            pub fn upsert(&mut self, object: Object) -> bool {
                let key = object.key().name;
                match object {
                    $( Object::$variant(o) => {
                        if self.$field.get(&key).is_some_and(|old| **old == *o) {
                            return false;
                        }
                        self.$field.insert(key, o);
                        true
                    } )*
                }
            }

            /// Removes an object; returns whether it was there.
            pub fn remove(&mut self, key: &ObjectKey) -> bool {
                match key.kind {
                    $( Kind::$variant => self.$field.remove(&key.name).is_some(), )*
                }
            }

            pub fn get(&self, key: &ObjectKey) -> Option<Object> {
                match key.kind {
                    $( Kind::$variant => self.$field.get(&key.name).cloned().map(Object::$variant), )*
                }
            }

            /// How many objects of each kind the store holds.
            pub fn counts(&self) -> BTreeMap<Kind, usize> {
                let mut counts = BTreeMap::new();
                $( counts.insert(Kind::$variant, self.$field.len()); )*
                counts
            }
        }
    };
}

kinds! {
    Namespace, namespaces, Namespace, "v1", false;
    Pod, pods, Pod, "v1", true;
    Service, services, Service, "v1", true;
    EndpointSlice, endpoint_slices, EndpointSlice, "discovery.k8s.io/v1", true;
    ServiceAccount, service_accounts, ServiceAccount, "v1", true;
    Node, nodes, Node, "v1", false;
    Gateway, gateways, Gateway, "gateway.networking.k8s.io/v1", true;
    HTTPRoute, http_routes, HttpRoute, "gateway.networking.k8s.io/v1", true;
    GRPCRoute, grpc_routes, GrpcRoute, "gateway.networking.k8s.io/v1", true;
    AuthorizationPolicy, authorization_policies, AuthorizationPolicy, "security.istio.io/v1", true;
    PeerAuthentication, peer_authentications, PeerAuthentication, "security.istio.io/v1", true;
    RequestAuthentication, request_authentications, RequestAuthentication, "security.istio.io/v1", true;
    ServiceEntry, service_entries, ServiceEntry, "networking.istio.io/v1", true;
}

/// Which object: kind plus namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub name: NamespacedName,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A status condition istiod-lite reports on an object (Kubernetes
/// `metav1.Condition` shape), e.g. why a policy is enforced more strictly at
/// L4 than written. Sources write these back: the status subresource on
/// Kubernetes, a status file beside the object's file in directory mode.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectCondition {
    pub object: ObjectKey,
    /// CamelCase condition type, e.g. `Accepted`, `PartiallyEnforced`.
    pub type_: String,
    pub status: bool,
    /// CamelCase machine-readable reason.
    pub reason: String,
    /// Plain words for the user.
    pub message: String,
}

/// One entry of a Gateway's `status.addresses` (Gateway API
/// `GatewayStatusAddress`): `type` `IPAddress` or `Hostname`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatusAddress {
    pub type_: String,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_core_and_istio_kinds_from_values() {
        let pod = Object::from_value(
            Kind::Pod,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "a", "namespace": "ns1", "labels": {"app": "a"}},
                   "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap();
        assert_eq!(pod.key().to_string(), "Pod ns1/a");

        let policy = Object::from_value(
            Kind::AuthorizationPolicy,
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "deny", "namespace": "ns1"},
                   "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}}),
        )
        .unwrap();
        let Object::AuthorizationPolicy(p) = &policy else {
            panic!("wrong kind")
        };
        assert_eq!(p.spec.action, istio::AuthorizationAction::Deny);
        assert_eq!(p.spec.rules[0].from[0].source.namespaces, vec!["x"]);
    }

    #[test]
    fn cluster_scoped_kinds_have_no_namespace() {
        let ns = Object::from_value(
            Kind::Namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1", "namespace": "ignored"}}),
        )
        .unwrap();
        assert_eq!(ns.key().name, NamespacedName::cluster("ns1"));
    }

    #[test]
    fn upsert_reports_only_real_changes() {
        let mut store = Store::default();
        let value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}});
        let ns = Object::from_value(Kind::Namespace, value.clone()).unwrap();
        assert!(store.upsert(ns.clone()));
        assert!(!store.upsert(ns.clone()));
        assert!(store.remove(&ns.key()));
        assert!(!store.remove(&ns.key()));
    }

    #[test]
    fn a_wrong_field_type_names_its_path() {
        let err = Object::from_value(
            Kind::AuthorizationPolicy,
            json!({"metadata": {"name": "p"}, "spec": {"rules": [{"to": [{"operation": {"ports": 80}}]}]}}),
        )
        .unwrap_err();
        assert_eq!(
            err.path().to_string(),
            "spec.rules[0].to[0].operation.ports"
        );
    }
}
