//! Reading one file's text into objects: pure, no I/O, so the fuzz target and
//! unit tests call it directly. Each `---` document becomes an object or an
//! error naming the line and the reason; documents of kinds the registry does
//! not watch are skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{Kind, Object};

use super::locate::{Segment, line_of, segments};

/// Why a document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentProblem {
    #[error("cannot read the file: {0}")]
    Read(String),
    #[error("invalid YAML: {0}")]
    Syntax(String),
    #[error("a document must be a mapping, found {0}")]
    NotAMapping(&'static str),
    #[error("cannot be represented as JSON: {0}")]
    NotJson(String),
    #[error("missing `kind`")]
    MissingKind,
    #[error("unknown kind `{0}`")]
    UnknownKind(String),
    #[error("unknown kind `{found}`; did you mean `{expected}`?")]
    MisspelledKind {
        found: String,
        expected: &'static str,
    },
    #[error("missing `apiVersion` for kind {0}")]
    MissingApiVersion(Kind),
    #[error("unknown apiVersion `{found}` for kind {kind}; expected `{expected}`")]
    UnknownApiVersion {
        kind: Kind,
        found: String,
        expected: &'static str,
    },
    #[error("`items` of a List must be a sequence")]
    ListWithoutItems,
    #[error("missing `metadata.name`")]
    MissingName,
    #[error("field `{path}`: {message}")]
    InvalidField { path: String, message: String },
    #[error("{0}")]
    InvalidDocument(String),
}

/// A refused document: where it is and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    pub file: PathBuf,
    /// 1-based line of the document start, or of the failing YAML token.
    pub line: usize,
    pub problem: DocumentProblem,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.problem)
    }
}

/// One document of a file that yielded an object.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedObject {
    /// 1-based line of the document start.
    pub line: usize,
    pub object: Object,
}

/// Everything one file holds: objects in file order, and the refused documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    pub objects: Vec<ParsedObject>,
    pub errors: Vec<DocumentError>,
}

/// A `---`-separated piece of a file, with the line it starts on.
pub(super) struct RawDocument {
    pub(super) line: usize,
    pub(super) text: String,
}

/// Parses every document of `text` (the contents of `file`, used in errors).
pub fn parse_file(file: &Path, text: &str) -> ParsedFile {
    let mut parsed = ParsedFile::default();
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
        match read_document(value, raw.line) {
            Ok(objects) => {
                for result in objects {
                    match result {
                        Ok(object) => parsed.objects.push(ParsedObject {
                            line: raw.line,
                            object,
                        }),
                        Err(refusal) => fail(refusal.line_in(&raw), refusal.problem),
                    }
                }
            }
            Err(refusal) => fail(refusal.line_in(&raw), refusal.problem),
        }
    }
    parsed
}

/// Splits at document markers. A line starting with `---` or `...` followed
/// by nothing or a blank can only be a marker in YAML (the spec forbids such
/// lines inside content), so splitting by lines is exact and keeps the line
/// numbers that serde_yaml's per-document parse would otherwise lose.
pub(super) fn split_documents(text: &str) -> Vec<RawDocument> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    let mut current = RawDocument {
        line: 1,
        text: String::new(),
    };
    let text = text.strip_suffix('\n').unwrap_or(text);
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        if is_marker(line, "---") {
            documents.push(std::mem::replace(
                &mut current,
                RawDocument {
                    line: number + 1,
                    text: String::new(),
                },
            ));
            // Content may follow the marker on the same line (`--- {a: 1}`);
            // blanks keep its columns.
            let rest = &line[3..];
            if !is_blank(rest) {
                current.line = number;
                current.text.push_str("   ");
                current.text.push_str(rest);
                current.text.push('\n');
            }
        } else if is_marker(line, "...") {
            documents.push(std::mem::replace(
                &mut current,
                RawDocument {
                    line: number + 1,
                    text: String::new(),
                },
            ));
        } else {
            if current.text.is_empty() && is_blank(line) {
                // Keep the start line at the first line with content.
                current.line = number + 1;
                continue;
            }
            current.text.push_str(line);
            current.text.push('\n');
        }
    }
    documents.push(current);
    documents
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

