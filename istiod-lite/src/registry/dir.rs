//! The directory source: Kubernetes YAML files in a directory tree, watched live.

pub mod index;
pub mod parse;
