//! Route-level settings the Gateway API (standard channel) has no field for,
//! read from the route's annotations: retries and fault injection. An invalid
//! value drops that whole setting (never half of it) and names the
//! annotation.

use std::collections::BTreeMap;

use mesh_api::ambit::waypoint::v1::{Fault, Retry};

use super::duration;

pub const RETRY_ATTEMPTS: &str = "waypoint.ambit.dev/retry-attempts";
pub const RETRY_CODES: &str = "waypoint.ambit.dev/retry-codes";
pub const RETRY_BACKOFF: &str = "waypoint.ambit.dev/retry-backoff";
pub const FAULT_DELAY: &str = "waypoint.ambit.dev/fault-delay";
pub const FAULT_DELAY_PERCENT: &str = "waypoint.ambit.dev/fault-delay-percent";
pub const FAULT_ABORT_STATUS: &str = "waypoint.ambit.dev/fault-abort-status";
pub const FAULT_ABORT_GRPC_STATUS: &str = "waypoint.ambit.dev/fault-abort-grpc-status";
pub const FAULT_ABORT_PERCENT: &str = "waypoint.ambit.dev/fault-abort-percent";

/// Why an annotation was not used: which one, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub annotation: &'static str,
    pub problem: String,
}

impl Invalid {
    pub fn message(&self, setting: &str) -> String {
        format!(
            "annotation {}: {}; the route's {setting} is not applied",
            self.annotation, self.problem
        )
    }
}

type Annotations = BTreeMap<String, String>;

