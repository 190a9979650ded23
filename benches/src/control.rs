//! The control-plane scale benchmark (`ambit-control-bench`): a generated
//! registry of 10,000 pods, 2,000 services and 1,000 policies; the time of a
//! full translation; the time from a one-pod change on disk until every one of
//! 100 delta ADS clients has it; the bytes each client got for that change;
//! and istiod-lite's peak RSS.

pub mod client;
pub mod generate;
pub mod run;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use istiod_lite::model::Store;
use istiod_lite::registry::dir::parse_file;
use istiod_lite::translate::{MeshConfig, translate};

/// Reads the generated directory the way istiod-lite's directory source does,
/// then times `runs` full translations (milliseconds each).
pub fn translate_times(dir: &Path, runs: usize) -> anyhow::Result<Vec<f64>> {
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
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let translation = translate(&store, &mesh);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(translation);
    }
    Ok(times)
}
