//! The control-plane scale benchmark (`ambit-control-bench`): a generated
//! registry of 10,000 pods, 2,000 services and 1,000 policies; the time of a
//! full translation; the time from a one-pod change on disk until every one of
//! 100 delta ADS clients has it; the bytes each client got for that change;
//! and istiod-lite's peak RSS.

pub mod client;
pub mod generate;
pub mod run;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use istiod_lite::model::{Object, Store};
use istiod_lite::registry::dir::parse_file;
use istiod_lite::translate::{MeshConfig, Touched, Translator, translate};

/// Translation times in milliseconds.
pub struct TranslateTimes {
    /// Full translations of the whole store.
    pub full: Vec<f64>,
    /// Translations after one pod's label changed (incremental).
    pub one_pod: Vec<f64>,
    /// Freeing the previous store's maps, which the translator holds until
    /// the next change (the registry copies its maps on a change while the
    /// translator holds them).
    pub release_previous: Vec<f64>,
}

/// Reads the generated directory the way istiod-lite's directory source does,
/// then times `runs` full translations, and `runs` translations after a
/// one-pod change, as istiod-lite translates after a change.
pub fn translate_times(dir: &Path, runs: usize) -> anyhow::Result<TranslateTimes> {
    let mut store = Store::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed = parse_file(&path, &text);
        if let Some(error) = parsed.errors.first() {
            bail!("generated YAML refused: {error}");
        }
        for object in parsed.objects {
            store.upsert(object.object);
        }
    }
    let mesh = MeshConfig::default();
    let mut full = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let translation = translate(&store, &mesh);
        full.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(translation);
    }

    let mut translator = Translator::new(mesh);
    let mut store = Arc::new(store);
    translator.update(&store);
    let pods: Vec<_> = store.pods.keys().cloned().collect();
    let mut one_pod = Vec::with_capacity(runs);
    let mut release_previous = Vec::with_capacity(runs);
    for run in 0..runs.max(1) {
        let key = &pods[(run * 7919) % pods.len().max(1)];
        let mut pod = (*store.pods[key]).clone();
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert("version".into(), format!("timed-{run}"));
        let previous = store.clone();
        Arc::make_mut(&mut store).upsert(Object::Pod(Arc::new(pod)));
        let started = Instant::now();
        let touched = translator.update(&store);
        one_pod.push(started.elapsed().as_secs_f64() * 1000.0);
        if touched == Touched::All {
            bail!("a one-pod change was translated in full");
        }
        let started = Instant::now();
        drop(previous);
        release_previous.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(TranslateTimes {
        full,
        one_pod,
        release_previous,
    })
}