fn get<'a>(annotations: Option<&'a Annotations>, key: &str) -> Option<&'a str> {
    annotations.and_then(|a| a.get(key)).map(|v| v.trim())
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    annotation: &'static str,
    raw: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, Invalid> {
    match raw.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(Invalid {
            annotation,
            problem: format!(
                "\"{raw}\" is not a number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

fn percent(annotations: Option<&Annotations>, key: &'static str) -> Result<f64, Invalid> {
    match get(annotations, key) {
        None => Ok(100.0),
        Some(raw) => number(key, raw, 0.0..=100.0),
    }
}

fn duration_of(annotation: &'static str, raw: &str) -> Result<prost_types::Duration, Invalid> {
    duration::parse(raw).map_err(|problem| Invalid {
        annotation,
        problem,
    })
}

/// The retry policy the annotations ask for; None when they ask for none.
pub fn retry(annotations: Option<&Annotations>) -> Result<Option<Retry>, Invalid> {
    let attempts = get(annotations, RETRY_ATTEMPTS);
    let codes = get(annotations, RETRY_CODES);
    let backoff = get(annotations, RETRY_BACKOFF);
    let Some(attempts) = attempts else {
        if let Some((annotation, _)) = [(RETRY_CODES, codes), (RETRY_BACKOFF, backoff)]
            .into_iter()
            .find(|(_, v)| v.is_some())
        {
            return Err(Invalid {
                annotation,
                problem: format!("it needs {RETRY_ATTEMPTS} as well"),
            });
        }
        return Ok(None);
    };
    let attempts = number(RETRY_ATTEMPTS, attempts, 0u32..=100)?;
    let codes = codes
        .into_iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| number(RETRY_CODES, c, 100u32..=599))
        .collect::<Result<Vec<_>, _>>()?;
    let backoff = backoff
        .map(|raw| duration_of(RETRY_BACKOFF, raw))
        .transpose()?;
    Ok(Some(Retry {
        attempts,
        codes,
        backoff,
    }))
}

/// The fault injection the annotations ask for; None when they ask for none.
pub fn fault(annotations: Option<&Annotations>) -> Result<Option<Fault>, Invalid> {
    let delay = get(annotations, FAULT_DELAY)
        .map(|raw| duration_of(FAULT_DELAY, raw))
        .transpose()?;
    let abort_status = get(annotations, FAULT_ABORT_STATUS)
        .map(|raw| number(FAULT_ABORT_STATUS, raw, 200u32..=599))
        .transpose()?;
    let abort_grpc_status = get(annotations, FAULT_ABORT_GRPC_STATUS)
        .map(|raw| number(FAULT_ABORT_GRPC_STATUS, raw, 0u32..=16))
        .transpose()?;
    let delay_percent = percent(annotations, FAULT_DELAY_PERCENT)?;
    let abort_percent = percent(annotations, FAULT_ABORT_PERCENT)?;
    let aborts = abort_status.is_some() || abort_grpc_status.is_some();
    if delay.is_none() && get(annotations, FAULT_DELAY_PERCENT).is_some() {
        return Err(Invalid {
            annotation: FAULT_DELAY_PERCENT,
            problem: format!("it needs {FAULT_DELAY} as well"),
        });
    }
    if !aborts && get(annotations, FAULT_ABORT_PERCENT).is_some() {
        return Err(Invalid {
            annotation: FAULT_ABORT_PERCENT,
            problem: format!("it needs {FAULT_ABORT_STATUS} or {FAULT_ABORT_GRPC_STATUS} as well"),
        });
    }
    if delay.is_none() && !aborts {
        return Ok(None);
    }
    Ok(Some(Fault {
        delay_percent: if delay.is_some() { delay_percent } else { 0.0 },
        delay,
        abort_status: abort_status.unwrap_or(0),
        abort_grpc_status: abort_grpc_status.unwrap_or(0),
        abort_percent: if aborts { abort_percent } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ms(n: i64) -> prost_types::Duration {
        prost_types::Duration {
            seconds: n / 1000,
            nanos: ((n % 1000) * 1_000_000) as i32,
        }
    }

    /// Annotations in, the setting or the annotation blamed out.
    type Case<T> = (
        Vec<(&'static str, &'static str)>,
        Result<Option<T>, &'static str>,
    );

    #[test]
    fn retry_table() {
        let cases: Vec<Case<Retry>> = vec![
            (vec![], Ok(None)),
            (
                vec![(RETRY_ATTEMPTS, "3")],
                Ok(Some(Retry {
                    attempts: 3,
                    ..Default::default()
                })),
            ),
            (
                vec![
                    (RETRY_ATTEMPTS, "2"),
                    (RETRY_CODES, "503, 504,"),
                    (RETRY_BACKOFF, "50ms"),
                ],
                Ok(Some(Retry {
                    attempts: 2,
                    codes: vec![503, 504],
                    backoff: Some(ms(50)),
                })),
            ),
            (vec![(RETRY_ATTEMPTS, "three")], Err(RETRY_ATTEMPTS)),
            (vec![(RETRY_ATTEMPTS, "-1")], Err(RETRY_ATTEMPTS)),
            (
                vec![(RETRY_ATTEMPTS, "2"), (RETRY_CODES, "503,abc")],
                Err(RETRY_CODES),
            ),
            (
                vec![(RETRY_ATTEMPTS, "2"), (RETRY_CODES, "42")],
                Err(RETRY_CODES),
            ),
            (
                vec![(RETRY_ATTEMPTS, "2"), (RETRY_BACKOFF, "fast")],
                Err(RETRY_BACKOFF),
            ),
            (vec![(RETRY_CODES, "503")], Err(RETRY_CODES)),
        ];
        for (pairs, want) in cases {
            let got = retry(Some(&annotations(&pairs))).map_err(|e| e.annotation);
            assert_eq!(got, want, "{pairs:?}");
        }
    }

    #[test]
    fn fault_table() {
        let cases: Vec<Case<Fault>> = vec![
            (vec![], Ok(None)),
            (
                vec![(FAULT_DELAY, "100ms"), (FAULT_DELAY_PERCENT, "10")],
                Ok(Some(Fault {
                    delay: Some(ms(100)),
                    delay_percent: 10.0,
                    ..Default::default()
                })),
            ),
            (
                vec![(FAULT_ABORT_STATUS, "503"), (FAULT_ABORT_PERCENT, "5")],
                Ok(Some(Fault {
                    abort_status: 503,
                    abort_percent: 5.0,
                    ..Default::default()
                })),
            ),
            (
                vec![(FAULT_ABORT_GRPC_STATUS, "14")],
                Ok(Some(Fault {
                    abort_grpc_status: 14,
                    abort_percent: 100.0,
                    ..Default::default()
                })),
            ),
            (
                vec![(FAULT_DELAY, "1s"), (FAULT_ABORT_STATUS, "500")],
                Ok(Some(Fault {
                    delay: Some(ms(1000)),
                    delay_percent: 100.0,
                    abort_status: 500,
                    abort_percent: 100.0,
                    ..Default::default()
                })),
            ),
            (vec![(FAULT_DELAY, "soon")], Err(FAULT_DELAY)),
            (
                vec![(FAULT_DELAY, "1s"), (FAULT_DELAY_PERCENT, "150")],
                Err(FAULT_DELAY_PERCENT),
            ),
            (vec![(FAULT_ABORT_STATUS, "99")], Err(FAULT_ABORT_STATUS)),
            (
                vec![(FAULT_ABORT_GRPC_STATUS, "17")],
                Err(FAULT_ABORT_GRPC_STATUS),
            ),
            (vec![(FAULT_ABORT_PERCENT, "5")], Err(FAULT_ABORT_PERCENT)),
            (vec![(FAULT_DELAY_PERCENT, "5")], Err(FAULT_DELAY_PERCENT)),
        ];
        for (pairs, want) in cases {
            let got = fault(Some(&annotations(&pairs))).map_err(|e| e.annotation);
            assert_eq!(got, want, "{pairs:?}");
        }
    }
}
