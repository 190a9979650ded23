use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ztunnel::{App, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ambit's node tunnel: mTLS HBONE tunnels, L4 policy and metrics.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The config file (see docs/ztunnel-config.md).
    #[arg(long, env = "ZTUNNEL_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = mesh_core::telemetry::init_logging("info");
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ztunnel: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let threads = match config.proxy.worker_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    // One worker: a current-thread runtime saves the cross-thread wake-ups.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ztunnel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match App::build(config, log).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ztunnel: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addresses = ?app.addresses, "ztunnel ready to serve");
        let shutdown = app.shutdown();
        tokio::spawn(on_signals(app.shutdown()));
        app.run().await;
        match shutdown.failure() {
            Some(reason) => {
                eprintln!("ztunnel: {reason}");
                ExitCode::FAILURE
            }
            None => ExitCode::SUCCESS,
        }
    })
}

/// SIGTERM or SIGINT drains; a second SIGINT exits at once.
async fn on_signals(shutdown: ztunnel::Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    shutdown.trigger();
    int.recv().await;
    tracing::warn!("second SIGINT: exiting now");
    std::process::exit(1);
}
