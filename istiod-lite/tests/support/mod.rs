//! Shared by the integration tests of istiod-lite.

pub mod fake_apiserver;
