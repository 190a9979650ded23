//! `DirSource`: reads the files of a directory tree into the registry, and
//! writes status files beside them. Synchronous file I/O; `watch` decides
//! when to call it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Registry;
use crate::model::{ObjectCondition, ObjectKey, StatusAddress};

use super::DirError;
use super::index::FileIndex;
use super::overlay::parse_status_file;
use super::parse::{DocumentError, DocumentProblem, parse_file};
use super::scan::{find_source_files, is_source_path, is_status_path};
use super::status::{TransitionTimes, render_status_with_addresses, status_path};

#[derive(Debug, Default)]
struct State {
    index: FileIndex,
    times: TransitionTimes,
    /// Status files written by the last `write_status`.
    status_files: BTreeSet<PathBuf>,
}

/// The directory source; cheap to clone, clones share state.
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
    registry: Registry,
    state: Arc<Mutex<State>>,
}

impl DirSource {
    /// A source for the tree at `dir` (which must exist) feeding `registry`.
    /// Nothing is read until `load` or `spawn`.
    pub fn new(dir: impl AsRef<Path>, registry: Registry) -> Result<Self, DirError> {
        let dir = dir.as_ref();
        let root = dir.canonicalize().map_err(|source| DirError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(DirError::NotADirectory(dir.to_path_buf()));
        }
        Ok(Self {
            root,
            registry,
            state: Arc::default(),
        })
    }

    /// The watched directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the whole tree once.
    pub fn load(&self) {
        self.rescan(&BTreeSet::from([self.root.clone()]));
    }

    /// Re-reads the files at or below each of `paths` (files or directories,
    /// existing or not): changed files are re-parsed, vanished ones forgotten,
    /// and the registry gets all resulting changes as one batch.
    pub fn rescan(&self, paths: &BTreeSet<PathBuf>) {
        let mut state = self.lock();
        let mut targets = BTreeSet::new();
        for path in paths {
            targets.extend(
                state
                    .index
                    .files()
                    .chain(state.index.status_files())
                    .filter(|f| f.starts_with(path))
                    .map(Path::to_path_buf),
            );
            targets.extend(find_source_files(&self.root, path));
        }
        let mut changes = Vec::new();
        for file in &targets {
            changes.extend(self.reread(&mut state.index, file));
        }
        // Applied under the lock: two rescans must reach the registry in the
        // order their index updates happened.
        if !changes.is_empty() {
            tracing::debug!(
                files = targets.len(),
                changes = changes.len(),
                "applying directory changes"
            );
            self.registry.apply(changes);
        }
        drop(state);
    }

    fn reread(&self, index: &mut FileIndex, file: &Path) -> Vec<crate::Change> {
        let is_file = fs::metadata(file).map(|m| m.is_file());
        let is_status = is_status_path(&self.root, file);
        if !(is_status || is_source_path(&self.root, file)) || matches!(is_file, Ok(false)) {
            return index.remove_file(file);
        }
        let bytes = match fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return index.remove_file(file),
            Err(e) => {
                return self.unreadable(index, file, e.to_string());
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return self.unreadable(index, file, "not UTF-8 text".into());
        };
        if is_status {
            let parsed = parse_status_file(file, &text);
            for error in &parsed.errors {
                tracing::warn!("{error}");
            }
            return index.update_status_file(file, parsed);
        }
        let parsed = parse_file(file, &text);
        for error in &parsed.errors {
            tracing::warn!("{error}");
        }
        index.update_file(file, parsed)
    }

    fn unreadable(&self, index: &mut FileIndex, file: &Path, reason: String) -> Vec<crate::Change> {
        let error = DocumentError {
            file: file.to_path_buf(),
            line: 1,
            problem: DocumentProblem::Read(reason),
        };
        tracing::warn!("{error}");
        index.read_failed(file, error);
        Vec::new()
    }

    /// The refused documents of the current files (for `/debug` and metrics).
    pub fn errors(&self) -> Vec<DocumentError> {
        self.lock().index.errors()
    }

    /// Writes `<stem>.status.yaml` beside each source file whose objects have
    /// conditions, rewriting only changed files, and removes status files
    /// whose objects no longer have any (also ones left by an earlier run).
    /// Conditions of objects no file defines are ignored.
    pub fn write_status(&self, conditions: &[ObjectCondition]) -> Result<(), DirError> {
        self.write_status_with_addresses(conditions, &BTreeMap::new())
    }

    /// `write_status`, with `status.addresses` for the objects that have
    /// them (waypoint Gateways).
    pub fn write_status_with_addresses(
        &self,
        conditions: &[ObjectCondition],
        addresses: &BTreeMap<ObjectKey, Vec<StatusAddress>>,
    ) -> Result<(), DirError> {
        let mut state = self.lock();
        let timed = state.times.update(conditions, &crate::now_rfc3339());
        let mut by_file: BTreeMap<PathBuf, Vec<(ObjectCondition, String)>> = BTreeMap::new();
        for (condition, since) in timed {
            match state.index.owner(&condition.object) {
                Some(file) => by_file
                    .entry(status_path(file))
                    .or_default()
                    .push((condition, since)),
                None => {
                    tracing::debug!(object = %condition.object, "no file defines this object; its status is not written")
                }
            }
        }
        let mut written = BTreeSet::new();
        for (path, entries) in &by_file {
            write_if_changed(path, &render_status_with_addresses(entries, addresses))?;
            written.insert(path.clone());
        }
        // Status files of an earlier run are ours too: any beside a source.
        let mut ours: BTreeSet<PathBuf> = state.index.files().map(status_path).collect();
        ours.extend(state.status_files.iter().cloned());
        for stale in ours.difference(&written) {
            match fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DirError::WriteStatus {
                        path: stale.clone(),
                        source,
                    });
                }
            }
        }
        state.status_files = written;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // mutation completes before it could.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes through a hidden temporary file and a rename, so a reader never
/// sees half a status file; skips the write when the content is unchanged.
fn write_if_changed(path: &Path, text: &str) -> Result<(), DirError> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let failed = |source| DirError::WriteStatus {
        path: path.to_path_buf(),
        source,
    };
    fs::write(&temporary, text).map_err(failed)?;
    fs::rename(&temporary, path).map_err(failed)
}
