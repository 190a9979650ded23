//! Fault injection: delay or abort a share of a rule's requests (from the
//! route's `waypoint.ambit.dev/fault-*` annotations).

use std::time::Duration;

use rand::Rng;

use crate::route::RouteError;

/// A rule's compiled fault policy.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPolicy {
    pub delay: Option<Duration>,
    /// 0-100.
    pub delay_percent: f64,
    pub abort: Option<Abort>,
    /// 0-100.
    pub abort_percent: f64,
}

/// The answer of an aborted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub http_status: u16,
    /// The gRPC status for gRPC requests (derived from the HTTP status when
    /// the route did not give one).
    pub grpc_status: u32,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultAction {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultPolicy {
    /// Compiles a rule's `Fault`; `Ok(None)` when it injects nothing.
    pub fn compile(f: &mesh_api::ambit::waypoint::v1::Fault) -> Result<Option<Self>, RouteError> {
        let delay_percent = percent("fault.delay_percent", f.delay_percent)?;
        let abort_percent = percent("fault.abort_percent", f.abort_percent)?;
        let delay = match &f.delay {
            None => None,
            Some(d) => Some(crate::route::duration("fault.delay", d)?).filter(|d| !d.is_zero()),
        };
        let abort = match f.abort_status {
            0 => None,
            s @ 200..=599 => Some(Abort {
                http_status: s as u16,
                grpc_status: match f.abort_grpc_status {
                    0 => grpc_status_for_http(s as u16),
                    g @ 1..=16 => g,
                    g => {
                        return Err(RouteError::Status {
                            field: "fault.abort_grpc_status",
                            status: g,
                        });
                    }
                },
            }),
            s => {
                return Err(RouteError::Status {
                    field: "fault.abort_status",
                    status: s,
                });
            }
        };
        if delay.is_none() && abort.is_none() {
            return Ok(None);
        }
        Ok(Some(FaultPolicy {
            delay,
            delay_percent,
            abort,
            abort_percent,
        }))
    }
}

fn percent(field: &'static str, v: f64) -> Result<f64, RouteError> {
    if v.is_nan() || !(0.0..=100.0).contains(&v) {
        return Err(RouteError::Percent { field, value: v });
    }
    Ok(v)
}

/// The gRPC status a gateway reports for an HTTP status (gRPC's "HTTP to
/// gRPC status code mapping").
pub fn grpc_status_for_http(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Rolls the dice for one request: delayed with probability
/// `delay_percent`, aborted with probability `abort_percent`, independently.
pub fn decide(f: &FaultPolicy, rng: &mut impl Rng) -> FaultAction {
    let delay = f.delay.filter(|_| roll(f.delay_percent, rng));
    let abort = f.abort.filter(|_| roll(f.abort_percent, rng));
    FaultAction { delay, abort }
}

fn roll(percent: f64, rng: &mut impl Rng) -> bool {
    percent >= 100.0 || (percent > 0.0 && rng.random::<f64>() * 100.0 < percent)
}

#[cfg(test)]
mod tests;
