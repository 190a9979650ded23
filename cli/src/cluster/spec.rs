//! `ClusterSpec`: what a cluster directory asks for (its Nodes, Pods and
//! Services), read with the registry's own parser so `ambit up` sees exactly
//! the objects istiod-lite and the node agents will see.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use mesh_registry::dir::{DocumentError, parse_file};
use mesh_registry::model::Object;

/// Why a cluster directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} refused document(s):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Documents(Vec<DocumentError>),
}

/// The objects of a cluster directory the runner acts on, in file order.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    /// The directory, canonical.
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
}

impl ClusterSpec {
    /// Reads every source file of `dir` (`*.yaml`/`*.yml`, not hidden, not
    /// status files), refusing the directory if any document is invalid: a
    /// cluster started from half its files would surprise.
    pub fn read(dir: &Path) -> Result<ClusterSpec, SpecError> {
        let dir = dir.canonicalize().map_err(|source| SpecError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        walk(&dir, &mut files)?;
        files.sort();
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for file in &files {
            let text = fs::read_to_string(file).map_err(|source| SpecError::Read {
                path: file.clone(),
                source,
            })?;
            let parsed = parse_file(file, &text);
            errors.extend(parsed.errors);
            objects.extend(parsed.objects.into_iter().map(|o| o.object));
        }
        if !errors.is_empty() {
            return Err(SpecError::Documents(errors));
        }
        let mut spec = ClusterSpec::from_objects(objects);
        spec.dir = dir;
        Ok(spec)
    }

    /// Keeps the kinds the runner acts on.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> ClusterSpec {
        let mut spec = ClusterSpec::default();
        for object in objects {
            match object {
                Object::Node(node) => spec.nodes.push((*node).clone()),
                Object::Pod(pod) => spec.pods.push((*pod).clone()),
                Object::Service(service) => spec.services.push((*service).clone()),
                _ => {}
            }
        }
        spec
    }
}

/// Whether the registry's directory source reads `name` as a source file.
pub fn is_source_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.starts_with('.')
        && !is_status_name(name)
}

pub fn is_status_name(name: &str) -> bool {
    name.ends_with(".status.yaml") || name.ends_with(".status.yml")
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), SpecError> {
    let entries = fs::read_dir(dir).map_err(|source| SpecError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, found)?,
            Ok(_) if is_source_name(&name) => found.push(path),
            _ => {}
        }
    }
    Ok(())
}

/// The source files of `dir` (for `ambit label`).
pub fn source_files(dir: &Path) -> Result<Vec<PathBuf>, SpecError> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    Ok(files)
}
