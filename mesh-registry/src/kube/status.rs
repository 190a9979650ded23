//! Writing `status.conditions` back through the status subresource. Which
//! patches to send is decided by `plan` over plain data; `write` sends them.

use std::collections::{BTreeMap, HashMap};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::model::{ObjectCondition, ObjectKey, Store};

use super::resources::api_resource;

/// One entry of `status.conditions` (Kubernetes `metav1.Condition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionBody {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The conditions one object should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPatch {
    pub object: ObjectKey,
    /// The object's uid as the registry knows it, so a deleted and
    /// recreated object of the same name is written again.
    pub uid: Option<String>,
    pub conditions: Vec<ConditionBody>,
}

/// What an object's status was last patched to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub uid: Option<String>,
    pub conditions: Vec<ConditionBody>,
}

impl From<StatusPatch> for (ObjectKey, Written) {
    fn from(patch: StatusPatch) -> Self {
        let written = Written {
            uid: patch.uid,
            conditions: patch.conditions,
        };
        (patch.object, written)
    }
}

impl StatusPatch {
    /// The merge patch: replaces the whole list, since istiod-lite owns it.
    pub fn body(&self) -> serde_json::Value {
        json!({"status": {"conditions": self.conditions}})
    }
}

#[derive(Debug, thiserror::Error)]
#[error("patching the status of {object}: {source}")]
pub struct StatusError {
    pub object: ObjectKey,
    #[source]
    pub source: Box<kube::Error>,
}

/// Groups conditions per object and drops objects whose conditions are what
/// was last written: a write changes the object, the watch brings the change
/// back, and an unchanged status must not be written again or the two would
/// loop. A condition keeps its `lastTransitionTime` while its status holds.
pub fn plan(
    conditions: &[ObjectCondition],
    written: &HashMap<ObjectKey, Written>,
    store: &Store,
    now: &str,
) -> Vec<StatusPatch> {
    let mut by_object: BTreeMap<&ObjectKey, Vec<&ObjectCondition>> = BTreeMap::new();
    for condition in conditions {
        by_object
            .entry(&condition.object)
            .or_default()
            .push(condition);
    }
    let mut patches = Vec::new();
    for (object, conditions) in by_object {
        let current = store.get(object);
        let meta = current.as_ref().map(|current| current.metadata());
        let uid = meta.and_then(|meta| meta.uid.clone());
        let generation = meta.and_then(|meta| meta.generation);
        let previous = written
            .get(object)
            .filter(|written| written.uid == uid)
            .map(|written| written.conditions.as_slice())
            .unwrap_or_default();
        let bodies: Vec<ConditionBody> = conditions
            .into_iter()
            .map(|condition| {
                let status = if condition.status { "True" } else { "False" };
                let since = previous
                    .iter()
                    .find(|old| old.type_ == condition.type_ && old.status == status)
                    .map_or(now, |old| old.last_transition_time.as_str());
                ConditionBody {
                    type_: condition.type_.clone(),
                    status: status.to_string(),
                    reason: condition.reason.clone(),
                    message: condition.message.clone(),
                    last_transition_time: since.to_string(),
                    observed_generation: generation,
                }
            })
            .collect();
        if bodies != previous {
            patches.push(StatusPatch {
                object: object.clone(),
                uid,
                conditions: bodies,
            });
        }
    }
    patches
}

/// Sends one patch to the object's status subresource.
pub async fn write(client: &kube::Client, patch: &StatusPatch) -> Result<(), StatusError> {
    let resource = api_resource(patch.object.kind);
    let api: Api<DynamicObject> = if patch.object.kind.namespaced() {
        Api::namespaced_with(client.clone(), &patch.object.name.namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    api.patch_status(
        &patch.object.name.name,
        &PatchParams::default(),
        &Patch::Merge(patch.body()),
    )
    .await
    .map(drop)
    .map_err(|source| StatusError {
        object: patch.object.clone(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, NamespacedName, Object};

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::AuthorizationPolicy,
            name: NamespacedName::new("ns1", name),
        }
    }

    fn condition(name: &str, type_: &str, status: bool) -> ObjectCondition {
        ObjectCondition {
            object: key(name),
            type_: type_.to_string(),
            status,
            reason: "Reason".to_string(),
            message: "words".to_string(),
        }
    }

    fn store_with_policy(name: &str, generation: i64) -> Store {
        store_with_policy_uid(name, generation, "uid-1")
    }

    fn store_with_policy_uid(name: &str, generation: i64, uid: &str) -> Store {
        let mut store = Store::default();
        store.upsert(
            Object::from_value(
                Kind::AuthorizationPolicy,
                json!({"metadata": {"name": name, "namespace": "ns1", "generation": generation, "uid": uid},
                       "spec": {}}),
            )
            .unwrap(),
        );
        store
    }

    #[test]
    fn conditions_are_grouped_per_object_with_generation_and_time() {
        let store = store_with_policy("a", 3);
        let conditions = [
            condition("a", "Accepted", true),
            condition("b", "Accepted", false),
            condition("a", "PartiallyEnforced", true),
        ];
        let patches = plan(&conditions, &HashMap::new(), &store, "T1");
        assert_eq!(patches.len(), 2);
        assert_eq!(patches[0].object, key("a"));
        assert_eq!(
            patches[0].body(),
            json!({"status": {"conditions": [
                {"type": "Accepted", "status": "True", "reason": "Reason", "message": "words",
                 "lastTransitionTime": "T1", "observedGeneration": 3},
                {"type": "PartiallyEnforced", "status": "True", "reason": "Reason", "message": "words",
                 "lastTransitionTime": "T1", "observedGeneration": 3},
            ]}})
        );
        assert_eq!(patches[1].conditions[0].status, "False");
        assert_eq!(patches[1].conditions[0].observed_generation, None);
    }

    #[test]
    fn an_unchanged_status_is_not_written_again_and_a_flip_gets_a_new_time() {
        let store = store_with_policy("a", 1);
        let first = plan(
            &[condition("a", "Accepted", true)],
            &HashMap::new(),
            &store,
            "T1",
        );
        let written: HashMap<_, _> = first.into_iter().map(Into::into).collect();
        assert!(plan(&[condition("a", "Accepted", true)], &written, &store, "T2").is_empty());
        let flipped = plan(&[condition("a", "Accepted", false)], &written, &store, "T2");
        assert_eq!(flipped[0].conditions[0].last_transition_time, "T2");

        let recreated = store_with_policy_uid("a", 1, "uid-2");
        let again = plan(
            &[condition("a", "Accepted", true)],
            &written,
            &recreated,
            "T3",
        );
        assert_eq!(again.len(), 1, "a recreated object gets its status again");
        assert_eq!(again[0].conditions[0].last_transition_time, "T3");
    }

    #[test]
    fn now_is_rfc3339_utc_seconds() {
        let now = crate::now_rfc3339();
        assert_eq!(now.len(), "2026-01-01T00:00:00Z".len(), "{now}");
        assert!(now.ends_with('Z'));
    }
}
