//! `ambit waypoint apply|list|delete`, as `istioctl waypoint` does it, on
//! the cluster directory: a waypoint is a Gateway of class `istio-waypoint`
//! in its own file (`waypoint-<ns>-<name>.yaml`), which istiod-lite turns
//! into a waypoint pod, Service and ServiceAccount. File edits and the list
//! are pure over text and parsed objects; reading and writing is at the edge.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use mesh_registry::dir::parse_file;
use mesh_registry::model::{Kind, NamespacedName, Store};
use serde_json::{Value, json};

use crate::cluster::pod_status::write_atomic;
use crate::cluster::spec::source_files;
use crate::label::{self, LabelChange, LabelError, Target};

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
const CLASS: &str = "istio-waypoint";

#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("--for must be service, workload, all or none, not {0:?}")]
    BadFor(String),
    #[error("{what} {name:?} is not a valid Kubernetes name (lowercase letters, digits and '-')")]
    BadName { what: &'static str, name: String },
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list {}: {reason}", dir.display())]
    List { dir: PathBuf, reason: String },
    #[error("labelling the namespace: {0}")]
    Label(#[from] LabelError),
    #[error("waypoint {0} is not in the cluster directory")]
    NotFound(NamespacedName),
    #[error(
        "waypoint {name} is defined in {}, not in a file `ambit waypoint apply` wrote; edit or delete it there",
        file.display()
    )]
    NotOurs { name: NamespacedName, file: PathBuf },
}

/// Which traffic a waypoint serves (`istio.io/waypoint-for`).
pub fn parse_for(value: &str) -> Result<&str, WaypointError> {
    match value {
        "service" | "workload" | "all" | "none" => Ok(value),
        other => Err(WaypointError::BadFor(other.into())),
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), WaypointError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(WaypointError::BadName {
            what,
            name: name.into(),
        })
    }
}

/// The file `apply` writes a waypoint to.
pub fn gateway_path(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("waypoint-{namespace}-{name}.yaml"))
}

/// The Gateway of a waypoint, as `istioctl waypoint generate` shapes it.
pub fn gateway_yaml(namespace: &str, name: &str, waypoint_for: &str) -> String {
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {WAYPOINT_FOR: waypoint_for},
        },
        "spec": {
            "gatewayClassName": CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    });
    format!(
        "# Written by `ambit waypoint apply`; `ambit waypoint delete {name} -n {namespace}` removes it.\n---\n{}",
        serde_yaml::to_string(&gateway).unwrap_or_default()
    )
}

/// What `apply` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub file: PathBuf,
    /// Whether the file changed (a re-apply of the same waypoint does not).
    pub changed: bool,
    /// The file the namespace label went to, with `--enroll-namespace`.
    pub labelled: Option<PathBuf>,
}

/// Writes the waypoint's Gateway and, with `enroll_namespace`, labels the
/// namespace `istio.io/use-waypoint=<name>` (adding a Namespace document in
/// `namespace-<ns>.yaml` when no file defines the namespace).
pub fn apply(
    dir: &Path,
    namespace: &str,
    name: &str,
    waypoint_for: &str,
    enroll_namespace: bool,
) -> Result<Applied, WaypointError> {
    check_name("namespace", namespace)?;
    check_name("waypoint name", name)?;
    parse_for(waypoint_for)?;
    let file = gateway_path(dir, namespace, name);
    let text = gateway_yaml(namespace, name, waypoint_for);
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WaypointError::File { path, source }
    };
    let changed = fs::read_to_string(&file).ok().as_deref() != Some(text.as_str());
    if changed {
        write_atomic(&file, &text).map_err(failed(&file))?;
    }
    let labelled = if enroll_namespace {
        let target = Target::Namespace(namespace.into());
        let change = [LabelChange::Set {
            key: USE_WAYPOINT.into(),
            value: name.into(),
        }];
        match label::label(dir, &target, &change) {
            Ok(path) => Some(path),
            Err(LabelError::NotFound { .. }) => {
                let path = dir.join(format!("namespace-{namespace}.yaml"));
                let doc = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": namespace, "labels": {USE_WAYPOINT: name}}});
                let text = format!("---\n{}", serde_yaml::to_string(&doc).unwrap_or_default());
                write_atomic(&path, &text).map_err(failed(&path))?;
                Some(path)
            }
            Err(other) => return Err(other.into()),
        }
    } else {
        None
    };
    Ok(Applied {
        file,
        changed,
        labelled,
    })
}

