use std::process::ExitCode;

use istiod_lite::app::App;
use istiod_lite::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let log = mesh_core::telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("istiod-lite: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match App::start(config, log).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("istiod-lite: {e}");
                return ExitCode::FAILURE;
            }
        };
        let first = mesh_core::drain::termination_signal().await;
        tracing::info!("{first}: draining");
        tokio::select! {
            _ = app.shutdown() => ExitCode::SUCCESS,
            _ = mesh_core::drain::termination_signal() => {
                tracing::warn!("second signal: exiting at once");
                ExitCode::FAILURE
            }
        }
    })
}
