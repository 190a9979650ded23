//! The CNI plugin: the runtime runs it with the `CNI_*` environment and the
//! network configuration on stdin; see `node_agent::cni::plugin`.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(node_agent::cni::plugin::run(
            |name| std::env::var(name).ok(),
            &stdin,
        )),
        Err(e) => node_agent::cni::plugin::Outcome {
            stdout: format!(
                "{{\"cniVersion\":\"1.0.0\",\"code\":5,\"msg\":\"cannot start\",\"details\":\"{e}\"}}\n"
            ),
            exit_code: 1,
        },
    };
    let mut out = std::io::stdout();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
