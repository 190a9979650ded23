//! Which object came from which file: the directory source's bookkeeping, as
//! plain data. Reading a file (or losing it) turns into the `Change` batch the
//! registry must apply; no I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::Change;
use crate::model::{Object, ObjectKey};

use super::overlay::{ParsedStatusFile, StatusOverlay, apply_overlays};
use super::parse::{DocumentError, ParsedFile};
use super::status::is_status_file;

#[derive(Clone, Debug, Default)]
struct FileEntry {
    /// The objects this file defines: its valid documents, plus, while it has
    /// invalid ones, the last good versions of objects it no longer yields.
    objects: BTreeMap<ObjectKey, Object>,
    errors: Vec<DocumentError>,
}

/// What a status file says about pods.
#[derive(Clone, Debug, Default)]
struct StatusEntry {
    overlays: BTreeMap<ObjectKey, StatusOverlay>,
    errors: Vec<DocumentError>,
}

/// The files read so far and the objects each defines.
#[derive(Clone, Debug, Default)]
pub struct FileIndex {
    files: BTreeMap<PathBuf, FileEntry>,
    /// Status files, merged onto the objects in path order.
    statuses: BTreeMap<PathBuf, StatusEntry>,
    /// Files defining each key, oldest definition first; the last one wins.
    definers: BTreeMap<ObjectKey, Vec<PathBuf>>,
}

impl FileIndex {
    /// Records a file's new contents and returns the registry changes.
    ///
    /// When the file has invalid documents we cannot tell whether an object
    /// it used to define was removed on purpose or sits in the broken
    /// document, so its previous objects stay until the file is valid again.
    pub fn update_file(&mut self, file: &Path, parsed: ParsedFile) -> Vec<Change> {
        let previous = self.files.remove(file).unwrap_or_default();
        let mut objects: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        let mut lines: BTreeMap<ObjectKey, usize> = BTreeMap::new();
        for parsed_object in parsed.objects {
            let key = parsed_object.object.key();
            if let Some(earlier) = lines.insert(key.clone(), parsed_object.line) {
                tracing::warn!(
                    "{}:{}: {key} is also defined at line {earlier}; the later document wins",
                    file.display(),
                    parsed_object.line
                );
            }
            objects.insert(key, parsed_object.object);
        }
        if !parsed.errors.is_empty() {
            for (key, object) in &previous.objects {
                objects.entry(key.clone()).or_insert_with(|| object.clone());
            }
        }

        let affected: BTreeSet<ObjectKey> = previous
            .objects
            .keys()
            .chain(objects.keys())
            .cloned()
            .collect();
        let before = self.effective_many(&affected, Some((file, &previous)));

        for key in previous.objects.keys() {
            if !objects.contains_key(key) {
                self.drop_definer(key, file);
            }
        }
        for (key, object) in &objects {
            let definers = self.definers.entry(key.clone()).or_default();
            let changed = previous.objects.get(key) != Some(object);
            match definers.iter().position(|f| f == file) {
                // A new or edited definition is the most recent one read.
                Some(at) if changed => {
                    definers.remove(at);
                    definers.push(file.to_path_buf());
                }
                Some(_) => {}
                None => definers.push(file.to_path_buf()),
            }
            if changed && definers.len() > 1 {
                let others: Vec<String> = definers[..definers.len() - 1]
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                tracing::warn!(
                    "{key} is defined in {} and in {}; using {}",
                    others.join(", "),
                    file.display(),
                    file.display()
                );
            }
        }
        self.files.insert(
            file.to_path_buf(),
            FileEntry {
                objects,
                errors: parsed.errors,
            },
        );
        self.changes(&affected, before)
    }

