//! `ambit-control-bench`: the control-plane scale benchmark; see
//! `ambit_bench::control` and `benches/README.md`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ambit_bench::control::run::ControlArgs::parse();
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-control-bench: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ambit_bench::control::run::run(args)) {
        Ok(figures) => {
            print!("{}", ambit_bench::control::run::render(&figures));
            if json {
                match serde_json::to_string_pretty(&figures) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("ambit-control-bench: {e}"),
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ambit-control-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
