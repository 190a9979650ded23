//! The L7 report: medians over runs per path, protocol and phase, each path's added
//! latency over the L4-only mesh and ratio to direct in the same run, each proxy's CPU
//! per request and peak RSS, and the waypoint's targets as PASS/FAIL lines.

use std::fmt::Write as _;

use serde::Serialize;

use super::load::Protocol;
use super::scenario::{L7Path, Phase, ScenarioResult};
use crate::stats::{median, ratio};

/// The waypoint's latency budget over L4-only at p50, 1,000 rps.
pub const ADDED_P50_BUDGET_US: f64 = 150.0;
/// The waypoint's memory budget at 1,000 rps.
pub const RSS_BUDGET_MIB: f64 = 40.0;

/// Medians of one path, protocol and phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub path: L7Path,
    pub protocol: Protocol,
    pub phase: Phase,
    /// Runs the medians are over (flagged ones left out unless all were flagged).
    pub runs: usize,
    pub all_flagged: bool,
    pub rps: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: u64,
    /// Median over runs of (this path - L4 of the same run).
    pub added_p50_over_l4_us: Option<f64>,
    pub added_p99_over_l4_us: Option<f64>,
    /// Median over runs of (this path / direct of the same run), p50.
    pub p50_ratio_to_direct: Option<f64>,
    /// Median over runs of (this path / direct of the same run), throughput.
    pub rps_ratio_to_direct: Option<f64>,
    /// Per proxy: median CPU microseconds per request in this phase.
    pub cpu_us_per_request: Vec<(String, f64)>,
}

/// Medians of one proxy of one path.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySummary {
    pub path: L7Path,
    pub proxy: String,
    pub peak_rss_mib_fixed_rate: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// One target, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub pass: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub loads: Vec<LoadSummary>,
    pub proxies: Vec<ProxySummary>,
    pub targets: Vec<Target>,
}

/// The scenarios of `path` that count: unflagged ones, or all if every one was flagged.
fn counted(results: &[ScenarioResult], path: L7Path) -> (Vec<&ScenarioResult>, bool) {
    let all: Vec<&ScenarioResult> = results.iter().filter(|r| r.path == path).collect();
    let quiet: Vec<&ScenarioResult> = all.iter().copied().filter(|r| !r.flagged).collect();
    if quiet.is_empty() && !all.is_empty() {
        (all, true)
    } else {
        (quiet, false)
    }
}

/// The same run's scenario of another path.
fn same_run(results: &[ScenarioResult], path: L7Path, run: usize) -> Option<&ScenarioResult> {
    results.iter().find(|r| r.path == path && r.run == run)
}

