use std::process::ExitCode;

use node_agent::app::App;
use node_agent::cni::install::{self, PluginEntry};
use node_agent::config::{Config, InstallCni, Subcommands};

fn main() -> ExitCode {
    let config = Config::from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let log = mesh_core::telemetry::init_logging(&config.log);
    if let Some(Subcommands::InstallCni(install)) = &config.command {
        return install_cni(install);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match App::start(config, log).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("node-agent: {e}");
                return ExitCode::FAILURE;
            }
        };
        let first = mesh_core::drain::termination_signal().await;
        tracing::info!("{first}: shutting down");
        tokio::select! {
            _ = app.shutdown() => ExitCode::SUCCESS,
            _ = mesh_core::drain::termination_signal() => {
                tracing::warn!("second signal: exiting at once");
                ExitCode::FAILURE
            }
        }
    })
}

fn install_cni(args: &InstallCni) -> ExitCode {
    if args.uninstall {
        return match install::uninstall(&args.cni_bin_dir, &args.cni_conf_dir) {
            Ok(()) => {
                tracing::info!("ambit-cni removed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("node-agent install-cni --uninstall: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let binary = match &args.cni_binary {
        Some(path) => path.clone(),
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(install::PLUGIN_TYPE),
            Err(e) => {
                eprintln!(
                    "node-agent install-cni: cannot find this program's path ({e}); pass --cni-binary"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let entry = PluginEntry {
        cni_socket: args.cni_socket.clone(),
        timeout: args.cni_timeout,
    };
    match install::install(&binary, &args.cni_bin_dir, &args.cni_conf_dir, &entry) {
        Ok(done) => {
            tracing::info!(binary = %done.binary.display(), config = %done.config.display(), changed = done.changed, "ambit-cni installed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("node-agent install-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