fn is_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// YAML text to a JSON value; `None` for an empty or comments-only document.
pub(super) fn read_value(raw: &RawDocument) -> Result<Option<Value>, (usize, DocumentProblem)> {
    if raw.text.lines().all(is_blank) {
        return Ok(None);
    }
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&raw.text).map_err(|e| {
        // An error at the end of input is reported on the last line, not
        // one past the end of the document.
        let last = raw.line + raw.text.lines().count().saturating_sub(1);
        let line = e.location().map_or(raw.line, |l| {
            (raw.line + l.line().saturating_sub(1)).min(last)
        });
        (line, DocumentProblem::Syntax(without_position(&e)))
    })?;
    yaml.apply_merge()
        .map_err(|e| (raw.line, DocumentProblem::Syntax(without_position(&e))))?;
    if yaml.is_null() {
        return Ok(None);
    }
    serde_json::to_value(&yaml)
        .map(Some)
        .map_err(|e| (raw.line, DocumentProblem::NotJson(e.to_string())))
}

/// serde_yaml's message with its document-relative position cut off; the
/// caller reports the file line instead.
fn without_position(e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

/// A refused document or List item, and where in it the problem is.
struct Refusal {
    problem: DocumentProblem,
    /// Path of the failing value within the document; empty for the whole.
    at: Vec<Segment>,
}

impl Refusal {
    fn whole(problem: DocumentProblem) -> Self {
        Self {
            problem,
            at: Vec::new(),
        }
    }

    /// The file line of the failing value, else of the document start.
    fn line_in(&self, raw: &RawDocument) -> usize {
        if self.at.is_empty() {
            return raw.line;
        }
        // libyaml also breaks lines at a lone `\r` and at Unicode line
        // separators; never point past the document's own lines.
        let last = raw.line + raw.text.lines().count().saturating_sub(1);
        line_of(&raw.text, &self.at)
            .map_or(raw.line, |l| (raw.line + l.saturating_sub(1)).min(last))
    }
}

/// One document's value to objects: several for a `List`, none for a kind the
/// registry does not watch. The outer error refuses the whole document.
fn read_document(value: Value, line: usize) -> Result<Vec<Result<Object, Refusal>>, Refusal> {
    let Value::Object(map) = &value else {
        return Err(Refusal::whole(DocumentProblem::NotAMapping(json_type(
            &value,
        ))));
    };
    let kind = match map.get("kind") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Null) | None => return Err(Refusal::whole(DocumentProblem::MissingKind)),
        Some(other) => {
            return Err(Refusal {
                problem: DocumentProblem::InvalidField {
                    path: "kind".into(),
                    message: format!("expected a string, found {}", json_type(other)),
                },
                at: vec![Segment::Key("kind".into())],
            });
        }
    };
    if kind == "List" {
        let Some(Value::Array(items)) = map.get("items") else {
            return Err(Refusal {
                problem: DocumentProblem::ListWithoutItems,
                at: vec![Segment::Key("items".into())],
            });
        };
        let mut objects = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match read_object(item.clone(), line) {
                Ok(Some(object)) => objects.push(Ok(object)),
                Ok(None) => {}
                Err(refusal) => objects.push(Err(in_list_item(refusal, index))),
            }
        }
        return Ok(objects);
    }
    Ok(read_object(value, line).transpose().into_iter().collect())
}

fn in_list_item(refusal: Refusal, index: usize) -> Refusal {
    let mut at = vec![Segment::Key("items".into()), Segment::Index(index)];
    at.extend(refusal.at);
    Refusal {
        problem: in_list_item_problem(refusal.problem, index),
        at,
    }
}

fn in_list_item_problem(problem: DocumentProblem, index: usize) -> DocumentProblem {
    match problem {
        DocumentProblem::InvalidField { path, message } => DocumentProblem::InvalidField {
            path: format!("items[{index}].{path}"),
            message,
        },
        DocumentProblem::NotAMapping(found) => DocumentProblem::InvalidField {
            path: format!("items[{index}]"),
            message: format!("expected a mapping, found {found}"),
        },
        other => DocumentProblem::InvalidField {
            path: format!("items[{index}]"),
            message: other.to_string(),
        },
    }
}