    /// Records a status file's new contents and returns the registry
    /// changes. As with sources, a file with refused documents keeps the
    /// overlays it no longer yields until it is valid again.
    pub fn update_status_file(&mut self, file: &Path, parsed: ParsedStatusFile) -> Vec<Change> {
        let previous = self.statuses.get(file).cloned().unwrap_or_default();
        let mut overlays = parsed.overlays;
        if !parsed.errors.is_empty() {
            for (key, overlay) in &previous.overlays {
                overlays
                    .entry(key.clone())
                    .or_insert_with(|| overlay.clone());
            }
        }
        let affected: BTreeSet<ObjectKey> = previous
            .overlays
            .keys()
            .chain(overlays.keys())
            .cloned()
            .collect();
        let before = self.effective_many(&affected, None);
        self.statuses.insert(
            file.to_path_buf(),
            StatusEntry {
                overlays,
                errors: parsed.errors,
            },
        );
        self.changes(&affected, before)
    }

    /// Records that a file could not be read: its objects stay as they were.
    pub fn read_failed(&mut self, file: &Path, error: DocumentError) {
        if is_status_file(file) {
            self.statuses.entry(file.to_path_buf()).or_default().errors = vec![error];
        } else {
            self.files.entry(file.to_path_buf()).or_default().errors = vec![error];
        }
    }

    /// Forgets a deleted file; objects only it defined are deleted, objects
    /// another file also defines fall back to that file's version. A deleted
    /// status file takes its pod status with it.
    pub fn remove_file(&mut self, file: &Path) -> Vec<Change> {
        if self.statuses.contains_key(file) {
            let affected: BTreeSet<ObjectKey> =
                self.statuses[file].overlays.keys().cloned().collect();
            let before = self.effective_many(&affected, None);
            self.statuses.remove(file);
            return self.changes(&affected, before);
        }
        let Some(previous) = self.files.remove(file) else {
            return Vec::new();
        };
        let affected: BTreeSet<ObjectKey> = previous.objects.keys().cloned().collect();
        let before = self.effective_many(&affected, Some((file, &previous)));
        for key in &affected {
            self.drop_definer(key, file);
        }
        self.changes(&affected, before)
    }

    /// The source files read, in path order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// The status files read, in path order.
    pub fn status_files(&self) -> impl Iterator<Item = &Path> {
        self.statuses.keys().map(PathBuf::as_path)
    }

    /// The refused documents of every file, sources by file then line, then
    /// status files.
    pub fn errors(&self) -> Vec<DocumentError> {
        self.files
            .values()
            .flat_map(|entry| entry.errors.iter())
            .chain(self.statuses.values().flat_map(|entry| entry.errors.iter()))
            .cloned()
            .collect()
    }

    /// The file whose definition of `key` is in the registry.
    pub fn owner(&self, key: &ObjectKey) -> Option<&Path> {
        self.definers
            .get(key)
            .and_then(|files| files.last())
            .map(PathBuf::as_path)
    }

    fn drop_definer(&mut self, key: &ObjectKey, file: &Path) {
        if let Some(definers) = self.definers.get_mut(key) {
            definers.retain(|f| f != file);
            if definers.is_empty() {
                self.definers.remove(key);
            }
        }
    }

    /// The object the registry holds for each key; `pending` is a file entry
    /// taken out of `files` while it is being replaced.
    fn effective_many(
        &self,
        keys: &BTreeSet<ObjectKey>,
        pending: Option<(&Path, &FileEntry)>,
    ) -> BTreeMap<ObjectKey, Object> {
        let mut out = BTreeMap::new();
        for key in keys {
            let Some(owner) = self.owner(key) else {
                continue;
            };
            let entry = match pending {
                Some((file, entry)) if file == owner => Some(entry),
                _ => self.files.get(owner),
            };
            if let Some(object) = entry.and_then(|e| e.objects.get(key)) {
                let overlays = self.statuses.values().filter_map(|s| s.overlays.get(key));
                out.insert(key.clone(), apply_overlays(object, overlays));
            }
        }
        out
    }

    fn changes(
        &self,
        keys: &BTreeSet<ObjectKey>,
        before: BTreeMap<ObjectKey, Object>,
    ) -> Vec<Change> {
        let after = self.effective_many(keys, None);
        let mut changes = Vec::new();
        for key in keys {
            match (before.get(key), after.get(key)) {
                (_, Some(new)) if before.get(key) != Some(new) => {
                    changes.push(Change::Upsert(new.clone()))
                }
                (Some(_), None) => changes.push(Change::Delete(key.clone())),
                _ => {}
            }
        }
        changes
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
