use std::process::ExitCode;

use clap::Parser;
use waypoint::{App, Overrides, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings = Settings::parse();
    let log = mesh_core::telemetry::init_logging("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("waypoint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match App::build(settings, log, Overrides::default()).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("waypoint: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addresses = ?app.addresses, "waypoint listening");
        let shutdown = app.shutdown();
        tokio::spawn(async move {
            let signal = mesh_core::drain::termination_signal().await;
            tracing::info!(signal, "draining");
            shutdown.trigger();
        });
        app.run().await;
        ExitCode::SUCCESS
    })
}
