//! The journal: one JSON line per thing made (namespace, process, file, pod
//! attachment), appended and synced before the runner goes on, so `ambit
//! down` finds everything even after the runner itself crashed mid-way.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const JOURNAL_FILE: &str = "journal.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who a process is, which decides the order `down` stops them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The pod runner (`ambit kubelet`): stopped first, so it starts nothing.
    Kubelet,
    /// A pod's process.
    Pod,
    /// istiod-lite, a node agent or a ztunnel.
    Mesh,
}

/// One thing made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "made", rename_all = "camelCase")]
pub enum Record {
    Netns {
        name: String,
    },
    #[serde(rename_all = "camelCase")]
    Process {
        role: Role,
        name: String,
        pid: u32,
        /// Start time in clock ticks since boot (`/proc/<pid>/stat`), so a
        /// reused pid is never signalled.
        start_time: u64,
    },
    /// A file made outside the state directory.
    File {
        path: PathBuf,
    },
    /// A pod's CNI ADD succeeded; `down` calls DEL with this result.
    #[serde(rename_all = "camelCase")]
    Attachment {
        pod: String,
        result: Value,
    },
}

/// The journal of one cluster's state directory.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            path: state_dir.join(JOURNAL_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Appends `record` and syncs it to disk.
    pub fn append(&self, record: &Record) -> Result<(), JournalError> {
        let failed = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(failed)?;
        // One write of one line: appends from the runner and `ambit up` do
        // not interleave.
        file.write_all(line.as_bytes()).map_err(failed)?;
        file.sync_data().map_err(failed)
    }

    /// Every record, in the order made. A torn last line (a crash during
    /// the write) is skipped: what it described was not made yet.
    pub fn read(&self) -> Result<Vec<Record>, JournalError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(JournalError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        Ok(parse_records(&text))
    }
}

pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        assert!(journal.read().unwrap().is_empty());
        let records = [
            Record::Netns { name: "n".into() },
            Record::Process {
                role: Role::Mesh,
                name: "istiod-lite".into(),
                pid: 7,
                start_time: 99,
            },
            Record::Attachment {
                pod: "a/b".into(),
                result: serde_json::json!({"ips": []}),
            },
        ];
        for r in &records {
            journal.append(r).unwrap();
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(b"{\"made\":\"netns\",\"na").unwrap();
        assert_eq!(journal.read().unwrap(), records);
    }
}
