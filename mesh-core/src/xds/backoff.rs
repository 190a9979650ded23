//! Reconnect backoff (spec 3.1): 10 ms doubling to 15 s, with jitter so that
//! the nodes of a cluster do not reconnect in lock step after a control-plane
//! restart.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(10);
pub const MAX: Duration = Duration::from_secs(15);
/// Up to this fraction of a delay is taken off at random.
pub const JITTER: f64 = 0.25;

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt; `random` in `[0, 1)` picks the
    /// jitter (a parameter so the schedule is testable).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX);
        base.mul_f64(1.0 - JITTER * random.clamp(0.0, 1.0))
    }

    /// After a successful response the next failure starts from the beginning.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_10ms_to_a_15s_cap_and_resets() {
        let mut b = Backoff::default();
        let schedule: Vec<_> = (0..13).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(schedule[0], Duration::from_millis(10));
        assert_eq!(schedule[1], Duration::from_millis(20));
        assert_eq!(schedule[10], Duration::from_millis(10240));
        assert_eq!(schedule[11], MAX);
        assert_eq!(schedule[12], MAX);
        b.reset();
        assert_eq!(b.next_delay(0.0), INITIAL);
    }

    #[test]
    fn jitter_only_shortens_and_stays_bounded() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.0);
        }
        let d = b.next_delay(0.999);
        assert!(d <= Duration::from_millis(320), "{d:?}");
        assert!(d >= Duration::from_millis(240), "{d:?}");
        // Out-of-range randomness is clamped rather than producing a zero or negative delay.
        assert!(Backoff::default().next_delay(7.0) >= Duration::from_micros(7500));
    }
}