pub fn summarize(results: &[ScenarioResult], paths: &[L7Path]) -> Summary {
    let mut loads = Vec::new();
    let mut proxies = Vec::new();
    for &path in paths {
        let (runs, all_flagged) = counted(results, path);
        if runs.is_empty() {
            continue;
        }
        for phase in [Phase::Fixed, Phase::Saturate] {
            for protocol in [Protocol::Http1, Protocol::Grpc] {
                let of = |r: &ScenarioResult| r.phase(protocol, phase).map(|p| p.load.clone());
                let values = |f: &dyn Fn(&super::load::LoadResult) -> f64| -> Vec<f64> {
                    runs.iter().filter_map(|r| of(r)).map(|l| f(&l)).collect()
                };
                let versus =
                    |other: L7Path,
                     f: &dyn Fn(f64, f64) -> Option<f64>,
                     get: &dyn Fn(&super::load::LoadResult) -> f64| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| {
                                let mine = of(r)?;
                                let theirs = of(same_run(results, other, r.run)?)?;
                                f(get(&mine), get(&theirs))
                            })
                            .collect();
                        median(&v)
                    };
                let diff = |a: f64, b: f64| Some(a - b);
                let mut names: Vec<String> = Vec::new();
                for r in &runs {
                    if let Some(p) = r.phase(protocol, phase) {
                        for pp in &p.proxies {
                            if !names.iter().any(|n| n == pp.proxy) {
                                names.push(pp.proxy.to_string());
                            }
                        }
                    }
                }
                let cpu = names
                    .into_iter()
                    .filter_map(|name| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| r.phase(protocol, phase))
                            .flat_map(|p| p.proxies.iter())
                            .filter(|pp| pp.proxy == name)
                            .map(|pp| pp.cpu_us_per_request)
                            .collect();
                        median(&v).map(|m| (name, m))
                    })
                    .collect();
                loads.push(LoadSummary {
                    path,
                    protocol,
                    phase,
                    runs: runs.len(),
                    all_flagged,
                    rps: median(&values(&|l| l.achieved_rps)),
                    p50_us: median(&values(&|l| l.p50_us)),
                    p99_us: median(&values(&|l| l.p99_us)),
                    errors: runs.iter().filter_map(|r| of(r)).map(|l| l.errors).sum(),
                    added_p50_over_l4_us: (!matches!(path, L7Path::L4 | L7Path::Direct))
                        .then(|| versus(L7Path::L4, &diff, &|l| l.p50_us))
                        .flatten(),
                    added_p99_over_l4_us: (!matches!(path, L7Path::L4 | L7Path::Direct))
                        .then(|| versus(L7Path::L4, &diff, &|l| l.p99_us))
                        .flatten(),
                    p50_ratio_to_direct: (path != L7Path::Direct)
                        .then(|| versus(L7Path::Direct, &ratio_opt, &|l| l.p50_us))
                        .flatten(),
                    rps_ratio_to_direct: (path != L7Path::Direct)
                        .then(|| versus(L7Path::Direct, &ratio_opt, &|l| l.achieved_rps))
                        .flatten(),
                    cpu_us_per_request: cpu,
                });
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for r in &runs {
            for p in &r.proxies {
                if !names.contains(&p.proxy) {
                    names.push(p.proxy);
                }
            }
        }
        for name in names {
            let of = |f: &dyn Fn(&super::scenario::ProxyPeak) -> f64| {
                let v: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| r.proxies.iter())
                    .filter(|p| p.proxy == name)
                    .map(f)
                    .collect();
                median(&v)
            };
            proxies.push(ProxySummary {
                path,
                proxy: name.to_string(),
                peak_rss_mib_fixed_rate: of(&|p| p.peak_rss_mib_fixed_rate),
                peak_rss_mib: of(&|p| p.peak_rss_mib),
            });
        }
    }
    let targets = targets(&loads, &proxies);
    Summary {
        loads,
        proxies,
        targets,
    }
}

fn ratio_opt(a: f64, b: f64) -> Option<f64> {
    ratio(a, b)
}

fn load(
    loads: &[LoadSummary],
    path: L7Path,
    protocol: Protocol,
    phase: Phase,
) -> Option<&LoadSummary> {
    loads
        .iter()
        .find(|l| l.path == path && l.protocol == protocol && l.phase == phase)
}

fn cpu_of(l: &LoadSummary, proxy: &str) -> Option<f64> {
    l.cpu_us_per_request
        .iter()
        .find(|(n, _)| n == proxy)
        .map(|(_, v)| *v)
}

fn peak<'a>(proxies: &'a [ProxySummary], path: L7Path, proxy: &str) -> Option<&'a ProxySummary> {
    proxies.iter().find(|p| p.path == path && p.proxy == proxy)
}

/// The waypoint's targets: each `None` (not judged) when a path it needs was not run.
fn targets(loads: &[LoadSummary], proxies: &[ProxySummary]) -> Vec<Target> {
    let mut t = Vec::new();
    let below = |name: String, value: Option<f64>, limit: f64, unit: &str| Target {
        pass: value.map(|v| v < limit),
        detail: match value {
            Some(v) => format!("{v:.1} {unit} (limit {limit} {unit})"),
            None => "not measured".into(),
        },
        name,
    };
    let beats = |name: String, wp: Option<f64>, envoy: Option<f64>, unit: &str| Target {
        pass: wp.zip(envoy).map(|(w, e)| w < e),
        detail: match wp.zip(envoy) {
            Some((w, e)) => format!("waypoint {w:.1} {unit} vs Envoy {e:.1} {unit}"),
            None => "not measured".into(),
        },
        name,
    };
    for protocol in [Protocol::Http1, Protocol::Grpc] {
        let wp = load(loads, L7Path::Waypoint, protocol, Phase::Fixed);
        let envoy = load(loads, L7Path::Envoy, protocol, Phase::Fixed);
        let p = protocol.name();
        t.push(below(
            format!("{p}: waypoint adds < {ADDED_P50_BUDGET_US} us p50 over L4 at 1,000 rps"),
            wp.and_then(|l| l.added_p50_over_l4_us),
            ADDED_P50_BUDGET_US,
            "us",
        ));
        t.push(beats(
            format!("{p}: waypoint p50 below Envoy's at 1,000 rps"),
            wp.and_then(|l| l.p50_us),
            envoy.and_then(|l| l.p50_us),
            "us",
        ));
        t.push(beats(
            format!("{p}: waypoint p99 below Envoy's at 1,000 rps"),
            wp.and_then(|l| l.p99_us),
            envoy.and_then(|l| l.p99_us),
            "us",
        ));
        t.push(beats(
            format!("{p}: waypoint CPU per request below Envoy's at 1,000 rps"),
            wp.and_then(|l| cpu_of(l, "waypoint")),
            envoy.and_then(|l| cpu_of(l, "envoy")),
            "us",
        ));
    }
    t.push(beats(
        "waypoint peak RSS below Envoy's".into(),
        peak(proxies, L7Path::Waypoint, "waypoint").and_then(|p| p.peak_rss_mib),
        peak(proxies, L7Path::Envoy, "envoy").and_then(|p| p.peak_rss_mib),
        "MiB",
    ));
    t.push(below(
        format!("waypoint peak RSS < {RSS_BUDGET_MIB} MiB at 1,000 rps"),
        peak(proxies, L7Path::Waypoint, "waypoint").and_then(|p| p.peak_rss_mib_fixed_rate),
        RSS_BUDGET_MIB,
        "MiB",
    ));
    t
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn signed(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.0}"))
}

