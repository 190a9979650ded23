//! Retry decisions: which outcomes are retried, how long to wait between
//! attempts, and a shared budget that keeps retries from multiplying load on
//! a backend that is already failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

pub use crate::outcome::Outcome;
use crate::route::RouteError;

/// Default statuses retried when a route's retry names none.
pub const DEFAULT_CODES: [u16; 3] = [502, 503, 504];
/// Default base back-off.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Attempts above this are capped: more retries than this only add load.
pub const MAX_ATTEMPTS: u32 = 10;

/// A rule's compiled retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Response statuses retried.
    pub codes: Vec<u16>,
    /// Base back-off.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Compiles a route's `Retry` with the proto's defaults: no codes = 502,
    /// 503, 504; no back-off = 25 ms. `attempts` above `MAX_ATTEMPTS` are
    /// capped. Returns `Ok(None)` when the policy retries nothing.
    pub fn compile(r: &mesh_api::ambit::waypoint::v1::Retry) -> Result<Option<Self>, RouteError> {
        let mut codes = Vec::with_capacity(r.codes.len());
        for &c in &r.codes {
            if !(100..=599).contains(&c) {
                return Err(RouteError::Status {
                    field: "retry.codes",
                    status: c,
                });
            }
            codes.push(c as u16);
        }
        if codes.is_empty() {
            codes = DEFAULT_CODES.to_vec();
        }
        let backoff = match &r.backoff {
            None => DEFAULT_BACKOFF,
            Some(d) => crate::route::duration("retry.backoff", d)?,
        };
        let backoff = if backoff.is_zero() {
            DEFAULT_BACKOFF
        } else {
            backoff
        };
        if r.attempts == 0 {
            return Ok(None);
        }
        Ok(Some(RetryPolicy {
            attempts: r.attempts.min(MAX_ATTEMPTS),
            codes,
            backoff,
        }))
    }
}

/// Whether to try again after attempt number `attempt` (1 = the first
/// attempt) ended with `outcome`.
///
/// - a status is retried when it is one of the policy's codes (the backend
///   answered, so the request is known to be replayable by the caller);
/// - a connection failure is always retried (nothing was sent);
/// - a reset or a per-attempt timeout is retried only when the request is
///   idempotent or was not started, since the backend may have acted on it.
pub fn should_retry(
    policy: &RetryPolicy,
    attempt: u32,
    outcome: &Outcome,
    idempotent_or_unstarted: bool,
) -> bool {
    if attempt == 0 || attempt > policy.attempts {
        return false;
    }
    match outcome {
        Outcome::Status(s) => policy.codes.contains(s),
        Outcome::ConnectFailed => true,
        Outcome::Reset | Outcome::Timeout => idempotent_or_unstarted,
    }
}

/// The wait before retry number `attempt` (1 = the first retry):
/// exponential (base, 2 x base, 4 x base, ...) capped at ten times the base,
/// with full jitter (uniform between zero and that bound) so that clients
/// failing together do not retry together.
pub fn backoff(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let base = policy.backoff;
    let cap = base.saturating_mul(10);
    let shift = attempt.saturating_sub(1).min(20);
    let bound = base.saturating_mul(1u32 << shift).min(cap);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// Budget defaults (Envoy's): retries may be at most 20% of active requests,
/// but 3 concurrent retries are always allowed.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_RETRIES: u64 = 3;

/// A retry budget shared by every request to one destination (or the whole
/// waypoint): it counts active requests and active retries.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    ratio: f64,
    min_retries: u64,
    active_requests: AtomicU64,
    active_retries: AtomicU64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_BUDGET_RATIO, DEFAULT_MIN_RETRIES)
    }
}

impl Budget {
    /// `ratio` of active requests may be retries (clamped to 0..=1; NaN = 0),
    /// and at least `min_retries` concurrent retries are allowed.
    pub fn new(ratio: f64, min_retries: u64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Budget {
            inner: Arc::new(BudgetInner {
                ratio,
                min_retries,
                active_requests: AtomicU64::new(0),
                active_retries: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a request as active until the guard drops.
    pub fn start_request(&self) -> RequestGuard {
        self.inner.active_requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            inner: self.inner.clone(),
        }
    }

    /// A permit for one retry while it runs, or `None` when the budget is
    /// spent.
    pub fn try_retry(&self) -> Option<RetryPermit> {
        let active = self.inner.active_requests.load(Ordering::Relaxed);
        let limit = ((active as f64 * self.inner.ratio) as u64).max(self.inner.min_retries);
        self.inner
            .active_retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(RetryPermit {
            inner: self.inner.clone(),
        })
    }

    /// Requests active now.
    pub fn active_requests(&self) -> u64 {
        self.inner.active_requests.load(Ordering::Relaxed)
    }

    /// Retries active now.
    pub fn active_retries(&self) -> u64 {
        self.inner.active_retries.load(Ordering::Relaxed)
    }
}

/// An active request; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard {
    inner: Arc<BudgetInner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.inner.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running retry; dropping it returns its share of the budget.
#[derive(Debug)]
pub struct RetryPermit {
    inner: Arc<BudgetInner>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.inner.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
