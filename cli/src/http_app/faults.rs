//! Which requests the HTTP server fails on purpose. Deterministic plans
//! (every Nth, the first N) make retry tests exact; a rate is for soak runs.

use std::fmt;

use http::StatusCode;

/// When to answer with the failure status instead of 200.
#[derive(Clone, Debug, PartialEq)]
pub enum FailPlan {
    Never,
    /// Requests N, 2N, 3N, ... (1-based) fail.
    Every(u64),
    /// The first N requests fail, then every request succeeds.
    First(u64),
    /// Each request fails with this probability (0.0..=1.0).
    Rate(f64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    #[error("--fail-every must be at least 1 (1 fails every request)")]
    ZeroEvery,
    #[error("--fail-rate must be between 0 and 1, got {0}")]
    RateOutOfRange(f64),
    #[error("--fail-status must be a 4xx or 5xx status, got {0}")]
    NotAnError(u16),
    #[error("give at most one of --fail-every, --fail-first and --fail-rate")]
    Conflicting,
}

/// The plan and the status failed requests get.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    pub plan: FailPlan,
    pub status: StatusCode,
}

impl Faults {
    pub const NONE: Faults = Faults {
        plan: FailPlan::Never,
        status: StatusCode::SERVICE_UNAVAILABLE,
    };

    /// From the command line's `--fail-every`, `--fail-first`, `--fail-rate`
    /// and `--fail-status`.
    pub fn from_flags(
        every: Option<u64>,
        first: Option<u64>,
        rate: Option<f64>,
        status: u16,
    ) -> Result<Faults, FaultError> {
        let plan = match (every, first, rate) {
            (None, None, None) => FailPlan::Never,
            (Some(0), None, None) => return Err(FaultError::ZeroEvery),
            (Some(n), None, None) => FailPlan::Every(n),
            (None, Some(n), None) => FailPlan::First(n),
            (None, None, Some(r)) if (0.0..=1.0).contains(&r) => FailPlan::Rate(r),
            (None, None, Some(r)) => return Err(FaultError::RateOutOfRange(r)),
            _ => return Err(FaultError::Conflicting),
        };
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or(FaultError::NotAnError(status))?;
        Ok(Faults { plan, status })
    }

    /// Whether request number `index` (1-based, in arrival order) fails;
    /// `draw` is a uniform sample in 0..1, used only by `Rate`.
    pub fn fails(&self, index: u64, draw: f64) -> bool {
        match self.plan {
            FailPlan::Never => false,
            FailPlan::Every(n) => index.is_multiple_of(n),
            FailPlan::First(n) => index <= n,
            FailPlan::Rate(r) => draw < r,
        }
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status.as_u16();
        match self.plan {
            FailPlan::Never => write!(f, "no injected failures"),
            FailPlan::Every(n) => write!(f, "every {n}th request gets {status}"),
            FailPlan::First(n) => write!(f, "the first {n} requests get {status}"),
            FailPlan::Rate(r) => write!(f, "{r} of requests get {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_fails() {
        let faults = Faults::from_flags(Some(3), None, None, 503).unwrap();
        let failed: Vec<u64> = (1..=9).filter(|i| faults.fails(*i, 0.0)).collect();
        assert_eq!(failed, [3, 6, 9]);
    }

    #[test]
    fn the_first_n_requests_fail() {
        let faults = Faults::from_flags(None, Some(2), None, 500).unwrap();
        let failed: Vec<u64> = (1..=5).filter(|i| faults.fails(*i, 0.0)).collect();
        assert_eq!(failed, [1, 2]);
        assert_eq!(faults.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_rate_compares_the_draw() {
        let faults = Faults::from_flags(None, None, Some(0.25), 503).unwrap();
        assert!(faults.fails(1, 0.1));
        assert!(!faults.fails(1, 0.3));
    }

    #[test]
    fn no_flags_never_fail() {
        let faults = Faults::from_flags(None, None, None, 503).unwrap();
        assert!((1..100).all(|i| !faults.fails(i, 0.0)));
    }

    #[test]
    fn bad_flags_are_named() {
        assert_eq!(
            Faults::from_flags(Some(0), None, None, 503),
            Err(FaultError::ZeroEvery)
        );
        assert_eq!(
            Faults::from_flags(None, None, Some(1.5), 503),
            Err(FaultError::RateOutOfRange(1.5))
        );
        assert_eq!(
            Faults::from_flags(None, None, None, 200),
            Err(FaultError::NotAnError(200))
        );
        assert_eq!(
            Faults::from_flags(Some(2), Some(2), None, 503),
            Err(FaultError::Conflicting)
        );
    }
}
