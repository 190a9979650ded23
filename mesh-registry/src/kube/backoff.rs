//! How long a kind's watcher waits after a failed list or watch.

use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher::DefaultBackoff;

/// The retry delays of every kind's watcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// kube-runtime's default (client-go's reflector parameters: 800 ms
    /// doubling to 30 s, jittered, reset after two quiet minutes).
    #[default]
    KubeDefault,
    /// Doubling from `initial` up to `max`, without jitter; for callers that
    /// need predictable retries (tests, a local cluster).
    Exponential { initial: Duration, max: Duration },
}

impl BackoffPolicy {
    pub fn build(self) -> Box<dyn Backoff> {
        match self {
            BackoffPolicy::KubeDefault => Box::new(DefaultBackoff::default()),
            BackoffPolicy::Exponential { initial, max } => Box::new(Doubling {
                initial,
                max,
                next: initial,
            }),
        }
    }
}

/// A doubling delay, capped; reset to `initial` after a success.
#[derive(Debug)]
struct Doubling {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(2).min(self.max);
        Some(delay)
    }
}

impl Backoff for Doubling {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_its_cap_and_resets() {
        let mut backoff = BackoffPolicy::Exponential {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(35),
        }
        .build();
        let delays: Vec<_> = backoff.by_ref().take(4).collect();
        assert_eq!(delays, [10, 20, 35, 35].map(Duration::from_millis).to_vec());
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn kube_default_never_gives_up() {
        let mut backoff = BackoffPolicy::KubeDefault.build();
        assert!(
            backoff
                .by_ref()
                .take(20)
                .all(|d| d <= Duration::from_secs(60))
        );
    }
}
