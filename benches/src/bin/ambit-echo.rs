//! `ambit-echo`: the echo server and the latency clients of `ambit-bench`. Clients print
//! one JSON object on stdout.

use std::time::Duration;

use ambit_bench::cli::{EchoArgs, EchoCommand};
use ambit_bench::echo;
use anyhow::{Context, Result};
use clap::Parser;

fn main() -> Result<()> {
    match EchoArgs::parse().command {
        EchoCommand::Server { listen } => {
            // One thread: the process is pinned to one CPU.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                echo::serve(listener).await.context("serving echo")
            })
        }
        EchoCommand::Rr {
            addr,
            size,
            warmup,
            iterations,
        } => {
            let result = echo::request_response(addr, size, warmup, iterations)
                .with_context(|| format!("request/response test against {addr}"))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        EchoCommand::Conn { addr, duration } => {
            let duration = Duration::try_from_secs_f64(duration)
                .context("--duration must be a non-negative number of seconds")?;
            let result = echo::connection_rate(addr, duration);
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
    }
}
