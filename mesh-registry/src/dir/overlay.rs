//! Pod status from status files, as a kubelet writes it through the API
//! server: a Pod document in a `*.status.yaml` file contributes its `status`
//! (and `metadata.uid` when the spec gives none, as the API server assigns
//! one), merged onto the Pod of the same namespace and name defined by the
//! source files. Other kinds in status files (istiod-lite's conditions) and
//! every other field are ignored. Pure: parsing and merging, no I/O.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::PodStatus;
use serde_json::{Map, Value};

use crate::model::{Kind, NamespacedName, Object, ObjectKey};

use super::parse::{DocumentError, DocumentProblem, read_value, split_documents};

/// What one status file says about one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusOverlay {
    pub uid: Option<String>,
    /// The `status` mapping as written.
    pub status: Map<String, Value>,
}

/// A status file's pod overlays, and its refused documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedStatusFile {
    pub overlays: BTreeMap<ObjectKey, StatusOverlay>,
    pub errors: Vec<DocumentError>,
}

/// Reads the Pod documents of a status file; a later document for the same
/// pod replaces an earlier one.
pub fn parse_status_file(file: &Path, text: &str) -> ParsedStatusFile {
    let mut parsed = ParsedStatusFile::default();
    for raw in split_documents(text) {
        let mut fail = |line: usize, problem: DocumentProblem| {
            parsed.errors.push(DocumentError {
                file: file.to_path_buf(),
                line,
                problem,
            })
        };
        let value = match read_value(&raw) {
            Ok(Some(value)) => value,
            Ok(None) => continue,
            Err((line, problem)) => {
                fail(line, problem);
                continue;
            }
        };
        if value.get("kind").and_then(Value::as_str) != Some(Kind::Pod.name()) {
            continue;
        }
        match read_pod_overlay(&value) {
            Ok((key, overlay)) => {
                parsed.overlays.insert(key, overlay);
            }
            Err(problem) => fail(raw.line, problem),
        }
    }
    parsed
}

fn read_pod_overlay(value: &Value) -> Result<(ObjectKey, StatusOverlay), DocumentProblem> {
    let metadata = value.get("metadata");
    let field = |name: &str| {
        metadata
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = field("name").ok_or(DocumentProblem::MissingName)?;
    let namespace = field("namespace").unwrap_or("default");
    let status = match value.get("status") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(status)) => status.clone(),
        Some(_) => {
            return Err(DocumentProblem::InvalidField {
                path: "status".into(),
                message: "expected a mapping".into(),
            });
        }
    };
    // Refused here, with its path, rather than when merged onto the pod.
    serde_path_to_error::deserialize::<_, PodStatus>(Value::Object(status.clone())).map_err(
        |e| DocumentProblem::InvalidField {
            path: format!("status.{}", e.path()),
            message: e.inner().to_string(),
        },
    )?;
    let key = ObjectKey {
        kind: Kind::Pod,
        name: NamespacedName::new(namespace, name),
    };
    let overlay = StatusOverlay {
        uid: field("uid").map(str::to_string),
        status,
    };
    Ok((key, overlay))
}

/// `object` with `overlays` merged on, in order: each overlay's status keys
/// replace the object's, except `conditions`, merged by `type` so two writers
/// of different conditions (the runner's `Ready`, istiod-lite's binding
/// conditions) do not erase each other.
pub fn apply_overlays<'a>(
    object: &Object,
    overlays: impl IntoIterator<Item = &'a StatusOverlay>,
) -> Object {
    let Object::Pod(pod) = object else {
        return object.clone();
    };
    let mut overlays = overlays.into_iter().peekable();
    if overlays.peek().is_none() {
        return object.clone();
    }
    let Ok(mut value) = serde_json::to_value(&**pod) else {
        return object.clone();
    };
    for overlay in overlays {
        merge(&mut value, overlay);
    }
    match Object::from_value(Kind::Pod, value) {
        Ok(merged) => merged,
        Err(e) => {
            tracing::warn!(pod = %object.key(), "pod status from a status file does not apply: {e}");
            object.clone()
        }
    }
}

fn merge(pod: &mut Value, overlay: &StatusOverlay) {
    let Value::Object(pod) = pod else { return };
    if let Some(uid) = &overlay.uid {
        let metadata = pod
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(metadata) = metadata {
            metadata
                .entry("uid")
                .or_insert_with(|| Value::String(uid.clone()));
        }
    }
    let status = pod
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    let Value::Object(status) = status else {
        return;
    };
    for (key, value) in &overlay.status {
        match (key.as_str(), status.get_mut(key), value) {
            ("conditions", Some(Value::Array(existing)), Value::Array(added)) => {
                for condition in added {
                    let type_ = condition.get("type");
                    match existing.iter_mut().find(|c| c.get("type") == type_) {
                        Some(slot) => *slot = condition.clone(),
                        None => existing.push(condition.clone()),
                    }
                }
            }
            _ => {
                status.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
#[path = "overlay_tests.rs"]
mod tests;
