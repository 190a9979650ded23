//! Endpoint choice per request, and outlier ejection.
//!
//! Choice is power-of-two-choices: two distinct endpoints are drawn at
//! random from the eligible candidates and the one with the lower cost wins,
//! cost = (outstanding requests + 1) x EWMA latency. Two random draws avoid
//! the herd that "always the least loaded" causes when many requests decide
//! on the same counts at once, cost O(1) per request, and weighting the
//! count by latency moves load away from a slow endpoint before its queue
//! grows. The EWMA decays with a 10 s time constant, so an endpoint that
//! recovers is trusted again within seconds.
//!
//! Outlier ejection: `consecutive_failures` gateway failures in a row (502,
//! 503, 504 or no connection; default 5) eject an endpoint for 30 s times
//! the number of times it was ejected (capped at 300 s; the multiplier
//! decays by one per 30 s healthy). At most half of the candidates of a
//! pick are treated as ejected (those whose ejection ends last); a single
//! candidate, or a set of all-ejected ones, is still picked from.
//!
//! Time comes from a `Clock`, so tests advance it instead of sleeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;

pub use crate::outcome::Outcome;

/// An endpoint: its address.
pub type EndpointKey = SocketAddr;

/// Where the balancer reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now: Mutex::new(Instant::now()),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Balancer settings.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// Gateway failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time per ejection so far.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Latency assumed for an endpoint not yet measured.
    pub default_latency: Duration,
    /// Latency recorded for a failed attempt, so that an endpoint failing
    /// fast does not look fast.
    pub failure_penalty: Duration,
    /// EWMA time constant.
    pub decay: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            default_latency: Duration::from_millis(10),
            failure_penalty: Duration::from_secs(1),
            decay: Duration::from_secs(10),
        }
    }
}

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BalancerConfig,
    clock: Arc<dyn Clock>,
    endpoints: RwLock<HashMap<EndpointKey, Arc<Endpoint>>>,
}

#[derive(Debug)]
struct Endpoint {
    outstanding: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// Seconds; `None` until the first measurement.
    ewma: Option<f64>,
    last_sample: Option<Instant>,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer::new(BalancerConfig::default(), Arc::new(SystemClock))
    }
}

impl Balancer {
    pub fn new(config: BalancerConfig, clock: Arc<dyn Clock>) -> Self {
        Balancer {
            inner: Arc::new(Inner {
                config,
                clock,
                endpoints: RwLock::new(HashMap::new()),
            }),
        }
    }

    fn endpoint(&self, key: EndpointKey) -> Arc<Endpoint> {
        if let Some(e) = self
            .inner
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return e.clone();
        }
        self.inner
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    outstanding: AtomicU32::new(0),
                    health: Mutex::new(Health::default()),
                })
            })
            .clone()
    }

    fn lookup(&self, key: &EndpointKey) -> Option<Arc<Endpoint>> {
        self.inner
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets endpoints `keep` rejects (call when workload discovery
    /// removes endpoints, so state does not grow without bound).
    pub fn retain(&self, keep: impl Fn(&EndpointKey) -> bool) {
        self.inner
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }

    /// Whether `key` is ejected now.
    pub fn is_ejected(&self, key: &EndpointKey) -> bool {
        let now = self.inner.clock.now();
        self.lookup(key).is_some_and(|e| {
            e.health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ejected_until
                .is_some_and(|t| t > now)
        })
    }

    /// Requests outstanding at `key`.
    pub fn outstanding(&self, key: &EndpointKey) -> u32 {
        self.lookup(key)
            .map_or(0, |e| e.outstanding.load(Ordering::Relaxed))
    }

    /// Chooses an endpoint among `candidates` (see the module docs).
    pub fn pick(&self, candidates: &[EndpointKey], rng: &mut impl Rng) -> Option<EndpointKey> {
        match candidates.len() {
            0 => return None,
            1 => return Some(candidates[0]),
            _ => {}
        }
        let now = self.inner.clock.now();
        // (candidate, cost, ejected until)
        let mut scored: Vec<(EndpointKey, f64, Option<Instant>)> = candidates
            .iter()
            .map(|&k| match self.lookup(&k) {
                None => (k, self.inner.config.default_latency.as_secs_f64(), None),
                Some(e) => {
                    let h = e.health.lock().unwrap_or_else(|e| e.into_inner());
                    let latency = h
                        .ewma
                        .unwrap_or(self.inner.config.default_latency.as_secs_f64());
                    let outstanding = f64::from(e.outstanding.load(Ordering::Relaxed));
                    let until = h.ejected_until.filter(|&t| t > now);
                    (k, (outstanding + 1.0) * latency, until)
                }
            })
            .collect();
        let max_ejected = candidates.len() / 2;
        let mut ejected: Vec<usize> = (0..scored.len())
            .filter(|&i| scored[i].2.is_some())
            .collect();
        if ejected.len() > max_ejected {
            // Readmit those whose ejection ends soonest.
            ejected.sort_by_key(|&i| scored[i].2);
            let readmit = ejected.len() - max_ejected;
            for &i in &ejected[..readmit] {
                scored[i].2 = None;
            }
        }
        scored.retain(|s| s.2.is_none());
        let n = scored.len();
        let (a, b) = match n {
            0 => return None,
            1 => return Some(scored[0].0),
            _ => {
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                (a, b)
            }
        };
        Some(if scored[b].1 < scored[a].1 {
            scored[b].0
        } else {
            scored[a].0
        })
    }

    /// Starts a request to `key`: it counts as outstanding until the guard
    /// is finished or dropped (a dropped guard records nothing else).
    pub fn start(&self, key: EndpointKey) -> InFlight {
        let endpoint = self.endpoint(key);
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            inner: self.inner.clone(),
            endpoint,
            done: false,
        }
    }
}

/// An outstanding request to one endpoint.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
    endpoint: Arc<Endpoint>,
    done: bool,
}

impl InFlight {
    /// Records how the request ended: its latency feeds the EWMA (failures
    /// count as `failure_penalty` at least) and gateway failures count
    /// towards ejection.
    pub fn finish(mut self, outcome: Outcome, latency: Duration) {
        self.done = true;
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        let config = &self.inner.config;
        let now = self.inner.clock.now();
        let failed = outcome.is_gateway_failure();
        let sample = if failed {
            latency.max(config.failure_penalty)
        } else {
            latency
        }
        .as_secs_f64();
        let mut h = self
            .endpoint
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.ewma = Some(match (h.ewma, h.last_sample) {
            (Some(old), Some(last)) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                let w = (-dt / config.decay.as_secs_f64().max(1e-9)).exp();
                old * w + sample * (1.0 - w)
            }
            _ => sample,
        });
        h.last_sample = Some(now);
        if !failed {
            h.consecutive_failures = 0;
            return;
        }
        h.consecutive_failures += 1;
        let ejected_now = h.ejected_until.is_some_and(|t| t > now);
        if h.consecutive_failures >= config.consecutive_failures.max(1) && !ejected_now {
            // The multiplier decays by one per base period spent healthy
            // since the last ejection ended.
            if let Some(ended) = h.ejected_until {
                let healthy = now.saturating_duration_since(ended);
                let periods =
                    (healthy.as_secs_f64() / config.base_ejection.as_secs_f64().max(1e-9)) as u32;
                h.ejections = h.ejections.saturating_sub(periods);
            }
            h.ejections = h.ejections.saturating_add(1);
            let time = config
                .base_ejection
                .saturating_mul(h.ejections)
                .min(config.max_ejection);
            h.ejected_until = Some(now + time);
            h.consecutive_failures = 0;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
