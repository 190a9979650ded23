//! The gRPC test apps (`ambit app grpc-server` and `grpc-client`), serving
//! and calling `ambit.testapp.v1.Echo` (unary `Echo`, server-streaming
//! `Stream`, client-streaming `Collect`). Every reply names the server and
//! echoes the `x-forwarded-client-cert` metadata it received.

pub mod client;
pub mod server;

/// Generated from `cli/proto/ambit/testapp/v1/echo.proto` by build.rs.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("ambit.testapp.v1");
}

#[cfg(test)]
mod tests;