/// The cluster directory's objects, with the file each came from, and the
/// status istiod-lite wrote beside each file.
#[derive(Debug, Default)]
pub struct DirView {
    pub store: Store,
    pub files: BTreeMap<(Kind, NamespacedName), PathBuf>,
    /// `status` of each object, from the `*.status.yaml` files.
    pub status: BTreeMap<(Kind, NamespacedName), Value>,
}

/// Reads every source file of `dir` and its status file; refused documents
/// are skipped (`ambit up` reports them).
pub fn read_dir(dir: &Path) -> Result<DirView, WaypointError> {
    let files = source_files(dir).map_err(|e| WaypointError::List {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut view = DirView::default();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for parsed in parse_file(&file, &text).objects {
            let key = parsed.object.key();
            view.files
                .insert((key.kind, key.name.clone()), file.clone());
            view.store.upsert(parsed.object);
        }
        let status_file = file.with_file_name(format!(
            "{}.status.yaml",
            file.file_stem().unwrap_or_default().to_string_lossy()
        ));
        if let Ok(text) = fs::read_to_string(&status_file) {
            read_status(&text, &mut view.status);
        }
    }
    Ok(view)
}

fn read_status(text: &str, out: &mut BTreeMap<(Kind, NamespacedName), Value>) {
    for document in serde_yaml::Deserializer::from_str(text) {
        let Ok(value) = <Value as serde::Deserialize>::deserialize(document) else {
            continue;
        };
        let Some(kind) = value["kind"].as_str().and_then(Kind::from_name) else {
            continue;
        };
        let name = NamespacedName::new(
            value["metadata"]["namespace"].as_str().unwrap_or_default(),
            value["metadata"]["name"].as_str().unwrap_or_default(),
        );
        out.insert((kind, name), value["status"].clone());
    }
}

/// One row of `ambit waypoint list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointRow {
    pub namespace: String,
    pub name: String,
    pub waypoint_for: String,
    pub address: String,
    /// `True`, `False (<reason>)`, or `-` before istiod-lite wrote status.
    pub programmed: String,
    /// Namespaces whose `istio.io/use-waypoint` label names it.
    pub namespaces: Vec<String>,
    pub services: Vec<String>,
    pub workloads: Vec<String>,
}

impl WaypointRow {
    pub fn is_programmed(&self) -> bool {
        self.programmed == "True"
    }
}

