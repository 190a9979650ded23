//! Compiles the L7 benchmark's gRPC service (`proto/ambit/bench/v1/echo.proto`) with
//! protox (pure Rust, no system `protoc`), client and server.

use std::path::Path;

const PROTO_DIR: &str = "proto";
const PROTO: &str = "ambit/bench/v1/echo.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}/{PROTO}");
    let fds = protox::compile([Path::new(PROTO_DIR).join(PROTO)], [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
