//! AuthorizationPolicies attached by `targetRef`/`targetRefs` to a waypoint
//! Gateway or to a Service bound to a waypoint, copied as written for the
//! waypoint to evaluate.
//!
//! CUSTOM (an external authorizer) is not supported; such a policy is sent
//! as a DENY with its rules, so the requests it would have sent to the
//! authorizer are refused rather than let through (fail closed).

use std::collections::BTreeSet;

use mesh_api::ambit::waypoint::v1 as wp;

use super::{Notes, target};
use crate::model::istio::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule};
use crate::model::{Kind, NamespacedName, ObjectKey, Store};
use crate::translate::MeshConfig;
use crate::translate::waypoint::Waypoints;

const DRY_RUN: &str = "istio.io/dry-run";

/// Policies by the waypoint Gateway or the Service they attach to.
pub type Attached = target::Attached<wp::Policy>;

pub fn attach(
    store: &Store,
    mesh: &MeshConfig,
    waypoints: &Waypoints,
    bound: &BTreeSet<NamespacedName>,
    notes: &mut Notes,
) -> Attached {
    let scope = target::Scope {
        store,
        waypoints,
        bound,
    };
    let mut out = Attached::default();
    for (key, policy) in &store.authorization_policies {
        let spec = &policy.spec;
        let refs: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).collect();
        if refs.is_empty() {
            continue;
        }
        let object = ObjectKey {
            kind: Kind::AuthorizationPolicy,
            name: key.clone(),
        };
        let Some(targets) = target::resolve(&object, spec.selector.as_ref(), &refs, &scope, notes)
        else {
            continue;
        };
        if spec.action == AuthorizationAction::Custom {
            notes.add(&object, "PartiallyEnforced", true, "CustomEnforcedAsDeny",
                "action CUSTOM (an external authorizer) is not supported by the waypoint; the requests its rules select are denied".to_string());
        }
        out.insert(&targets, &convert(key, policy, mesh));
    }
    out
}

fn convert(key: &NamespacedName, policy: &AuthorizationPolicy, mesh: &MeshConfig) -> wp::Policy {
    let spec = &policy.spec;
    let action = match spec.action {
        AuthorizationAction::Allow => wp::policy::Action::Allow,
        AuthorizationAction::Deny | AuthorizationAction::Custom => wp::policy::Action::Deny,
        AuthorizationAction::Audit => wp::policy::Action::Audit,
    };
    let dry_run = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN))
        .is_some_and(|v| v == "true");
    wp::Policy {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        action: action as i32,
        rules: spec
            .rules
            .iter()
            .map(|r| rule(r, &key.namespace, mesh))
            .collect(),
        dry_run,
    }
}

fn rule(r: &AuthorizationRule, namespace: &str, mesh: &MeshConfig) -> wp::PolicyRule {
    // `serviceAccounts` ("ns/sa" or "sa") is a principal in other words.
    let principals_of = |accounts: &[String]| -> Vec<String> {
        accounts
            .iter()
            .map(|sa| {
                let (ns, name) = sa.split_once('/').unwrap_or((namespace, sa));
                format!("{}/ns/{ns}/sa/{name}", mesh.trust_domain)
            })
            .collect()
    };
    wp::PolicyRule {
        from: r
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                wp::Source {
                    principals: [s.principals.clone(), principals_of(&s.service_accounts)].concat(),
                    not_principals: [
                        s.not_principals.clone(),
                        principals_of(&s.not_service_accounts),
                    ]
                    .concat(),
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    ip_blocks: s.ip_blocks.clone(),
                    not_ip_blocks: s.not_ip_blocks.clone(),
                    remote_ip_blocks: s.remote_ip_blocks.clone(),
                    not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                }
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                wp::Operation {
                    hosts: o.hosts.clone(),
                    not_hosts: o.not_hosts.clone(),
                    ports: o.ports.clone(),
                    not_ports: o.not_ports.clone(),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                }
            })
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| wp::Condition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}
