//! The task that keeps `JwksCache` filled: it follows the store for the
//! sources RequestAuthentications need (`wanted`), fetches each one, fetches
//! it again every `refresh`, retries a failure with back-off, and publishes
//! the cache whenever an entry changes, which makes the snapshot publisher
//! translate and push again.
//!
//! A refresh that fails after a success keeps the last good key set (as
//! Istio does): the issuer's keys rotate slowly, and dropping them would
//! refuse every token because of one unreachable moment. A source never
//! fetched successfully is `Failed`, which translation sends as no keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatcher;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fetch::{FetchError, Fetcher};
use super::{JwksCache, JwksEntry, JwksSource, next_fetch, wanted};
use crate::model::Store;

/// How often and how persistently key sets are fetched.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Period of fetching a key set again after a success.
    pub refresh: Duration,
    /// Wait after the first failure; it doubles with each further one.
    pub retry_base: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            refresh: Duration::from_secs(20 * 60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(5 * 60),
        }
    }
}

/// Fetch state of one wanted source.
struct Slot {
    timeout: Duration,
    due: Instant,
    failures: u32,
    fetching: bool,
}

type Fetched = Result<(String, String), FetchError>;

/// Runs until `drain` starts draining or the store's sender is dropped.
pub async fn run(
    mut stores: watch::Receiver<Arc<Store>>,
    fetcher: Fetcher,
    config: ResolverConfig,
    out: watch::Sender<Arc<JwksCache>>,
    drain: DrainWatcher,
) {
    let draining = drain.draining();
    tokio::pin!(draining);
    let mut slots: BTreeMap<JwksSource, Slot> = BTreeMap::new();
    let mut cache = JwksCache::default();
    let mut fetches: JoinSet<Fetched> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, JwksSource> = HashMap::new();
    let mut store_changed = true;
    loop {
        if store_changed {
            let want = wanted(&stores.borrow_and_update());
            follow(&mut slots, &mut cache, want);
            store_changed = false;
        }
        let now = Instant::now();
        for (source, slot) in slots.iter_mut() {
            if slot.fetching || slot.due > now {
                continue;
            }
            slot.fetching = true;
            let (fetcher, source_owned, timeout) = (fetcher.clone(), source.clone(), slot.timeout);
            let handle =
                fetches.spawn(async move { fetcher.key_set(&source_owned, timeout).await });
            in_flight.insert(handle.id(), source.clone());
        }
        publish(&out, &cache);
        let next_due = slots.values().filter(|s| !s.fetching).map(|s| s.due).min();
        let wake = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut draining => return,
            changed = stores.changed() => {
                if changed.is_err() {
                    return;
                }
                store_changed = true;
            }
            Some(joined) = fetches.join_next_with_id() => {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    Err(e) => (e.id(), Err(FetchError::Body(format!("the fetch task failed: {e}")))),
                };
                if let Some(source) = in_flight.remove(&id) {
                    record(&mut slots, &mut cache, &config, source, result);
                }
            }
            _ = wake => {}
        }
    }
}

/// Brings the slots and the cache in line with the wanted sources: new ones
/// are due now, gone ones are forgotten, timeouts follow the rules.
fn follow(
    slots: &mut BTreeMap<JwksSource, Slot>,
    cache: &mut JwksCache,
    want: BTreeMap<JwksSource, Duration>,
) {
    slots.retain(|source, _| want.contains_key(source));
    cache.entries.retain(|source, _| want.contains_key(source));
    let now = Instant::now();
    for (source, timeout) in want {
        slots
            .entry(source)
            .and_modify(|slot| slot.timeout = timeout)
            .or_insert(Slot {
                timeout,
                due: now,
                failures: 0,
                fetching: false,
            });
    }
}

/// Records a fetch's outcome and schedules the next one.
fn record(
    slots: &mut BTreeMap<JwksSource, Slot>,
    cache: &mut JwksCache,
    config: &ResolverConfig,
    source: JwksSource,
    result: Fetched,
) {
    // A source no longer wanted is dropped with its result.
    let Some(slot) = slots.get_mut(&source) else {
        return;
    };
    slot.fetching = false;
    match result {
        Ok((uri, jwks)) => {
            slot.failures = 0;
            let entry = JwksEntry::Fetched { uri, jwks };
            if cache.entries.get(&source) != Some(&entry) {
                tracing::info!(%source, "key set fetched");
            }
            cache.entries.insert(source, entry);
        }
        Err(error) => {
            slot.failures = slot.failures.saturating_add(1);
            let kept = matches!(cache.entries.get(&source), Some(JwksEntry::Fetched { .. }));
            tracing::warn!(%source, %error, failures = slot.failures, kept_last_good = kept, "fetching a key set");
            if !kept {
                cache
                    .entries
                    .insert(source, JwksEntry::Failed(error.to_string()));
            }
        }
    }
    let wait = next_fetch(
        slot.failures,
        config.refresh,
        config.retry_base,
        config.retry_max,
    );
    slot.due = Instant::now() + wait;
}

fn publish(out: &watch::Sender<Arc<JwksCache>>, cache: &JwksCache) {
    out.send_if_modified(|current| {
        let changed = **current != *cache;
        if changed {
            *current = Arc::new(cache.clone());
        }
        changed
    });
}
