//! `ambit label`: sets or removes labels of a Namespace or Pod in the
//! cluster directory, as `kubectl label` does on an API server. Only the
//! document of that object is rewritten (its comments are not kept); every
//! other byte of the file stays as it was, and the file is replaced
//! atomically so watchers never see half of it. The edit is pure text in,
//! text out.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::cluster::pod_status::write_atomic;
use crate::cluster::spec::source_files;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{0:?}: expected KEY=VALUE to set or KEY- to remove")]
    BadChange(String),
    #[error(
        "label key {0:?}: expected [prefix/]name, name of 1-63 letters, digits, '-', '_', '.' starting and ending alphanumeric"
    )]
    BadKey(String),
    #[error(
        "label value {0:?}: at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric"
    )]
    BadValue(String),
    #[error("pod {0:?}: expected NAMESPACE/NAME")]
    BadPod(String),
    #[error("no label change given")]
    NoChanges,
    #[error("{target} not found in any YAML file of {}", dir.display())]
    NotFound { target: Target, dir: PathBuf },
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list {}: {reason}", dir.display())]
    List { dir: PathBuf, reason: String },
}

/// The object to label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Namespace(String),
    Pod { namespace: String, name: String },
    Service { namespace: String, name: String },
}

impl Target {
    /// `ns NAME` or `pod NS/NAME` (a pod without a namespace is in `default`).
    pub fn pod(spec: &str) -> Result<Target, LabelError> {
        let (namespace, name) = spec.split_once('/').unwrap_or(("default", spec));
        if name.is_empty() || namespace.is_empty() || name.contains('/') {
            return Err(LabelError::BadPod(spec.into()));
        }
        Ok(Target::Pod {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// `svc NS/NAME` (a Service without a namespace is in `default`).
    pub fn service(spec: &str) -> Result<Target, LabelError> {
        match Target::pod(spec)? {
            Target::Pod { namespace, name } => Ok(Target::Service { namespace, name }),
            other => Ok(other),
        }
    }

    fn matches(&self, document: &Value) -> bool {
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(document, |v, key| v.get(*key))
                .and_then(Value::as_str)
        };
        match self {
            Target::Namespace(name) => {
                field(&["kind"]) == Some("Namespace") && field(&["metadata", "name"]) == Some(name)
            }
            Target::Pod { namespace, name } | Target::Service { namespace, name } => {
                let kind = if matches!(self, Target::Pod { .. }) {
                    "Pod"
                } else {
                    "Service"
                };
                field(&["kind"]) == Some(kind)
                    && field(&["metadata", "name"]) == Some(name)
                    && field(&["metadata", "namespace"]).unwrap_or("default") == namespace
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Namespace(name) => write!(f, "namespace {name}"),
            Target::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Target::Service { namespace, name } => write!(f, "service {namespace}/{name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelChange {
    Set { key: String, value: String },
    Remove { key: String },
}

/// Reads `KEY=VALUE` and `KEY-` arguments.
pub fn parse_changes(args: &[String]) -> Result<Vec<LabelChange>, LabelError> {
    if args.is_empty() {
        return Err(LabelError::NoChanges);
    }
    args.iter()
        .map(|arg| {
            if let Some((key, value)) = arg.split_once('=') {
                check_key(key)?;
                check_value(value)?;
                Ok(LabelChange::Set {
                    key: key.into(),
                    value: value.into(),
                })
            } else if let Some(key) = arg.strip_suffix('-') {
                check_key(key)?;
                Ok(LabelChange::Remove { key: key.into() })
            } else {
                Err(LabelError::BadChange(arg.clone()))
            }
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_name));
    if prefix_ok && is_name(name) {
        Ok(())
    } else {
        Err(LabelError::BadKey(key.into()))
    }
}

fn check_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(LabelError::BadValue(value.into()))
    }
}

/// The text with `target`'s labels changed, or `None` if no document of
/// `text` defines `target`. Documents that are not `target` (and the
/// `---` lines between them) keep their bytes.
pub fn edit_text(text: &str, target: &Target, changes: &[LabelChange]) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut found = false;
    for piece in split_keeping_bytes(text) {
        match piece {
            Piece::Marker(line) => out.push_str(line),
            Piece::Document(body) => {
                if found {
                    out.push_str(body);
                    continue;
                }
                match edit_document(body, target, changes) {
                    Some(edited) => {
                        found = true;
                        out.push_str(&edited);
                    }
                    None => out.push_str(body),
                }
            }
        }
    }
    found.then_some(out)
}

enum Piece<'a> {
    /// A `---` or `...` line, with its line break.
    Marker(&'a str),
    /// The lines between markers, with their line breaks.
    Document(&'a str),
}

fn split_keeping_bytes(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker = ["---", "..."].iter().any(|m| {
            content
                .strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        });
        if is_marker {
            if at > start {
                pieces.push(Piece::Document(&text[start..at]));
            }
            pieces.push(Piece::Marker(line));
            start = at + line.len();
        }
        at += line.len();
    }
    if at > start {
        pieces.push(Piece::Document(&text[start..at]));
    }
    pieces
}

fn edit_document(body: &str, target: &Target, changes: &[LabelChange]) -> Option<String> {
    let mut document: Value = serde_yaml::from_str(body).ok()?;
    let mut edited = false;
    if target.matches(&document) {
        apply(&mut document, changes);
        edited = true;
    } else if document.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(Value::Sequence(items)) = document.get_mut("items")
        && let Some(item) = items.iter_mut().find(|i| target.matches(i))
    {
        apply(item, changes);
        edited = true;
    }
    if !edited {
        return None;
    }
    let mut text = serde_yaml::to_string(&document).ok()?;
    // Keep the document's own leading comment lines (a header above it).
    let header: String = body
        .split_inclusive('\n')
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .collect();
    text.insert_str(0, &header);
    Some(text)
}

fn apply(object: &mut Value, changes: &[LabelChange]) {
    let Value::Mapping(object) = object else {
        return;
    };
    let metadata = object
        .entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let Value::Mapping(metadata) = metadata else {
        return;
    };
    let labels = metadata
        .entry("labels".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !labels.is_mapping() {
        *labels = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(labels) = labels else {
        return;
    };
    for change in changes {
        match change {
            LabelChange::Set { key, value } => {
                labels.insert(key.as_str().into(), value.as_str().into());
            }
            LabelChange::Remove { key } => {
                labels.remove(key.as_str());
            }
        }
    }
    if labels.is_empty() {
        metadata.remove("labels");
    }
}

/// Applies `changes` to `target` in the first file of `dir` (path order)
/// that defines it; returns that file.
pub fn label(dir: &Path, target: &Target, changes: &[LabelChange]) -> Result<PathBuf, LabelError> {
    let files = source_files(dir).map_err(|e| LabelError::List {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| LabelError::File {
            path: file.clone(),
            source,
        })?;
        if let Some(edited) = edit_text(&text, target, changes) {
            write_atomic(&file, &edited).map_err(|source| LabelError::File {
                path: file.clone(),
                source,
            })?;
            return Ok(file);
        }
    }
    Err(LabelError::NotFound {
        target: target.clone(),
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
#[path = "label_tests.rs"]
mod tests;