/// The waypoint an object's traffic is bound to: its own label, else its
/// namespace's; `none`/`#none` opt out.
fn binding(
    store: &Store,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<NamespacedName> {
    let ns_labels = store
        .namespaces
        .get(&NamespacedName::cluster(namespace))
        .and_then(|n| n.metadata.labels.as_ref());
    let (labels, name) = match labels.and_then(|l| l.get(USE_WAYPOINT)) {
        Some(name) => (labels, name),
        None => (ns_labels, ns_labels?.get(USE_WAYPOINT)?),
    };
    if name == "none" || name == "#none" {
        return None;
    }
    let wp_ns = labels
        .and_then(|l| l.get("istio.io/use-waypoint-namespace"))
        .map_or(namespace, String::as_str);
    Some(NamespacedName::new(wp_ns, name.clone()))
}

/// The waypoints of the directory, in `namespace` (all when None), with
/// their status and the Services and pods bound to each.
pub fn list(view: &DirView, namespace: Option<&str>) -> Vec<WaypointRow> {
    let mut rows = Vec::new();
    for (key, gw) in &view.store.gateways {
        if gw.spec.gateway_class_name != CLASS || namespace.is_some_and(|ns| ns != key.namespace) {
            continue;
        }
        // The generated waypoint objects themselves are not "bound".
        let waypoint_for = gw
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(WAYPOINT_FOR))
            .cloned()
            .unwrap_or_else(|| "service".into());
        let status = view.status.get(&(Kind::Gateway, key.clone()));
        let address = status
            .and_then(|s| s["addresses"][0]["value"].as_str())
            .unwrap_or("-")
            .to_string();
        let programmed = status
            .and_then(|s| s["conditions"].as_array())
            .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
            .map_or("-".to_string(), |c| {
                if c["status"] == "True" {
                    "True".into()
                } else {
                    format!("False ({})", c["reason"].as_str().unwrap_or_default())
                }
            });
        let serves_services = matches!(waypoint_for.as_str(), "service" | "all");
        let serves_workloads = matches!(waypoint_for.as_str(), "workload" | "all");
        let services = view
            .store
            .services
            .iter()
            .filter(|(k, _)| *k != key)
            .filter(|(k, s)| {
                serves_services
                    && binding(&view.store, &k.namespace, s.metadata.labels.as_ref()).as_ref()
                        == Some(key)
            })
            .map(|(k, _)| k.to_string())
            .collect();
        let workloads =
            view.store
                .pods
                .iter()
                .filter(|(k, p)| {
                    serves_workloads
                        && !p.metadata.labels.as_ref().is_some_and(|l| {
                            l.contains_key("gateway.networking.k8s.io/gateway-name")
                        })
                        && binding(&view.store, &k.namespace, p.metadata.labels.as_ref()).as_ref()
                            == Some(key)
                })
                .map(|(k, _)| k.to_string())
                .collect();
        let namespaces = view
            .store
            .namespaces
            .iter()
            .filter(|(k, ns)| {
                let labels = ns.metadata.labels.as_ref();
                let name = labels.and_then(|l| l.get(USE_WAYPOINT));
                let wp_ns = labels
                    .and_then(|l| l.get("istio.io/use-waypoint-namespace"))
                    .unwrap_or(&k.name);
                name == Some(&key.name) && *wp_ns == key.namespace
            })
            .map(|(k, _)| k.name.clone())
            .collect();
        rows.push(WaypointRow {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            namespaces,
            waypoint_for,
            address,
            programmed,
            services,
            workloads,
        });
    }
    rows
}

/// The `ambit waypoint list` table.
pub fn render(rows: &[WaypointRow]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "FOR",
        "ADDRESS",
        "PROGRAMMED",
        "SERVICES",
        "WORKLOADS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                r.waypoint_for.clone(),
                r.address.clone(),
                r.programmed.clone(),
                r.services.len().to_string(),
                r.workloads.len().to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Removes waypoints written by `apply`. The namespace label stays, as with
/// `istioctl waypoint delete`; the caller says so. Returns removed files.
pub fn delete(
    dir: &Path,
    view: &DirView,
    namespace: &str,
    names: &[String],
    all: bool,
) -> Result<Vec<PathBuf>, WaypointError> {
    let targets: Vec<NamespacedName> = if all {
        view.store
            .gateways
            .iter()
            .filter(|(k, g)| k.namespace == namespace && g.spec.gateway_class_name == CLASS)
            .map(|(k, _)| k.clone())
            .collect()
    } else {
        names
            .iter()
            .map(|n| NamespacedName::new(namespace, n.clone()))
            .collect()
    };
    // Check every target before removing any.
    let mut files = Vec::new();
    for key in &targets {
        let ours = gateway_path(dir, &key.namespace, &key.name);
        match view.files.get(&(Kind::Gateway, key.clone())) {
            None => return Err(WaypointError::NotFound(key.clone())),
            Some(file) if file.file_name() != ours.file_name() => {
                return Err(WaypointError::NotOurs {
                    name: key.clone(),
                    file: file.clone(),
                });
            }
            Some(file) => files.push(file.clone()),
        }
    }
    for file in &files {
        fs::remove_file(file).map_err(|source| WaypointError::File {
            path: file.clone(),
            source,
        })?;
    }
    Ok(files)
}

/// Namespaces labelled to use one of `names` (for the note after delete).
pub fn namespaces_using(view: &DirView, namespace: &str, names: &[String]) -> Vec<String> {
    view.store
        .namespaces
        .iter()
        .filter(|(_, ns)| {
            ns.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(USE_WAYPOINT))
                .is_some_and(|n| names.contains(n))
        })
        .map(|(k, _)| k.name.clone())
        .filter(|n| n == namespace)
        .collect()
}

#[cfg(test)]
#[path = "waypoint_tests.rs"]
mod tests;
