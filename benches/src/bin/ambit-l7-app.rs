//! `ambit-l7-app`: the L7 benchmark's backends and load client (see `benches/README.md`).

use anyhow::{Context, Result};
use clap::Parser;

use ambit_bench::l7::cli::{AppArgs, AppCommand};
use ambit_bench::l7::{backend, load};

fn main() -> std::process::ExitCode {
    match run(AppArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-l7-app: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: AppArgs) -> Result<()> {
    // One thread: the harness pins each process to one CPU.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        match args.command {
            AppCommand::HttpServer { listen } => backend::serve_http(listen).await,
            AppCommand::GrpcServer { listen } => backend::serve_grpc(listen).await,
            AppCommand::Load(load_args) => {
                let result = load::run(&load_args.spec()?).await?;
                println!("{}", serde_json::to_string(&result)?);
                Ok(())
            }
        }
    })
}
