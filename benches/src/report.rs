//! Medians over runs, ratios to direct TCP in the same run, the printed table and the
//! JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::{PathKind, ScenarioResult};
use crate::stats::{median, ratio};

/// The headline figures of one scenario, or medians of them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Figures {
    pub gbit_s_1_stream: Option<f64>,
    pub gbit_s_8_streams: Option<f64>,
    pub rr_p50_us: Option<f64>,
    pub rr_p99_us: Option<f64>,
    pub conn_per_s: Option<f64>,
    pub conn_p50_us: Option<f64>,
    pub conn_p99_us: Option<f64>,
}

impl Figures {
    pub fn of(s: &ScenarioResult) -> Figures {
        Figures {
            gbit_s_1_stream: Some(s.iperf_1.receiver_gbit_s),
            gbit_s_8_streams: Some(s.iperf_8.receiver_gbit_s),
            rr_p50_us: Some(s.rr.p50_us),
            rr_p99_us: Some(s.rr.p99_us),
            conn_per_s: Some(s.conn.rate_per_s),
            conn_p50_us: Some(s.conn.p50_us),
            conn_p99_us: Some(s.conn.p99_us),
        }
    }
}

/// A path compared with direct TCP of the same run, median over runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct VsDirect {
    /// Runs in which both this path and direct TCP were measured without load, or, if
    /// there is no such run, all runs with both (then `includes_flagged_runs` is set).
    pub runs_used: Vec<usize>,
    pub includes_flagged_runs: bool,
    pub gbit_s_1_stream_ratio: Option<f64>,
    pub gbit_s_8_streams_ratio: Option<f64>,
    pub rr_p50_ratio: Option<f64>,
    pub rr_p50_added_us: Option<f64>,
    pub rr_p99_added_us: Option<f64>,
    pub conn_per_s_ratio: Option<f64>,
    pub conn_p50_added_us: Option<f64>,
}

/// One proxy's median usage per scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySummary {
    pub side: String,
    pub cpu_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// The summary of one path over all runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathSummary {
    pub path: PathKind,
    pub runs: usize,
    /// Runs the medians are taken over: those not flagged, or, when every run was
    /// flagged, all of them (then `all_runs_flagged` is set).
    pub runs_used: Vec<usize>,
    pub all_runs_flagged: bool,
    pub medians: Figures,
    /// `None` for direct TCP itself, or when direct TCP was not measured.
    pub vs_direct: Option<VsDirect>,
    pub proxies: Vec<ProxySummary>,
}

/// The items not flagged, or all of them if every one is (then `true`).
fn quiet_or_all<T>(items: Vec<T>, flagged: impl Fn(&T) -> bool) -> (Vec<T>, bool) {
    if !items.is_empty() && items.iter().all(&flagged) {
        (items, true)
    } else {
        (items.into_iter().filter(|i| !flagged(i)).collect(), false)
    }
}

fn median_of(items: &[&ScenarioResult], f: impl Fn(&Figures) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = items.iter().filter_map(|s| f(&Figures::of(s))).collect();
    median(&values)
}

