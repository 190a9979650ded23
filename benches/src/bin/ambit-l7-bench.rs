//! `ambit-l7-bench`: see `benches/README.md`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ambit_bench::l7::cli::L7BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-l7-bench: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the run is dropped at its next await, so its namespaces
    // and processes are removed by their guards.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = ambit_bench::l7::bench::run(args) => r,
            s = interrupted() => Err(anyhow::anyhow!("{s}: stopped; namespaces and processes removed")),
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-l7-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}
