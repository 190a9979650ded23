//! Status files: the directory source's stand-in for the status subresource.
//! Beside `mesh.yaml` sits `mesh.status.yaml` with one Kubernetes-like
//! document per object of that file that has conditions. Rendering is pure;
//! the source writes the text only when it differs from what is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::model::{ObjectCondition, ObjectKey, StatusAddress};

const STATUS_SUFFIXES: [&str; 2] = [".status.yaml", ".status.yml"];

/// Whether `path` is a status file (ours to write, never a source to read).
pub fn is_status_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|name| STATUS_SUFFIXES.iter().any(|s| name.ends_with(s)))
}

/// `dir/mesh.yaml` -> `dir/mesh.status.yaml`.
pub fn status_path(source: &Path) -> PathBuf {
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    source.with_file_name(format!("{stem}.status.yaml"))
}

/// When each condition last changed its status, so an unchanged condition
/// keeps its `lastTransitionTime` and its file is not rewritten.
#[derive(Clone, Debug, Default)]
pub struct TransitionTimes {
    since: BTreeMap<(ObjectKey, String), (bool, String)>,
}

impl TransitionTimes {
    /// The transition time of `condition`: the recorded one if its status is
    /// unchanged, else `now`. Conditions not in `current` are forgotten.
    pub fn update(
        &mut self,
        current: &[ObjectCondition],
        now: &str,
    ) -> Vec<(ObjectCondition, String)> {
        let mut next = BTreeMap::new();
        let mut out = Vec::with_capacity(current.len());
        for condition in current {
            let id = (condition.object.clone(), condition.type_.clone());
            let since = match self.since.get(&id) {
                Some((status, since)) if *status == condition.status => since.clone(),
                _ => now.to_string(),
            };
            next.insert(id, (condition.status, since.clone()));
            out.push((condition.clone(), since));
        }
        self.since = next;
        out
    }
}

/// The text of one status file: a document per object, objects and their
/// conditions in a stable order so equal status gives equal bytes.
/// `status.addresses` goes beside the conditions for the objects that have
/// them (a waypoint Gateway's). An object with addresses but no conditions is left out.
pub fn render_status_with_addresses(
    conditions: &[(ObjectCondition, String)],
    addresses: &BTreeMap<ObjectKey, Vec<StatusAddress>>,
) -> String {
    let mut by_object: BTreeMap<&ObjectKey, Vec<&(ObjectCondition, String)>> = BTreeMap::new();
    for entry in conditions {
        by_object.entry(&entry.0.object).or_default().push(entry);
    }
    let mut text = String::new();
    for (key, mut entries) in by_object {
        entries.sort_by(|a, b| a.0.type_.cmp(&b.0.type_));
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), Value::String(key.name.name.clone()));
        if !key.name.namespace.is_empty() {
            metadata.insert(
                "namespace".into(),
                Value::String(key.name.namespace.clone()),
            );
        }
        let conditions: Vec<Value> = entries
            .iter()
            .map(|(c, since)| {
                json!({
                    "type": c.type_,
                    "status": if c.status { "True" } else { "False" },
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": since,
                })
            })
            .collect();
        let mut status = json!({"conditions": conditions});
        if let Some(addresses) = addresses.get(key).filter(|a| !a.is_empty()) {
            status["addresses"] = addresses
                .iter()
                .map(|a| json!({"type": a.type_, "value": a.value}))
                .collect();
        }
        let document = json!({
            "apiVersion": key.kind.api_version(),
            "kind": key.kind.name(),
            "metadata": metadata,
            "status": status,
        });
        text.push_str("---\n");
        // A JSON value always serializes to YAML.
        text.push_str(&serde_yaml::to_string(&document).unwrap_or_default());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, NamespacedName};

    fn condition(name: &str, type_: &str, status: bool) -> ObjectCondition {
        ObjectCondition {
            object: ObjectKey {
                kind: Kind::AuthorizationPolicy,
                name: NamespacedName::new("ns1", name),
            },
            type_: type_.into(),
            status,
            reason: "Because".into(),
            message: "plain words".into(),
        }
    }

    #[test]
    fn status_files_sit_beside_their_source() {
        assert_eq!(
            status_path(Path::new("d/mesh.yaml")),
            Path::new("d/mesh.status.yaml")
        );
        assert_eq!(
            status_path(Path::new("d/mesh.yml")),
            Path::new("d/mesh.status.yaml")
        );
        assert!(is_status_file(Path::new("d/mesh.status.yaml")));
        assert!(is_status_file(Path::new("d/mesh.status.yml")));
        assert!(!is_status_file(Path::new("d/status.yaml")));
    }

    #[test]
    fn renders_one_document_per_object_in_a_stable_order() {
        let text = render_status_with_addresses(
            &[
                (condition("b", "Accepted", true), "t1".into()),
                (condition("a", "PartiallyEnforced", false), "t2".into()),
                (condition("a", "Accepted", true), "t3".into()),
            ],
            &BTreeMap::new(),
        );
        let expected = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\n  namespace: ns1\nstatus:\n  conditions:\n  - lastTransitionTime: t3\n    message: plain words\n    reason: Because\n    status: 'True'\n    type: Accepted\n  - lastTransitionTime: t2\n    message: plain words\n    reason: Because\n    status: 'False'\n    type: PartiallyEnforced\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: b\n  namespace: ns1\nstatus:\n  conditions:\n  - lastTransitionTime: t1\n    message: plain words\n    reason: Because\n    status: 'True'\n    type: Accepted\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn addresses_go_beside_the_conditions() {
        let mut addresses = BTreeMap::new();
        addresses.insert(
            condition("a", "Accepted", true).object,
            vec![StatusAddress {
                type_: "IPAddress".into(),
                value: "10.96.255.7".into(),
            }],
        );
        let text = render_status_with_addresses(
            &[(condition("a", "Accepted", true), "t1".into())],
            &addresses,
        );
        let doc: serde_json::Value =
            serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap();
        assert_eq!(
            doc["status"]["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.255.7"}])
        );
        assert_eq!(doc["status"]["conditions"][0]["type"], "Accepted");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut times = TransitionTimes::default();
        let first = times.update(&[condition("a", "Accepted", true)], "t1");
        assert_eq!(first[0].1, "t1");
        let same = times.update(&[condition("a", "Accepted", true)], "t2");
        assert_eq!(same[0].1, "t1");
        let flipped = times.update(&[condition("a", "Accepted", false)], "t3");
        assert_eq!(flipped[0].1, "t3");
        times.update(&[], "t4");
        let back = times.update(&[condition("a", "Accepted", false)], "t5");
        assert_eq!(back[0].1, "t5");
    }

    #[test]
    fn now_is_rfc3339() {
        let now = crate::now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }
}
