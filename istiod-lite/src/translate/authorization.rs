//! AuthorizationPolicy to ztunnel's L4 `Authorization`.
//!
//! Attributes only a waypoint can check never make ztunnel grant more than
//! written: an ALLOW rule that uses them matches nothing, and a DENY rule
//! without them denies everything its L4 part matches, unless every selected
//! workload sends its traffic through a waypoint that checks them.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::istio::security::{Action, Authorization, Scope};
use mesh_api::istio::workload::Workload;

use super::labels::Labels;
use super::{MeshConfig, condition, in_namespace, selects};
use crate::model::istio::{AuthorizationAction, AuthorizationPolicySpec};
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

mod rule;

pub use rule::{RuleNote, convert_rules};

/// A selector policy's key and its selector.
type Selecting = (String, Labels);

/// Translated policies and which selector policies apply to which pods.
#[derive(Default)]
pub struct Policies {
    pub authorizations: BTreeMap<String, Authorization>,
    /// WORKLOAD_SELECTOR policies by namespace, first selector key, value.
    /// Nested so a pod's labels are looked up as `&str`, without building an
    /// owned key per label and pod.
    by_first_label: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<Selecting>>>>,
    root_namespace: String,
}

impl Policies {
    /// Keys of the selector policies that select a pod: those of its own
    /// namespace and those of the root namespace.
    pub fn selected_keys(&self, pod: &NamespacedName, store: &Store) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let Some(labels) = store.pods.get(pod).and_then(|p| p.metadata.labels.as_ref()) else {
            return keys;
        };
        let own = Some(pod.namespace.as_str());
        let root = (pod.namespace != self.root_namespace).then_some(self.root_namespace.as_str());
        for ns in own.into_iter().chain(root) {
            let Some(by_key) = self.by_first_label.get(ns) else {
                continue;
            };
            for (k, v) in labels {
                let candidates = by_key
                    .get(k.as_str())
                    .and_then(|by_value| by_value.get(v.as_str()));
                for (key, selector) in candidates.into_iter().flatten() {
                    if selects(selector, Some(labels)) {
                        keys.insert(key.clone());
                    }
                }
            }
        }
        keys
    }
}

/// Translates every AuthorizationPolicy; `pods` tells which workloads have a
/// waypoint.
pub fn translate_policies(
    store: &Store,
    mesh: &MeshConfig,
    pods: &BTreeMap<NamespacedName, Workload>,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> Policies {
    let mut out = Policies {
        root_namespace: mesh.root_namespace.clone(),
        ..Default::default()
    };
    for (key, policy) in &store.authorization_policies {
        let spec = &policy.spec;
        let Some(translated) = translate_policy(key, spec, mesh, || {
            all_selected_have_waypoint(key, spec, store, mesh, pods)
        }) else {
            conditions.insert(skipped_condition(key, spec));
            continue;
        };
        conditions.extend(translated.conditions);
        if let Some(selector) = selector_of(spec)
            && let Some((k, v)) = selector.iter().next()
        {
            out.by_first_label
                .entry(key.namespace.clone())
                .or_default()
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push((key.to_string(), selector.clone()));
        }
        out.authorizations
            .insert(key.to_string(), translated.authorization);
    }
    out
}

fn selector_of(spec: &AuthorizationPolicySpec) -> Option<&Labels> {
    spec.selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty())
}

/// A policy ztunnel does receive, with its conditions.
pub struct TranslatedPolicy {
    pub authorization: Authorization,
    pub conditions: Vec<ObjectCondition>,
}

/// One policy; None when ztunnel does not receive it (a waypoint policy, or
/// an action ztunnel has no use for). `waypoint_serves_all` is asked only for
/// a selector DENY that uses L7 attributes.
pub fn translate_policy(
    key: &NamespacedName,
    spec: &AuthorizationPolicySpec,
    mesh: &MeshConfig,
    waypoint_serves_all: impl FnOnce() -> bool,
) -> Option<TranslatedPolicy> {
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return None;
    }
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Audit | AuthorizationAction::Custom => return None,
    };
    let selector = selector_of(spec);
    let scope = match selector {
        Some(_) => Scope::WorkloadSelector,
        None if key.namespace == mesh.root_namespace => Scope::Global,
        None => Scope::Namespace,
    };
    let left_to_waypoint = action == Action::Deny
        && selector.is_some()
        && rule::uses_l7(spec)
        && waypoint_serves_all();
    let converted = convert_rules(&spec.rules, action, &key.namespace, left_to_waypoint);
    let conditions = note_conditions(key, action, left_to_waypoint, &converted.notes);
    Some(TranslatedPolicy {
        authorization: Authorization {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            scope: scope as i32,
            action: action as i32,
            rules: converted.rules,
            ..Default::default()
        },
        conditions,
    })
}

fn skipped_condition(key: &NamespacedName, spec: &AuthorizationPolicySpec) -> ObjectCondition {
    let (reason, message) = if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        (
            "EnforcedByWaypoint",
            "this policy has targetRef(s), so the waypoint it targets enforces it; ztunnel does not receive it".to_string(),
        )
    } else {
        let action = match spec.action {
            AuthorizationAction::Audit => "AUDIT",
            _ => "CUSTOM",
        };
        (
            "ActionNotEnforcedAtL4",
            format!(
                "action {action} is not enforced by ztunnel; only a waypoint can apply it, ztunnel does not receive this policy"
            ),
        )
    };
    condition(
        Kind::AuthorizationPolicy,
        key,
        "ZtunnelEnforced",
        false,
        reason,
        message,
    )
}

