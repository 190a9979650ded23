use std::time::Duration;

use mesh_api::ambit::waypoint::v1 as pb;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn policy(delay_percent: f64, abort_percent: f64) -> FaultPolicy {
    FaultPolicy {
        delay: Some(Duration::from_millis(100)),
        delay_percent,
        abort: Some(Abort {
            http_status: 503,
            grpc_status: 14,
        }),
        abort_percent,
    }
}

#[test]
fn percentages_hold() {
    let mut rng = StdRng::seed_from_u64(3);
    for (delay_pct, abort_pct) in [(10.0, 5.0), (50.0, 0.0), (0.0, 100.0), (100.0, 25.0)] {
        let p = policy(delay_pct, abort_pct);
        let (mut delayed, mut aborted) = (0u32, 0u32);
        let n = 20_000;
        for _ in 0..n {
            let a = decide(&p, &mut rng);
            delayed += u32::from(a.delay.is_some());
            aborted += u32::from(a.abort.is_some());
        }
        let near = |count: u32, pct: f64| {
            let expected = f64::from(n) * pct / 100.0;
            // Within 4 standard deviations of a binomial.
            let sigma = (f64::from(n) * pct / 100.0 * (1.0 - pct / 100.0)).sqrt();
            (f64::from(count) - expected).abs() <= 4.0 * sigma + 0.5
        };
        assert!(
            near(delayed, delay_pct),
            "delay {delay_pct}%: {delayed}/{n}"
        );
        assert!(
            near(aborted, abort_pct),
            "abort {abort_pct}%: {aborted}/{n}"
        );
    }
}

#[test]
fn compile() {
    let f = FaultPolicy::compile(&pb::Fault {
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        delay_percent: 10.0,
        abort_status: 503,
        abort_grpc_status: 0,
        abort_percent: 5.0,
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        f,
        FaultPolicy {
            delay: Some(Duration::from_millis(100)),
            delay_percent: 10.0,
            abort: Some(Abort {
                http_status: 503,
                grpc_status: 14
            }),
            abort_percent: 5.0,
        }
    );
    let explicit = FaultPolicy::compile(&pb::Fault {
        abort_status: 500,
        abort_grpc_status: 8,
        abort_percent: 1.0,
        ..Default::default()
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        explicit.abort,
        Some(Abort {
            http_status: 500,
            grpc_status: 8
        })
    );
    assert_eq!(FaultPolicy::compile(&pb::Fault::default()), Ok(None));
    for (bad, msg) in [
        (
            pb::Fault {
                abort_status: 42,
                ..Default::default()
            },
            "fault.abort_status 42",
        ),
        (
            pb::Fault {
                abort_status: 503,
                abort_percent: 101.0,
                ..Default::default()
            },
            "fault.abort_percent 101",
        ),
        (
            pb::Fault {
                abort_status: 503,
                delay_percent: f64::NAN,
                ..Default::default()
            },
            "fault.delay_percent NaN",
        ),
        (
            pb::Fault {
                abort_status: 503,
                abort_grpc_status: 17,
                ..Default::default()
            },
            "fault.abort_grpc_status 17",
        ),
    ] {
        let e = FaultPolicy::compile(&bad).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
    assert_eq!(grpc_status_for_http(403), 7);
    assert_eq!(grpc_status_for_http(500), 2);
}
