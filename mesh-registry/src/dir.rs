//! The directory source: Kubernetes YAML files in a directory tree, watched live.
//!
//! `parse` reads one file's text (pure); `index` remembers which file defined
//! which object and turns a re-read into a registry `Change` batch (pure);
//! `source` does the file I/O and status files; `watch` runs the notify
//! watcher and debounce loop with a shutdown path.
//!
//! Sources are `*.yaml`/`*.yml` files anywhere below the directory, except
//! hidden ones (or under hidden directories) and `*.status.yaml`, which are
//! status files: istiod-lite writes conditions there, and a local cluster
//! runner writes pod status (IPs, phase) as a kubelet would. Of status
//! files only Pod documents are read, and only their `status` (`overlay`),
//! merged onto the Pod the sources define. A file with a refused document
//! keeps the objects it defined before, until it is valid again or deleted.
//!
//! Wiring: `DirSource::new(dir, registry)?.spawn()?`, then
//! `watch.synced().await?` before serving; `source.errors()` for `/debug`;
//! `source.write_status(&conditions)?` when conditions change;
//! `watch.shutdown(deadline).await` on exit.

mod index;
mod locate;
pub mod overlay;
pub mod parse;
mod scan;
mod source;
mod status;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

pub use parse::{DocumentError, DocumentProblem, ParsedFile, ParsedObject, parse_file};
pub use source::DirSource;
pub use watch::{DEBOUNCE, DirWatch};

/// What can go wrong running the directory source (refused documents are not
/// errors of the source: they are reported by `DirSource::errors`).
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot write status file {}: {source}", path.display())]
    WriteStatus {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the directory watcher stopped before its first scan finished")]
    StoppedBeforeSync,
    #[error("the directory watcher did not stop within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("the directory watcher task failed: {0}")]
    TaskFailed(String),
}