/// A single object's value to an `Object`; `None` for an unwatched kind.
fn read_object(mut value: Value, line: usize) -> Result<Option<Object>, Refusal> {
    let Value::Object(map) = &mut value else {
        return Err(Refusal::whole(DocumentProblem::NotAMapping(json_type(
            &value,
        ))));
    };
    let kind_name = match map.get("kind") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(Refusal::whole(DocumentProblem::MissingKind)),
    };
    let Some(kind) = watched_kind(&kind_name).map_err(|problem| Refusal {
        problem,
        at: vec![Segment::Key("kind".into())],
    })?
    else {
        tracing::debug!(kind = %kind_name, line, "skipping a document of a kind the registry does not watch");
        return Ok(None);
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(v)) => v.clone(),
        _ => return Err(Refusal::whole(DocumentProblem::MissingApiVersion(kind))),
    };
    if !accepted_api_version(kind, &api_version) {
        return Err(Refusal {
            problem: DocumentProblem::UnknownApiVersion {
                kind,
                found: api_version,
                expected: kind.api_version(),
            },
            at: vec![Segment::Key("apiVersion".into())],
        });
    }
    // Served versions of one group share the schema we read; the typed
    // structs expect the version they were generated for.
    map.insert(
        "apiVersion".into(),
        Value::String(kind.api_version().into()),
    );

    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(metadata) = metadata else {
        return Err(Refusal {
            problem: DocumentProblem::InvalidField {
                path: "metadata".into(),
                message: format!("expected a mapping, found {}", json_type(metadata)),
            },
            at: vec![Segment::Key("metadata".into())],
        });
    };
    match metadata.get("name") {
        Some(Value::String(name)) if !name.is_empty() => {}
        _ => {
            return Err(Refusal {
                problem: DocumentProblem::MissingName,
                at: vec![Segment::Key("metadata".into())],
            });
        }
    }
    if kind.namespaced() {
        match metadata.get("namespace") {
            None | Some(Value::Null) => {
                // As kubectl does: no namespace means `default`.
                metadata.insert("namespace".into(), Value::String("default".into()));
            }
            Some(Value::String(ns)) if ns.is_empty() => {
                metadata.insert("namespace".into(), Value::String("default".into()));
            }
            _ => {}
        }
    }
    Object::from_value(kind, value).map(Some).map_err(|e| {
        let path = e.path().to_string();
        let problem = if path == "." {
            DocumentProblem::InvalidDocument(e.inner().to_string())
        } else {
            DocumentProblem::InvalidField {
                path,
                message: e.inner().to_string(),
            }
        };
        Refusal {
            problem,
            at: segments(e.path()),
        }
    })
}

/// The watched kind named `name`; `None` for a kind we do not watch, an error
/// for one that looks like a watched kind with the wrong case (a typo the
/// user would otherwise never see, since unwatched kinds are skipped quietly).
fn watched_kind(name: &str) -> Result<Option<Kind>, DocumentProblem> {
    if let Some(kind) = Kind::from_name(name) {
        return Ok(Some(kind));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(DocumentProblem::UnknownKind(name.into()));
    }
    if let Some(kind) = Kind::ALL
        .iter()
        .find(|k| k.name().eq_ignore_ascii_case(name))
    {
        return Err(DocumentProblem::MisspelledKind {
            found: name.into(),
            expected: kind.name(),
        });
    }
    Ok(None)
}

/// The kind's own apiVersion, or for API groups other than core another
/// served version (`security.istio.io/v1beta1`, `gateway.networking.k8s.io/v1beta1`)
/// whose schema is the same for the fields we read.
fn accepted_api_version(kind: Kind, found: &str) -> bool {
    let expected = kind.api_version();
    if found == expected {
        return true;
    }
    let Some((group, _)) = expected.split_once('/') else {
        return false;
    };
    found
        .split_once('/')
        .is_some_and(|(g, version)| g == group && version == "v1beta1")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
