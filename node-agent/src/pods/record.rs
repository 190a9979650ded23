//! The on-disk enrolment record: `<state-dir>/pods/<uid>.json`, written
//! through a temporary file, fsync and rename, so a crash leaves the old or
//! the new record, never half of one.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub container_id: String,
    /// The runtime's path (`CNI_NETNS`).
    pub netns_path: PathBuf,
    /// The namespace's identity when first seen, so a reused path is not
    /// mistaken for the pod's namespace after a restart.
    pub netns_dev: u64,
    pub netns_ino: u64,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub service_account: String,
    /// Whether rules are installed and ztunnel was told.
    pub enrolled: bool,
    /// Whether the registry has shown this pod (so its absence later means
    /// it was deleted, not that the registry is behind).
    #[serde(default)]
    pub seen_in_registry: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod record {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod record {path} is not valid: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The directory of records.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn open(state_dir: &Path) -> Result<RecordStore, RecordError> {
        let dir = state_dir.join("pods");
        fs::create_dir_all(&dir).map_err(|source| RecordError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(RecordStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, uid: &str) -> PathBuf {
        // Uids are [a-z0-9-]; anything else (a runtime's odd id) is escaped
        // so that no record can name a path outside the directory.
        let name: String = uid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_string()
                } else {
                    format!("%{:02x}", c as u32)
                }
            })
            .collect();
        self.dir.join(format!("{name}.json"))
    }

    pub fn write(&self, record: &PodRecord) -> Result<(), RecordError> {
        let path = self.path(&record.uid);
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let temporary = self.dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let body = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Invalid {
            path: path.clone(),
            source,
        })?;
        let mut file = fs::File::create(&temporary).map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&temporary, &path).map_err(io)
    }

    pub fn remove(&self, uid: &str) -> Result<(), RecordError> {
        let path = self.path(uid);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io { path, source }),
        }
    }

    /// Every readable record, and the errors of those that are not (they
    /// are left in place for a person to look at).
    pub fn load_all(&self) -> (Vec<PodRecord>, Vec<RecordError>) {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(source) => {
                errors.push(RecordError::Dir {
                    path: self.dir.clone(),
                    source,
                });
                return (records, errors);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(record) => records.push(record),
                    Err(source) => errors.push(RecordError::Invalid { path, source }),
                },
                Err(source) => errors.push(RecordError::Io { path, source }),
            }
        }
        (records, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            namespace: "shop".into(),
            name: "cart-0".into(),
            container_id: "c1".into(),
            netns_path: "/var/run/netns/cart".into(),
            netns_dev: 4,
            netns_ino: 4026532000,
            ips: vec!["10.1.0.5".parse().unwrap()],
            service_account: "cart".into(),
            enrolled: true,
            seen_in_registry: true,
        }
    }

    #[test]
    fn records_round_trip_and_odd_uids_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        store.write(&record("9f1c-aa")).unwrap();
        store.write(&record("../../etc/passwd")).unwrap();
        let mut changed = record("9f1c-aa");
        changed.enrolled = false;
        store.write(&changed).unwrap();
        fs::write(store.dir().join("broken.json"), b"{").unwrap();
        let (records, errors) = store.load_all();
        assert_eq!(records.len(), 2);
        assert!(records.contains(&changed));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("broken.json"),
            "{}",
            errors[0]
        );
        assert!(fs::read_dir(store.dir()).unwrap().all(|e| {
            let name = e.unwrap().file_name();
            !name.to_string_lossy().contains('/')
        }));
        store.remove("../../etc/passwd").unwrap();
        store.remove("../../etc/passwd").unwrap();
        assert_eq!(store.load_all().0, vec![changed]);
    }
}