/// Summarizes `results` (all runs, all paths) per path, in `paths` order.
pub fn summarize(results: &[ScenarioResult], paths: &[PathKind]) -> Vec<PathSummary> {
    let direct_by_run: BTreeMap<usize, &ScenarioResult> = results
        .iter()
        .filter(|s| s.path == PathKind::Direct)
        .map(|s| (s.run, s))
        .collect();
    paths
        .iter()
        .map(|&path| {
            let of_path: Vec<&ScenarioResult> = results.iter().filter(|s| s.path == path).collect();
            let (used, all_flagged) = quiet_or_all(of_path.clone(), |s| s.flagged);
            let medians = Figures {
                gbit_s_1_stream: median_of(&used, |f| f.gbit_s_1_stream),
                gbit_s_8_streams: median_of(&used, |f| f.gbit_s_8_streams),
                rr_p50_us: median_of(&used, |f| f.rr_p50_us),
                rr_p99_us: median_of(&used, |f| f.rr_p99_us),
                conn_per_s: median_of(&used, |f| f.conn_per_s),
                conn_p50_us: median_of(&used, |f| f.conn_p50_us),
                conn_p99_us: median_of(&used, |f| f.conn_p99_us),
            };
            // Ratios only within a run, and only where neither side saw load.
            let all_pairs: Vec<(&ScenarioResult, &ScenarioResult)> = of_path
                .iter()
                .filter_map(|s| direct_by_run.get(&s.run).map(|d| (*s, *d)))
                .collect();
            let (pairs, pairs_flagged) = quiet_or_all(all_pairs, |(s, d)| s.flagged || d.flagged);
            let pair_runs: Vec<usize> = pairs.iter().map(|(s, _)| s.run).collect();
            let pairs: Vec<(Figures, Figures)> = pairs
                .iter()
                .map(|(s, d)| (Figures::of(s), Figures::of(d)))
                .collect();
            let vs = |f: &dyn Fn(&Figures, &Figures) -> Option<f64>| {
                median(
                    &pairs
                        .iter()
                        .filter_map(|(p, d)| f(p, d))
                        .collect::<Vec<_>>(),
                )
            };
            let div = |a: Option<f64>, b: Option<f64>| ratio(a?, b?);
            let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
            let vs_direct = (path != PathKind::Direct && !pairs.is_empty()).then(|| VsDirect {
                runs_used: pair_runs,
                includes_flagged_runs: pairs_flagged,
                gbit_s_1_stream_ratio: vs(&|p, d| div(p.gbit_s_1_stream, d.gbit_s_1_stream)),
                gbit_s_8_streams_ratio: vs(&|p, d| div(p.gbit_s_8_streams, d.gbit_s_8_streams)),
                rr_p50_ratio: vs(&|p, d| div(p.rr_p50_us, d.rr_p50_us)),
                rr_p50_added_us: vs(&|p, d| sub(p.rr_p50_us, d.rr_p50_us)),
                rr_p99_added_us: vs(&|p, d| sub(p.rr_p99_us, d.rr_p99_us)),
                conn_per_s_ratio: vs(&|p, d| div(p.conn_per_s, d.conn_per_s)),
                conn_p50_added_us: vs(&|p, d| sub(p.conn_p50_us, d.conn_p50_us)),
            });
            let mut sides: Vec<&'static str> = Vec::new();
            for s in &used {
                for p in &s.proxies {
                    if !sides.contains(&p.side) {
                        sides.push(p.side);
                    }
                }
            }
            let proxies = sides
                .into_iter()
                .map(|side| {
                    let of_side = |f: fn(&crate::scenario::ProxyUsage) -> f64| {
                        let v: Vec<f64> = used
                            .iter()
                            .flat_map(|s| s.proxies.iter())
                            .filter(|p| p.side == side)
                            .map(f)
                            .collect();
                        median(&v)
                    };
                    ProxySummary {
                        side: side.to_string(),
                        cpu_seconds: of_side(|p| p.cpu_seconds),
                        peak_rss_mib: of_side(|p| p.peak_rss_mib),
                    }
                })
                .collect();
            PathSummary {
                path,
                runs: results.iter().filter(|s| s.path == path).count(),
                runs_used: used.iter().map(|s| s.run).collect(),
                all_runs_flagged: all_flagged,
                medians,
                vs_direct,
                proxies,
            }
        })
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

fn plus_us(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.1}"))
}

