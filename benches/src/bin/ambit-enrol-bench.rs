//! `ambit-enrol-bench`: the enrolment benchmark; see `ambit_bench::enrol`
//! and `benches/README.md`.

use std::process::ExitCode;

use ambit_bench::enrol::run::{self, EnrolArgs};
use ambit_bench::enrol::teardown::Teardown;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let args = EnrolArgs::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-enrol-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let teardown = Teardown::default();
    runtime.block_on(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("ambit-enrol-bench: cannot handle SIGINT/SIGTERM");
            return ExitCode::FAILURE;
        };
        let measuring = {
            let args = args.clone();
            let teardown = teardown.clone();
            tokio::task::spawn_blocking(move || run::run(&args, &teardown))
        };
        tokio::select! {
            outcome = measuring => finish(&args, outcome),
            _ = interrupt.recv() => stop(&teardown, "SIGINT", 130),
            _ = terminate.recv() => stop(&teardown, "SIGTERM", 143),
        }
    })
}

fn finish(
    args: &EnrolArgs,
    outcome: Result<anyhow::Result<run::EnrolReport>, tokio::task::JoinError>,
) -> ExitCode {
    let report = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("ambit-enrol-bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("ambit-enrol-bench: the measurement failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", ambit_bench::enrol::report::render(&report));
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(path, text).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("ambit-enrol-bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// A signal: take the cluster down now (the measuring thread is abandoned)
/// and exit.
fn stop(teardown: &Teardown, signal: &str, status: i32) -> ExitCode {
    eprintln!("ambit-enrol-bench: {signal}: taking the cluster down");
    for problem in teardown.run() {
        eprintln!("ambit-enrol-bench: cleanup: {problem}");
    }
    // The blocking thread may still be waiting on a probe; do not wait for it.
    std::process::exit(status)
}
