//! Compiles the gRPC test app's `proto/ambit/testapp/v1/echo.proto` with
//! protox (pure Rust, no system `protoc`), as mesh-api does for the mesh's
//! own protocols.

use std::path::Path;

const PROTO_DIR: &str = "proto";
const ECHO: &str = "ambit/testapp/v1/echo.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}/{ECHO}");
    let fds = protox::compile([Path::new(PROTO_DIR).join(ECHO)], [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