fn note_conditions(
    key: &NamespacedName,
    action: Action,
    left_to_waypoint: bool,
    notes: &[RuleNote],
) -> Vec<ObjectCondition> {
    let mut l7 = Vec::new();
    let mut invalid = Vec::new();
    for note in notes {
        if !note.l7_fields.is_empty() {
            l7.push(format!(
                "spec.rules[{}] uses {}, which only a waypoint can check",
                note.rule,
                note.l7_fields.join(", ")
            ));
        }
        for value in &note.invalid {
            invalid.push(format!("spec.rules[{}].{value}", note.rule));
        }
    }
    let mut out = Vec::new();
    if !l7.is_empty() {
        let (reason, consequence) = match (action, left_to_waypoint) {
            (Action::Allow, _) => (
                "L7RuleDroppedAtL4",
                "at L4 such an ALLOW rule matches nothing, so its traffic is denied",
            ),
            (_, false) => (
                "L7DenyEnforcedAtL4",
                "at L4 such a DENY rule denies all traffic its remaining conditions match",
            ),
            (_, true) => (
                "L7DenyLeftToWaypoint",
                "every selected workload has a waypoint, so ztunnel leaves such a DENY rule to the waypoint",
            ),
        };
        out.push(condition(
            Kind::AuthorizationPolicy,
            key,
            "PartiallyEnforced",
            true,
            reason,
            format!("{}; {consequence}", l7.join("; ")),
        ));
    }
    if !invalid.is_empty() {
        let consequence = match action {
            Action::Allow => "at L4 an ALLOW rule with an invalid value matches nothing",
            Action::Deny => {
                "at L4 a DENY rule ignores the field with the invalid value and denies all traffic its other conditions match"
            }
        };
        out.push(condition(
            Kind::AuthorizationPolicy,
            key,
            "InvalidValues",
            true,
            "InvalidRuleValue",
            format!("{}; {consequence}", invalid.join("; ")),
        ));
    }
    out
}

/// Whether the policy's resource depends on the pods it selects (a selector
/// DENY with L7 rules is left to their waypoints when all have one), so a
/// change to any of them can change it.
pub fn depends_on_selected_pods(spec: &AuthorizationPolicySpec) -> bool {
    let for_ztunnel = spec.target_ref.is_none() && spec.target_refs.is_empty();
    for_ztunnel
        && spec.action == AuthorizationAction::Deny
        && selector_of(spec).is_some()
        && rule::uses_l7(spec)
}

/// Whether the policy selects at least one workload and every one of them has
/// a waypoint for workload traffic.
fn all_selected_have_waypoint(
    key: &NamespacedName,
    spec: &AuthorizationPolicySpec,
    store: &Store,
    mesh: &MeshConfig,
    pods: &BTreeMap<NamespacedName, Workload>,
) -> bool {
    let Some(selector) = selector_of(spec) else {
        return false;
    };
    let candidates: Box<dyn Iterator<Item = (&NamespacedName, &Workload)>> =
        if key.namespace == mesh.root_namespace {
            Box::new(pods.iter())
        } else {
            Box::new(in_namespace(pods, &key.namespace))
        };
    let mut any = false;
    for (pod_key, w) in candidates {
        let labels = store
            .pods
            .get(pod_key)
            .and_then(|p| p.metadata.labels.as_ref());
        if selects(selector, labels) {
            if w.waypoint.is_none() {
                return false;
            }
            any = true;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::{AuthorizationRule, Operation, RuleTo, WorkloadSelector};

    fn spec(action: AuthorizationAction, selector: bool) -> AuthorizationPolicySpec {
        AuthorizationPolicySpec {
            action,
            selector: selector.then(|| WorkloadSelector {
                match_labels: [("app".to_string(), "a".to_string())].into(),
            }),
            rules: vec![AuthorizationRule {
                to: vec![RuleTo {
                    operation: Operation {
                        methods: vec!["GET".into()],
                        ..Default::default()
                    },
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn key() -> NamespacedName {
        NamespacedName::new("ns", "p")
    }

    #[test]
    fn the_waypoint_question_is_asked_only_for_a_selector_deny_with_l7() {
        let mesh = MeshConfig::default();
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            true
        };
        translate_policy(&key(), &spec(AuthorizationAction::Allow, true), &mesh, ask);
        translate_policy(&key(), &spec(AuthorizationAction::Deny, false), &mesh, ask);
        assert_eq!(asked.get(), 0);
        let left = translate_policy(&key(), &spec(AuthorizationAction::Deny, true), &mesh, ask)
            .expect("sent to ztunnel");
        assert_eq!(asked.get(), 1);
        assert!(left.authorization.rules.is_empty());
        assert_eq!(left.conditions[0].reason, "L7DenyLeftToWaypoint");
    }

    #[test]
    fn without_a_waypoint_an_l7_only_deny_denies_everything_at_l4() {
        let mesh = MeshConfig::default();
        let p = translate_policy(
            &key(),
            &spec(AuthorizationAction::Deny, true),
            &mesh,
            || false,
        )
        .expect("sent to ztunnel");
        assert_eq!(p.authorization.rules.len(), 1);
        assert!(p.authorization.rules[0].clauses.is_empty());
        assert_eq!(p.conditions[0].reason, "L7DenyEnforcedAtL4");
    }

    #[test]
    fn an_l7_allow_rule_matches_nothing() {
        let mesh = MeshConfig::default();
        let p = translate_policy(
            &key(),
            &spec(AuthorizationAction::Allow, false),
            &mesh,
            || true,
        )
        .expect("sent to ztunnel");
        assert_eq!(p.authorization.scope, Scope::Namespace as i32);
        assert!(p.authorization.rules.is_empty());
        assert_eq!(p.conditions[0].reason, "L7RuleDroppedAtL4");
    }
}
