//! The live part of the directory source: a notify watcher feeding a tokio
//! task that gathers changed paths for a short debounce window, then has the
//! source re-read only those. Editors that save by writing a temporary file
//! and renaming it over the original show up as a rename whose target is the
//! source file, which is re-read like any change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::DirError;
use super::scan::is_hidden;
use super::source::DirSource;

/// How long to gather events before re-reading: long enough that a save
/// (truncate, write, close, or write-and-rename) is seen as one change, short
/// enough to stay well inside the 200 ms from write to store.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

/// The running watcher. Dropping it stops the task too; `shutdown` also
/// waits for it.
#[derive(Debug)]
pub struct DirWatch {
    stop: Option<oneshot::Sender<()>>,
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// What a batch of events asks for.
#[derive(Debug, Default, PartialEq)]
struct Pending {
    everything: bool,
    paths: BTreeSet<PathBuf>,
}

impl DirSource {
    /// Starts watching (before the first scan, so nothing written during it
    /// is missed), then scans the tree in a task; `DirWatch::synced`
    /// resolves after that scan. Must be called inside a tokio runtime.
    pub fn spawn(&self) -> Result<DirWatch, DirError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // The receiver is gone only when the task has stopped.
            let _ = events_tx.send(event);
        })
        .map_err(|source| self.watch_error(source))?;
        watcher
            .watch(self.root(), RecursiveMode::Recursive)
            .map_err(|source| self.watch_error(source))?;

        let (stop_tx, stop_rx) = oneshot::channel();
        let (synced_tx, synced_rx) = watch::channel(false);
        let source = self.clone();
        let task = tokio::spawn(async move {
            // The watcher lives as long as the task.
            let _watcher = watcher;
            run(source, events_rx, stop_rx, synced_tx).await;
        });
        Ok(DirWatch {
            stop: Some(stop_tx),
            synced: synced_rx,
            task,
        })
    }

    fn watch_error(&self, source: notify::Error) -> DirError {
        DirError::Watch {
            path: self.root().to_path_buf(),
            source,
        }
    }
}

impl DirWatch {
    /// Resolves once the first full scan is in the registry.
    pub async fn synced(&self) -> Result<(), DirError> {
        let mut synced = self.synced.clone();
        synced
            .wait_for(|done| *done)
            .await
            .map(|_| ())
            .map_err(|_| DirError::StoppedBeforeSync)
    }

    /// Stops the watcher and waits at most `deadline` for its task to end.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<(), DirError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(deadline, &mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DirError::TaskFailed(e.to_string())),
            Err(_) => {
                self.task.abort();
                Err(DirError::ShutdownTimeout(deadline))
            }
        }
    }
}

async fn run(
    source: DirSource,
    mut events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    mut stop: oneshot::Receiver<()>,
    synced: watch::Sender<bool>,
) {
    let root = source.root().to_path_buf();
    let mut pending = Pending {
        everything: true,
        paths: BTreeSet::new(),
    };
    let mut first = true;
    loop {
        if pending.everything || !pending.paths.is_empty() {
            let batch = std::mem::take(&mut pending);
            let paths = if batch.everything {
                BTreeSet::from([root.clone()])
            } else {
                batch.paths
            };
            // File reads block; keep them off the async workers.
            let reader = source.clone();
            let read = tokio::task::spawn_blocking(move || reader.rescan(&paths));
            tokio::select! {
                _ = &mut stop => return,
                result = read => {
                    if let Err(e) = result {
                        tracing::error!("reading the directory failed: {e}");
                    }
                }
            }
            if first {
                first = false;
                synced.send_replace(true);
                tracing::info!(dir = %root.display(), "directory source synced");
            }
        }

        // Wait for the first event of the next batch, then gather more for
        // the debounce window.
        tokio::select! {
            _ = &mut stop => return,
            event = events.recv() => match event {
                Some(event) => note(&root, event, &mut pending),
                None => return,
            },
        }
        let window_end = Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(window_end) => break,
                event = events.recv() => match event {
                    Some(event) => note(&root, event, &mut pending),
                    None => return,
                },
            }
        }
    }
}

/// Adds what one watcher event asks for to `pending`.
fn note(root: &Path, event: notify::Result<Event>, pending: &mut Pending) {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!("directory watcher error, re-reading everything: {e}");
            pending.everything = true;
            return;
        }
    };
    if event.need_rescan() {
        pending.everything = true;
        return;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return,
        _ => {}
    }
    for path in event.paths {
        if is_hidden(root, &path) {
            // A mounted ConfigMap swaps its `..data` link to publish new
            // files; the visible names do not change, so re-read them all.
            if path.components().any(|c| c.as_os_str() == "..data") {
                pending.everything = true;
            }
            continue;
        }
        pending.paths.insert(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut event = Event::new(kind);
        for p in paths {
            event = event.add_path(PathBuf::from(p));
        }
        Ok(event)
    }

    #[test]
    fn notes_source_and_status_paths_and_ignores_hidden_and_reads() {
        let root = Path::new("/cfg");
        let mut pending = Pending::default();
        note(
            root,
            event(EventKind::Modify(ModifyKind::Any), &["/cfg/a.yaml"]),
            &mut pending,
        );
        note(
            root,
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/cfg/.a.yaml.tmp", "/cfg/b.yaml"],
            ),
            &mut pending,
        );
        note(
            root,
            event(EventKind::Create(CreateKind::Any), &["/cfg/a.status.yaml"]),
            &mut pending,
        );
        note(
            root,
            event(EventKind::Access(AccessKind::Any), &["/cfg/c.yaml"]),
            &mut pending,
        );
        note(
            root,
            event(EventKind::Create(CreateKind::Folder), &["/cfg/sub"]),
            &mut pending,
        );
        assert_eq!(
            pending,
            Pending {
                everything: false,
                paths: [
                    "/cfg/a.status.yaml",
                    "/cfg/a.yaml",
                    "/cfg/b.yaml",
                    "/cfg/sub"
                ]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            }
        );
    }

    #[test]
    fn a_configmap_swap_or_a_lost_event_rereads_everything() {
        let root = Path::new("/cfg");
        let mut pending = Pending::default();
        note(
            root,
            event(EventKind::Create(CreateKind::Any), &["/cfg/..data"]),
            &mut pending,
        );
        assert!(pending.everything);
        let mut pending = Pending::default();
        note(
            root,
            Err(notify::Error::generic("queue overflow")),
            &mut pending,
        );
        assert!(pending.everything);
    }
}