/// The human-readable report.
pub fn render(summaries: &[PathSummary]) -> String {
    let mut out = String::new();
    let used = |s: &PathSummary| {
        let mark = if s.all_runs_flagged {
            " (all runs saw load: medians over all of them)"
        } else {
            ""
        };
        format!("{} {}/{}{mark}", s.path.name(), s.runs_used.len(), s.runs)
    };
    let _ = writeln!(
        out,
        "Medians over runs without load ({})",
        summaries.iter().map(used).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "{:<7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "path", "1 stream", "8 streams", "RR p50", "RR p99", "conn/s", "conn p50", "conn p99"
    );
    let _ = writeln!(
        out,
        "{:<7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "", "Gbit/s", "Gbit/s", "us", "us", "", "us", "us"
    );
    for s in summaries {
        let m = &s.medians;
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
            s.path.name(),
            num(m.gbit_s_1_stream, 2),
            num(m.gbit_s_8_streams, 2),
            num(m.rr_p50_us, 1),
            num(m.rr_p99_us, 1),
            num(m.conn_per_s, 0),
            num(m.conn_p50_us, 1),
            num(m.conn_p99_us, 1),
        );
    }
    let compared: Vec<&PathSummary> = summaries.iter().filter(|s| s.vs_direct.is_some()).collect();
    if !compared.is_empty() {
        let _ = writeln!(
            out,
            "\nCompared with direct TCP in the same run (median over runs)"
        );
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9}",
            "path", "1 stream", "8 streams", "RR p50", "RR p50", "RR p99", "conn/s", "conn p50"
        );
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9}",
            "", "", "", "", "added us", "added us", "", "added us"
        );
        for s in compared {
            let Some(v) = &s.vs_direct else { continue };
            let name = if v.includes_flagged_runs {
                format!("{}*", s.path.name())
            } else {
                s.path.name().to_string()
            };
            let _ = writeln!(
                out,
                "{:<7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9}",
                name,
                times(v.gbit_s_1_stream_ratio),
                times(v.gbit_s_8_streams_ratio),
                times(v.rr_p50_ratio),
                plus_us(v.rr_p50_added_us),
                plus_us(v.rr_p99_added_us),
                times(v.conn_per_s_ratio),
                plus_us(v.conn_p50_added_us),
            );
        }
    }
    if summaries.iter().any(|s| {
        s.vs_direct
            .as_ref()
            .is_some_and(|v| v.includes_flagged_runs)
    }) {
        let _ = writeln!(
            out,
            "* no run had both paths without load: ratios over runs that saw load"
        );
    }
    let with_proxies: Vec<&PathSummary> =
        summaries.iter().filter(|s| !s.proxies.is_empty()).collect();
    if !with_proxies.is_empty() {
        let _ = writeln!(out, "\nztunnel per scenario (median over runs)");
        let _ = writeln!(
            out,
            "{:<7} {:<7} {:>8} {:>13}",
            "path", "side", "CPU s", "peak RSS MiB"
        );
        for s in with_proxies {
            for p in &s.proxies {
                let _ = writeln!(
                    out,
                    "{:<7} {:<7} {:>8} {:>13}",
                    s.path.name(),
                    p.side,
                    num(p.cpu_seconds, 2),
                    num(p.peak_rss_mib, 1)
                );
            }
        }
    }
    out
}