/// The printed report.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    for phase in [Phase::Fixed, Phase::Saturate] {
        let title = match phase {
            Phase::Fixed => "Fixed rate (open loop)",
            Phase::Saturate => "Saturation (closed loop)",
        };
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(
            out,
            "{:<9} {:<6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6}  CPU us/request per proxy",
            "path",
            "proto",
            "rps",
            "p50 us",
            "p99 us",
            "+p50 L4",
            "+p99 L4",
            "p50/dir",
            "rps/dir",
            "errors"
        );
        for l in s.loads.iter().filter(|l| l.phase == phase) {
            let cpu: Vec<String> = l
                .cpu_us_per_request
                .iter()
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<9} {:<6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6}  {}{}",
                l.path.name(),
                l.protocol.name(),
                f(l.rps, 0),
                f(l.p50_us, 0),
                f(l.p99_us, 0),
                signed(l.added_p50_over_l4_us),
                signed(l.added_p99_over_l4_us),
                f(l.p50_ratio_to_direct, 2),
                f(l.rps_ratio_to_direct, 2),
                l.errors,
                cpu.join(", "),
                if l.all_flagged {
                    "  (every run flagged: machine busy)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(out, "\nPeak RSS (MiB): at 1,000 rps / overall");
    for p in &s.proxies {
        let _ = writeln!(
            out,
            "{:<9} {:<15} {:>6} / {:>6}",
            p.path.name(),
            p.proxy,
            f(p.peak_rss_mib_fixed_rate, 1),
            f(p.peak_rss_mib, 1)
        );
    }
    let _ = writeln!(out, "\nTargets");
    for t in &s.targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a ",
        };
        let _ = writeln!(out, "{verdict}  {}: {}", t.name, t.detail);
    }
    out
}

