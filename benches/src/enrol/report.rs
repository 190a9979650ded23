//! The enrolment benchmark's printed table.

use std::fmt::Write;

use super::figures::Spread;
use super::run::EnrolReport;

fn spread_ms(s: Option<&Spread>) -> String {
    s.map_or("-".into(), |s| {
        format!("{:.0} / {:.0} / {:.0} ms", s.median, s.p90, s.max)
    })
}

fn kib(v: Option<f64>) -> String {
    // `+ 0.0` turns -0.0 into 0.0, which prints without a sign.
    v.map_or("-".into(), |v| format!("{:.0} KiB", v.round() + 0.0))
}

pub fn render(report: &EnrolReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Enrolment: namespace label written -> each pod's first mTLS connection, as counted by \
         the server node's ztunnel (each client connects every {:.0} ms, all together at most {}/s; \
         metrics scraped every {:.0} ms; {} CPUs; load average {} at start, {} at end)\n",
        report.every_ms,
        report.max_rate,
        report.poll_ms,
        report.cpus,
        report.load_at_start,
        report.load_at_end
    );
    let _ = writeln!(
        out,
        "| pods | client every | runs | first pod: median / p90 / max | all pods: median / p90 / max | widest detection window | ztunnel RSS per pod: first enrolment (fresh ztunnel) | re-enrolments (median) | machine busy before / during label (median) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for s in &report.scenarios {
        let before: Vec<f64> = s.runs.iter().map(|r| r.busy_before_percent).collect();
        let during: Vec<f64> = s.runs.iter().map(|r| r.busy_during_percent).collect();
        let percent =
            |v: &[f64]| crate::stats::median(v).map_or("-".into(), |v| format!("{v:.0}%"));
        let _ = writeln!(
            out,
            "| {}{} | {:.0} ms | {} | {} | {} | {:.0} ms | {} | {} | {} / {} |",
            s.pods,
            if s.flagged { " (not quiet)" } else { "" },
            s.client_every_ms,
            s.runs.len(),
            spread_ms(s.first_pod.as_ref()),
            spread_ms(s.all_pods.as_ref()),
            s.widest_window_ms,
            kib(s.rss_per_pod_first_kib),
            kib(s.rss_per_pod_runs_kib),
            percent(&before),
            percent(&during),
        );
    }
    let _ = writeln!(
        out,
        "\nEach time is when the scrape that first showed the pod's mTLS connection ended; the \
         connection happened at most one detection window earlier, and the pod could carry mTLS \
         up to one client interval before that. Quiet check (idle machine, nothing of the \
         benchmark running) before and after each scenario; \"not quiet\" marks other load."
    );
    for s in &report.scenarios {
        let failed: Vec<String> = s
            .client_failures
            .iter()
            .map(|(why, n)| format!("{n} x {why}"))
            .collect();
        let attempts_failed = if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join(", ")
        };
        let _ = writeln!(
            out,
            "  {} pod(s): client attempts failed during enrolment (all runs): {attempts_failed}",
            s.pods
        );
        let _ = writeln!(
            out,
            "  {} pod(s): cluster up in {:.1} s; machine busy before it {:.1}% ({} sample(s)), after it {:.1}%; node-1 ztunnel RSS before any enrolment {} KiB",
            s.pods,
            s.cluster_up_s,
            s.quiet_before.last(),
            s.quiet_before.samples_busy_percent.len(),
            s.quiet_after.last(),
            s.rss_fresh_kib
        );
    }
    out
}
