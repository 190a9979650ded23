use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn ep(i: u8) -> EndpointKey {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

fn balancer() -> (Balancer, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    (
        Balancer::new(BalancerConfig::default(), clock.clone()),
        clock,
    )
}

fn counts(b: &Balancer, candidates: &[EndpointKey], n: usize) -> HashMap<EndpointKey, usize> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut c = HashMap::new();
    for _ in 0..n {
        *c.entry(b.pick(candidates, &mut rng).expect("pick"))
            .or_default() += 1;
    }
    c
}

fn fail(b: &Balancer, key: EndpointKey, times: u32) {
    for _ in 0..times {
        b.start(key)
            .finish(Outcome::Status(503), Duration::from_millis(1));
    }
}

#[test]
fn prefers_fewer_outstanding_requests() {
    let (b, _) = balancer();
    let eps = [ep(1), ep(2)];
    let _busy: Vec<_> = (0..10).map(|_| b.start(ep(1))).collect();
    assert_eq!(b.outstanding(&ep(1)), 10);
    let c = counts(&b, &eps, 1_000);
    // With two candidates both are always drawn: the idle one always wins.
    assert_eq!(c.get(&ep(2)), Some(&1_000));
    drop(_busy);
    assert_eq!(b.outstanding(&ep(1)), 0, "dropped guards stop counting");
}

#[test]
fn prefers_lower_ewma_latency() {
    let (b, clock) = balancer();
    for _ in 0..20 {
        b.start(ep(1))
            .finish(Outcome::Status(200), Duration::from_millis(200));
        b.start(ep(2))
            .finish(Outcome::Status(200), Duration::from_millis(5));
        clock.advance(Duration::from_millis(100));
    }
    let c = counts(&b, &[ep(1), ep(2), ep(3)], 3_000);
    // ep(3) is unmeasured (default 10 ms): it wins against ep(1) but not ep(2).
    assert!(c.get(&ep(1)).copied().unwrap_or(0) == 0, "{c:?}");
    assert!(c[&ep(2)] > c[&ep(3)], "{c:?}");
    // Once ep(1) recovers, the EWMA follows within a few decay periods.
    for _ in 0..50 {
        clock.advance(Duration::from_secs(1));
        b.start(ep(1))
            .finish(Outcome::Status(200), Duration::from_millis(1));
    }
    let c = counts(&b, &[ep(1), ep(2)], 1_000);
    assert_eq!(c.get(&ep(1)), Some(&1_000), "{c:?}");
}

#[test]
fn ejects_after_consecutive_gateway_failures_and_returns() {
    let (b, clock) = balancer();
    let eps = [ep(1), ep(2), ep(3), ep(4)];
    fail(&b, ep(1), 4);
    b.start(ep(1))
        .finish(Outcome::Status(500), Duration::from_millis(1));
    fail(&b, ep(1), 4);
    assert!(
        !b.is_ejected(&ep(1)),
        "a non-gateway status resets the count"
    );
    b.start(ep(1))
        .finish(Outcome::ConnectFailed, Duration::from_millis(1));
    assert!(
        b.is_ejected(&ep(1)),
        "fifth gateway failure in a row ejects"
    );
    let c = counts(&b, &eps, 2_000);
    assert_eq!(
        c.get(&ep(1)),
        None,
        "ejected endpoint is never picked: {c:?}"
    );
    clock.advance(Duration::from_secs(29));
    assert!(b.is_ejected(&ep(1)));
    clock.advance(Duration::from_secs(1));
    assert!(!b.is_ejected(&ep(1)), "returned after 30 s");
    // Ejected again soon after: twice the base time.
    fail(&b, ep(1), 5);
    clock.advance(Duration::from_secs(59));
    assert!(b.is_ejected(&ep(1)));
    clock.advance(Duration::from_secs(1));
    assert!(!b.is_ejected(&ep(1)), "returned after 60 s");
}

#[test]
fn timeouts_and_resets_do_not_eject() {
    let (b, _) = balancer();
    for _ in 0..10 {
        b.start(ep(1))
            .finish(Outcome::Reset, Duration::from_millis(1));
        b.start(ep(1))
            .finish(Outcome::Timeout, Duration::from_millis(1));
    }
    assert!(!b.is_ejected(&ep(1)));
}

#[test]
fn at_most_half_of_the_candidates_are_skipped() {
    let (b, clock) = balancer();
    let eps = [ep(1), ep(2), ep(3), ep(4)];
    fail(&b, ep(1), 5);
    clock.advance(Duration::from_secs(1));
    fail(&b, ep(2), 5);
    clock.advance(Duration::from_secs(1));
    fail(&b, ep(3), 5);
    assert!(eps[..3].iter().all(|e| b.is_ejected(e)));
    // Three ejected of four, at most two skipped: the one whose ejection
    // ends first (ep 1) is eligible again. It is slow (failures count as 1 s
    // latency), so the healthy ep 4 wins every draw it is in...
    let c = counts(&b, &eps, 4_000);
    assert_eq!(c.get(&ep(4)), Some(&4_000), "{c:?}");
    // ...but among the three ejected ones, one may be skipped: ep 1 and 2
    // (ending first) are picked, ep 3 never.
    let c = counts(&b, &eps[..3], 4_000);
    assert!(c.contains_key(&ep(1)) && c.contains_key(&ep(2)), "{c:?}");
    assert!(!c.contains_key(&ep(3)), "{c:?}");
    // All ejected: a single candidate is still picked.
    fail(&b, ep(4), 5);
    assert_eq!(counts(&b, &[ep(4)], 10).get(&ep(4)), Some(&10));
    assert_eq!(b.pick(&[], &mut StdRng::seed_from_u64(1)), None);
}

#[test]
fn spreads_load_over_equal_endpoints() {
    let (b, _) = balancer();
    let eps: Vec<_> = (1..=5).map(ep).collect();
    let c = counts(&b, &eps, 5_000);
    for e in &eps {
        assert!((700..=1_300).contains(&c[e]), "{c:?}");
    }
}

#[test]
fn balancer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Balancer>();
    check::<InFlight>();
}