/// One line per finished scenario, for progress output.
pub fn progress_line(r: &ScenarioResult) -> String {
    let parts: Vec<String> = r
        .phases
        .iter()
        .map(|p| {
            format!(
                "{} {:?} {:.0} rps p50 {:.0} us p99 {:.0} us",
                p.protocol.name(),
                p.phase,
                p.load.achieved_rps,
                p.load.p50_us,
                p.load.p99_us
            )
            .to_lowercase()
        })
        .collect();
    format!(
        "run {} {}{}: {}",
        r.run + 1,
        r.path.name(),
        if r.flagged { " (flagged: busy)" } else { "" },
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::load::{LoadResult, Mode};
    use crate::l7::scenario::{PhaseResult, Proof, ProxyPeak, ProxyPhase};
    use crate::quiet::QuietCheck;

    fn load(protocol: Protocol, phase: Phase, rps: f64, p50: f64, p99: f64) -> LoadResult {
        LoadResult {
            protocol,
            mode: match phase {
                Phase::Fixed => Mode::Fixed { rate: 1000 },
                Phase::Saturate => Mode::Saturate,
            },
            workers: 8,
            requests: (rps * 10.0) as u64,
            errors: 0,
            first_error: None,
            scheduled: 0,
            elapsed_s: 10.0,
            achieved_rps: rps,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            max_us: p99,
            pacer_lag_p99_us: None,
        }
    }

    /// A scenario whose every phase has latency `p50`/`p99` and whose proxy (if any)
    /// used `cpu` us per request and `rss` MiB.
    fn scenario(
        path: L7Path,
        run: usize,
        p50: f64,
        p99: f64,
        proxy: Option<(&'static str, f64, f64)>,
        flagged: bool,
    ) -> ScenarioResult {
        let quiet = QuietCheck {
            samples_busy_percent: vec![1.0],
            quiet: true,
        };
        let mut phases = Vec::new();
        for phase in [Phase::Fixed, Phase::Saturate] {
            for protocol in [Protocol::Http1, Protocol::Grpc] {
                phases.push(PhaseResult {
                    protocol,
                    phase,
                    load: load(protocol, phase, 1000.0, p50, p99),
                    proxies: proxy
                        .iter()
                        .map(|&(name, cpu, _)| ProxyPhase {
                            proxy: name,
                            cpu_seconds: cpu * 1e-6 * 10_000.0,
                            cpu_us_per_request: cpu,
                        })
                        .collect(),
                });
            }
        }
        ScenarioResult {
            path,
            run,
            quiet_before: quiet.clone(),
            quiet_after: quiet,
            flagged,
            phases,
            proxies: proxy
                .iter()
                .map(|&(name, _, rss)| ProxyPeak {
                    proxy: name,
                    peak_rss_mib_fixed_rate: rss - 1.0,
                    peak_rss_mib: rss,
                })
                .collect(),
            proof: Proof {
                ztunnels: None,
                waypoint: None,
                envoy: None,
            },
        }
    }

    #[test]
    fn medians_differences_and_targets() {
        let mut results = Vec::new();
        for (run, shift) in [(0, 0.0), (1, 10.0), (2, 500.0)] {
            results.push(scenario(
                L7Path::Direct,
                run,
                100.0 + shift,
                200.0,
                None,
                false,
            ));
            results.push(scenario(L7Path::L4, run, 200.0 + shift, 300.0, None, false));
            results.push(scenario(
                L7Path::Waypoint,
                run,
                300.0 + shift,
                500.0,
                Some(("waypoint", 50.0, 20.0)),
                false,
            ));
            results.push(scenario(
                L7Path::Envoy,
                run,
                400.0 + shift,
                450.0,
                Some(("envoy", 80.0, 60.0)),
                false,
            ));
        }
        // A flagged run of the waypoint with absurd figures stays out of the medians.
        results.push(scenario(
            L7Path::Waypoint,
            3,
            9e6,
            9e6,
            Some(("waypoint", 1e6, 1e6)),
            true,
        ));
        let paths = [L7Path::Direct, L7Path::L4, L7Path::Waypoint, L7Path::Envoy];
        let s = summarize(&results, &paths);
        let wp = load_of(&s, L7Path::Waypoint);
        assert_eq!(wp.runs, 3);
        assert_eq!(wp.p50_us, Some(310.0));
        // Same-run differences: 100 us in every run, whatever the shift.
        assert_eq!(wp.added_p50_over_l4_us, Some(100.0));
        assert_eq!(wp.added_p99_over_l4_us, Some(200.0));
        assert_eq!(wp.p50_ratio_to_direct, Some(310.0 / 110.0));
        assert_eq!(wp.cpu_us_per_request, vec![("waypoint".to_string(), 50.0)]);
        let direct = load_of(&s, L7Path::Direct);
        assert_eq!(direct.added_p50_over_l4_us, None);
        assert_eq!(direct.p50_ratio_to_direct, None);

        let verdict = |name: &str| {
            s.targets
                .iter()
                .find(|t| t.name.starts_with(name))
                .unwrap_or_else(|| panic!("no target {name}"))
                .pass
        };
        assert_eq!(verdict("http1: waypoint adds"), Some(true));
        assert_eq!(verdict("http1: waypoint p50"), Some(true));
        // 500 us against Envoy's 450 us.
        assert_eq!(verdict("http1: waypoint p99"), Some(false));
        assert_eq!(verdict("grpc: waypoint CPU"), Some(true));
        assert_eq!(verdict("waypoint peak RSS below"), Some(true));
        assert_eq!(verdict("waypoint peak RSS <"), Some(true));
        let text = render(&s);
        assert!(text.contains("FAIL  http1: waypoint p99"), "{text}");
        assert!(text.contains("PASS  http1: waypoint adds"), "{text}");

        // Without Envoy the comparisons are not judged.
        let s = summarize(&results, &[L7Path::L4, L7Path::Waypoint]);
        assert!(s.targets.iter().filter(|t| t.pass.is_none()).count() >= 5);
    }

    fn load_of(s: &Summary, path: L7Path) -> &LoadSummary {
        s.loads
            .iter()
            .find(|l| l.path == path && l.protocol == Protocol::Http1 && l.phase == Phase::Fixed)
            .unwrap()
    }
}
