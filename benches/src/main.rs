//! `ambit-bench`: see the crate documentation and `benches/README.md`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ambit_bench::cli::BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-bench: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ambit_bench::bench::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