/// One line about a finished scenario, for progress output.
pub fn progress_line(s: &ScenarioResult) -> String {
    let f = Figures::of(s);
    let mut line = format!(
        "{}: {} / {} Gbit/s (1 / 8 streams), RR p50 {} us p99 {} us, {} conn/s (p50 {} us)",
        s.path.name(),
        num(f.gbit_s_1_stream, 2),
        num(f.gbit_s_8_streams, 2),
        num(f.rr_p50_us, 1),
        num(f.rr_p99_us, 1),
        num(f.conn_per_s, 0),
        num(f.conn_p50_us, 1),
    );
    if s.conn.errors > 0 {
        let _ = write!(line, ", {} failed connections", s.conn.errors);
    }
    for p in &s.proxies {
        let _ = write!(
            line,
            "; {} ztunnel {:.2} CPU s, {:.1} MiB",
            p.side, p.cpu_seconds, p.peak_rss_mib
        );
    }
    let _ = write!(
        line,
        "; busy {:.1}% before, {:.1}% after",
        s.quiet_before.last(),
        s.quiet_after.last()
    );
    if s.flagged {
        line.push_str(" [FLAGGED: machine busy, left out of medians]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::{ConnResult, RrResult};
    use crate::iperf::IperfResult;
    use crate::quiet::QuietCheck;
    use crate::scenario::ProxyUsage;

    fn scenario(path: PathKind, run: usize, gbit: f64, p50: f64, flagged: bool) -> ScenarioResult {
        let iperf = |streams| IperfResult {
            streams,
            receiver_gbit_s: gbit,
            sender_gbit_s: gbit,
            retransmits: None,
            seconds: 10.0,
        };
        let quiet = QuietCheck {
            samples_busy_percent: vec![1.0],
            quiet: true,
        };
        ScenarioResult {
            path,
            run,
            quiet_before: quiet.clone(),
            quiet_after: quiet,
            flagged,
            rr: RrResult {
                size: 1024,
                warmup: 1000,
                iterations: 20000,
                p50_us: p50,
                p99_us: p50 * 2.0,
                mean_us: p50,
                max_us: p50 * 3.0,
            },
            conn: ConnResult {
                connections: 1000,
                errors: 0,
                first_error: None,
                seconds: 5.0,
                rate_per_s: 1_000_000.0 / p50,
                p50_us: p50,
                p99_us: p50 * 2.0,
            },
            iperf_1: iperf(1),
            iperf_8: iperf(8),
            proxies: if path == PathKind::Direct {
                vec![]
            } else {
                vec![ProxyUsage {
                    side: "client",
                    cpu_seconds: gbit,
                    peak_rss_mib: 30.0,
                }]
            },
            proof: None,
        }
    }

    #[test]
    fn medians_and_same_run_ratios() {
        let results = vec![
            scenario(PathKind::Direct, 0, 20.0, 50.0, false),
            scenario(PathKind::Plain, 0, 10.0, 70.0, false),
            scenario(PathKind::Direct, 1, 30.0, 60.0, false),
            scenario(PathKind::Plain, 1, 12.0, 90.0, false),
            scenario(PathKind::Direct, 2, 25.0, 55.0, false),
            // Flagged: left out of the medians and of the ratios.
            scenario(PathKind::Plain, 2, 1.0, 1000.0, true),
        ];
        let s = summarize(&results, &[PathKind::Direct, PathKind::Plain]);
        assert_eq!(s[0].medians.gbit_s_1_stream, Some(25.0));
        assert_eq!(s[0].medians.rr_p50_us, Some(55.0));
        assert_eq!(s[0].vs_direct, None);
        assert_eq!(s[1].runs, 3);
        assert_eq!(s[1].runs_used, vec![0, 1]);
        assert!(!s[1].all_runs_flagged);
        assert_eq!(s[1].medians.gbit_s_1_stream, Some(11.0));
        let v = s[1].vs_direct.clone().unwrap();
        assert_eq!(
            (v.runs_used.as_slice(), v.includes_flagged_runs),
            (&[0, 1][..], false)
        );
        // Per run 10/20 = 0.5 and 12/30 = 0.4; median 0.45 (not 11/25).
        assert!((v.gbit_s_1_stream_ratio.unwrap() - 0.45).abs() < 1e-12);
        // Added p50: 20 and 30 us.
        assert_eq!(v.rr_p50_added_us, Some(25.0));
        assert_eq!(v.rr_p99_added_us, Some(50.0));
        assert_eq!(s[1].proxies[0].side, "client");
        assert_eq!(s[1].proxies[0].cpu_seconds, Some(11.0));
        assert_eq!(s[1].proxies[0].peak_rss_mib, Some(30.0));

        let table = render(&s);
        assert!(table.contains("plain 2/3"), "{table}");
        assert!(table.contains("0.45x"), "{table}");
        assert!(table.contains("+25.0"), "{table}");
    }

    #[test]
    fn all_flagged_falls_back_to_all_runs() {
        let results = vec![
            scenario(PathKind::Hbone, 0, 5.0, 100.0, true),
            scenario(PathKind::Hbone, 1, 7.0, 120.0, true),
        ];
        let s = summarize(&results, &[PathKind::Hbone]);
        assert!(s[0].all_runs_flagged);
        assert_eq!(s[0].runs_used, vec![0, 1]);
        assert_eq!(s[0].medians.gbit_s_1_stream, Some(6.0));
        // No direct TCP measured: no ratios.
        assert_eq!(s[0].vs_direct, None);
        assert!(render(&s).contains("all runs saw load"));

        // A quiet path is not compared with a direct TCP run that saw load, unless no
        // run has both quiet.
        let results = vec![
            scenario(PathKind::Direct, 0, 10.0, 50.0, true),
            scenario(PathKind::Hbone, 0, 5.0, 100.0, false),
            scenario(PathKind::Direct, 1, 20.0, 50.0, false),
            scenario(PathKind::Hbone, 1, 5.0, 100.0, false),
        ];
        let s = summarize(&results, &[PathKind::Direct, PathKind::Hbone]);
        let v = s[1].vs_direct.clone().unwrap();
        assert_eq!(
            (v.runs_used.as_slice(), v.includes_flagged_runs),
            (&[1][..], false)
        );
        assert_eq!(v.gbit_s_1_stream_ratio, Some(0.25));
        let s = summarize(&results[..2], &[PathKind::Direct, PathKind::Hbone]);
        let v = s[1].vs_direct.clone().unwrap();
        assert_eq!(
            (v.runs_used.as_slice(), v.includes_flagged_runs),
            (&[0][..], true)
        );
        assert_eq!(v.gbit_s_1_stream_ratio, Some(0.5));
        let table = render(&s);
        assert!(table.contains("hbone*"), "{table}");
        assert!(table.contains("ratios over runs that saw load"), "{table}");
        assert!(progress_line(&results[0]).contains("FLAGGED"));
    }
}
