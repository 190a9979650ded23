use std::time::Duration;

use mesh_api::ambit::waypoint::v1 as pb;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn policy(attempts: u32, codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts,
        codes: codes.to_vec(),
        backoff: Duration::from_millis(100),
    }
}

#[test]
fn codes_attempts_and_idempotency() {
    let p = policy(2, &[503, 429]);
    let cases = [
        (1, Outcome::Status(503), false, true),
        (1, Outcome::Status(429), false, true),
        (1, Outcome::Status(500), true, false),
        (1, Outcome::Status(200), true, false),
        (1, Outcome::ConnectFailed, false, true),
        (1, Outcome::Reset, false, false),
        (1, Outcome::Reset, true, true),
        (1, Outcome::Timeout, false, false),
        (1, Outcome::Timeout, true, true),
        (2, Outcome::Status(503), false, true),
        // Two retries after the first attempt: the third attempt is the last.
        (3, Outcome::Status(503), false, false),
        (3, Outcome::ConnectFailed, true, false),
        (0, Outcome::Status(503), true, false),
    ];
    for (attempt, outcome, idempotent, want) in cases {
        assert_eq!(
            should_retry(&p, attempt, &outcome, idempotent),
            want,
            "attempt {attempt} {outcome:?} idempotent={idempotent}"
        );
    }
}

#[test]
fn compile_defaults_and_errors() {
    let r = RetryPolicy::compile(&pb::Retry {
        attempts: 3,
        codes: vec![],
        backoff: None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        r,
        RetryPolicy {
            attempts: 3,
            codes: vec![502, 503, 504],
            backoff: Duration::from_millis(25)
        }
    );
    assert_eq!(
        RetryPolicy::compile(&pb::Retry {
            attempts: 0,
            codes: vec![503],
            backoff: None
        }),
        Ok(None)
    );
    let capped = RetryPolicy::compile(&pb::Retry {
        attempts: 1_000,
        codes: vec![],
        backoff: None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(capped.attempts, MAX_ATTEMPTS);
    let err = RetryPolicy::compile(&pb::Retry {
        attempts: 1,
        codes: vec![700],
        backoff: None,
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "retry.codes 700 is not a valid status");
}

#[test]
fn backoff_is_jittered_exponential_capped_at_ten_times_base() {
    let p = policy(10, &[503]);
    let mut rng = StdRng::seed_from_u64(1);
    for attempt in 1..=12u32 {
        let bound = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
            .min(Duration::from_secs(1));
        let mut max = Duration::ZERO;
        let mut min = Duration::MAX;
        for _ in 0..500 {
            let b = backoff(&p, attempt, &mut rng);
            assert!(b <= bound, "attempt {attempt}: {b:?} above {bound:?}");
            max = max.max(b);
            min = min.min(b);
        }
        // Full jitter spreads over the whole range.
        assert!(
            max > bound * 8 / 10,
            "attempt {attempt}: max {max:?} of {bound:?}"
        );
        assert!(
            min < bound * 2 / 10,
            "attempt {attempt}: min {min:?} of {bound:?}"
        );
    }
}

#[test]
fn budget_allows_min_retries_then_a_share_of_active_requests() {
    let budget = Budget::default();
    // No active requests: the minimum of 3 concurrent retries still holds.
    let permits: Vec<_> = (0..3)
        .map(|_| budget.try_retry().expect("within minimum"))
        .collect();
    assert!(
        budget.try_retry().is_none(),
        "fourth retry exceeds the minimum"
    );
    drop(permits);
    assert_eq!(budget.active_retries(), 0);
    // 50 active requests: 20% = 10 concurrent retries.
    let requests: Vec<_> = (0..50).map(|_| budget.start_request()).collect();
    assert_eq!(budget.active_requests(), 50);
    let permits: Vec<_> = std::iter::from_fn(|| budget.try_retry())
        .take(100)
        .collect();
    assert_eq!(permits.len(), 10);
    drop(permits.into_iter().next());
    assert!(
        budget.try_retry().is_some(),
        "a finished retry frees its share"
    );
    drop(requests);
    assert_eq!(budget.active_requests(), 0);
    let strict = Budget::new(0.0, 0);
    let _r = strict.start_request();
    assert!(strict.try_retry().is_none());
}

#[test]
fn budget_is_shared_across_threads() {
    let budget = Budget::new(0.5, 0);
    let _requests: Vec<_> = (0..100).map(|_| budget.start_request()).collect();
    let granted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                s.spawn(move || {
                    std::iter::from_fn(|| b.try_retry())
                        .take(100)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Vec<RetryPermit>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        all.iter().map(Vec::len).sum()
    });
    assert_eq!(granted, 50);
}
