//! PeerAuthentication to the DENY policies that reject plaintext, and which
//! workloads reference them.
//!
//! Effective mode: a selecting policy in the pod's namespace, else the
//! namespace's policy without selector, else the root namespace's; UNSET
//! inherits from the next level and the mesh default is PERMISSIVE. When two
//! policies compete at one level the oldest wins (then the name).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_api::istio::security::{
    Action, Authorization, Clause, Match, Rule, Scope, StringMatch, string_match,
};

use super::{MeshConfig, condition, in_namespace, selects};
use crate::model::istio::MtlsMode;
use crate::model::{Kind, NamespacedName, ObjectCondition, PeerAuthentication, Store};

pub const STATIC_STRICT: &str = "istio_converted_static_strict";

pub struct PeerPolicies {
    pub authorizations: BTreeMap<String, Authorization>,
    static_strict_key: String,
    root_namespace: String,
}

impl PeerPolicies {
    /// The key a pod references, if its effective mode rejects any plaintext.
    pub fn keys_for(&self, pod: &NamespacedName, store: &Store) -> Option<String> {
        if self.authorizations.is_empty() {
            return None;
        }
        let labels = store.pods.get(pod).and_then(|p| p.metadata.labels.as_ref());
        let workload_level = oldest(
            in_namespace(&store.peer_authentications, &pod.namespace).filter(|(_, pa)| {
                pa.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| selects(&s.match_labels, labels))
            }),
        );
        if let Some((key, pa)) = workload_level {
            if !pa.spec.port_level_mtls.is_empty() {
                let port_key = port_policy_key(key);
                return self
                    .authorizations
                    .contains_key(&port_key)
                    .then_some(port_key);
            }
            if let Some(strict) = explicit(pa.spec.mtls.as_ref().map(|m| m.mode)) {
                return strict.then(|| self.static_strict_key.clone());
            }
        }
        let inherited = inherited_mode(store, &pod.namespace, &self.root_namespace);
        (inherited == MtlsMode::Strict).then(|| self.static_strict_key.clone())
    }
}

/// Some(strict?) for a set mode, None for UNSET.
fn explicit(mode: Option<MtlsMode>) -> Option<bool> {
    match mode.unwrap_or_default() {
        MtlsMode::Unset => None,
        m => Some(m == MtlsMode::Strict),
    }
}

fn oldest<'a>(
    candidates: impl Iterator<Item = (&'a NamespacedName, &'a Arc<PeerAuthentication>)>,
) -> Option<(&'a NamespacedName, &'a Arc<PeerAuthentication>)> {
    // A policy without a creation time counts as the newest.
    candidates.min_by_key(|(k, pa)| {
        let created = pa.metadata.creation_timestamp.clone();
        (created.is_none(), created, (*k).clone())
    })
}

fn level_mode(store: &Store, namespace: &str) -> Option<bool> {
    let (_, pa) = oldest(
        in_namespace(&store.peer_authentications, namespace).filter(|(_, pa)| no_selector(pa)),
    )?;
    explicit(pa.spec.mtls.as_ref().map(|m| m.mode))
}

fn no_selector(pa: &PeerAuthentication) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
}

/// The mode a namespace's pods inherit: the namespace's policy, else the mesh's.
fn inherited_mode(store: &Store, namespace: &str, root: &str) -> MtlsMode {
    let strict = level_mode(store, namespace)
        .or_else(|| level_mode(store, root))
        .unwrap_or(false);
    if strict {
        MtlsMode::Strict
    } else {
        MtlsMode::Permissive
    }
}

fn port_policy_key(pa: &NamespacedName) -> String {
    format!("{}/converted_peer_authentication_{}", pa.namespace, pa.name)
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(string_match::MatchType::Presence(())),
    }
}

fn deny(name: String, namespace: String, matches: Vec<Match>) -> Authorization {
    Authorization {
        name,
        namespace,
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause { matches }],
        }],
        ..Default::default()
    }
}

pub fn translate_peer_authentications(
    store: &Store,
    mesh: &MeshConfig,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> PeerPolicies {
    let mut authorizations = BTreeMap::new();
    let static_strict_key = format!("{}/{STATIC_STRICT}", mesh.root_namespace);
    if !store.peer_authentications.is_empty() {
        authorizations.insert(
            static_strict_key.clone(),
            deny(
                STATIC_STRICT.to_string(),
                mesh.root_namespace.clone(),
                vec![Match {
                    not_principals: vec![presence()],
                    ..Default::default()
                }],
            ),
        );
    }
    namespace_conflicts(store, conditions);
    for (key, pa) in &store.peer_authentications {
        if pa.spec.port_level_mtls.is_empty() {
            continue;
        }
        if no_selector(pa) {
            conditions.insert(condition(
                Kind::PeerAuthentication,
                key,
                "PartiallyEnforced",
                true,
                "PortLevelMtlsIgnored",
                "portLevelMtls applies only to a PeerAuthentication with a selector; it is ignored here".to_string(),
            ));
            continue;
        }
        let base_strict = explicit(pa.spec.mtls.as_ref().map(|m| m.mode)).unwrap_or_else(|| {
            inherited_mode(store, &key.namespace, &mesh.root_namespace) == MtlsMode::Strict
        });
        let port_strict = |mode: MtlsMode| explicit(Some(mode)).unwrap_or(base_strict);
        let matches = if base_strict {
            let exceptions: Vec<u32> = pa
                .spec
                .port_level_mtls
                .iter()
                .filter(|(_, m)| !port_strict(m.mode))
                .map(|(p, _)| *p)
                .collect();
            vec![Match {
                not_principals: vec![presence()],
                not_destination_ports: exceptions,
                ..Default::default()
            }]
        } else {
            pa.spec
                .port_level_mtls
                .iter()
                .filter(|(_, m)| port_strict(m.mode))
                .map(|(p, _)| Match {
                    not_principals: vec![presence()],
                    destination_ports: vec![*p],
                    ..Default::default()
                })
                .collect()
        };
        if matches.is_empty() {
            continue;
        }
        authorizations.insert(
            port_policy_key(key),
            deny(
                format!("converted_peer_authentication_{}", key.name),
                key.namespace.clone(),
                matches,
            ),
        );
    }
    PeerPolicies {
        authorizations,
        static_strict_key,
        root_namespace: mesh.root_namespace.clone(),
    }
}

/// Only the oldest selector-less policy of a namespace takes effect; the
/// others are told so.
fn namespace_conflicts(store: &Store, conditions: &mut BTreeSet<ObjectCondition>) {
    let namespaces: BTreeSet<&str> = store
        .peer_authentications
        .keys()
        .map(|k| k.namespace.as_str())
        .collect();
    for ns in namespaces {
        let level =
            || in_namespace(&store.peer_authentications, ns).filter(|(_, pa)| no_selector(pa));
        let Some((winner, _)) = oldest(level()) else {
            continue;
        };
        for (key, _) in level().filter(|(k, _)| *k != winner) {
            conditions.insert(condition(
                Kind::PeerAuthentication,
                key,
                "Accepted",
                false,
                "ConflictOlderWins",
                format!(
                    "{winner} also applies to the whole namespace and is older, so it takes effect and this policy is ignored"
                ),
            ));
        }
    }
}
