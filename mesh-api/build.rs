//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates message types with prost-build and gRPC clients and servers with
//! tonic-prost-build (the delta ADS and Istio CA services).

use std::path::{Path, PathBuf};

const PROTO_DIR: &str = "proto";

const PROTOS: &[&str] = &[
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/delta.proto",
    "google/rpc/status.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
    "istio/zds/zds.proto",
    "ambit/waypoint/v1/waypoint.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_DIR}/{proto}");
    }

    let files: Vec<PathBuf> = PROTOS
        .iter()
        .map(|p| Path::new(PROTO_DIR).join(p))
        .collect();
    // Well-known types (google/protobuf/*.proto) are built into protox.
    let fds = protox::compile(&files, [PROTO_DIR])?;

    // `.google.protobuf` maps to `::prost_types` by default.
    // A BTreeMap keeps `Workload.services` in key order, so the encoded bytes
    // (and the resource versions digested from them) depend only on content.
    tonic_prost_build::configure()
        .btree_map(".istio.workload.Workload.services")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
