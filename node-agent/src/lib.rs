//! Ambit's node agent: enrolment of a node's pods in the mesh without
//! restarting them. It learns pods from the CNI plugin (`ambit-cni`, chained
//! after the node's network plugin) and their labels from the registry
//! (a YAML directory or the Kubernetes API), decides enrolment as a pure
//! function of those labels, installs the in-pod redirection rules in each
//! enrolled pod's network namespace, and hands the namespace to ztunnel over
//! ZDS. It keeps each pod's netns open and a record of it on disk, so that a
//! restart reconciles rather than forgets.
//!
//! It does not proxy traffic (ztunnel does), does not capture DNS, and does
//! not touch the host network namespace.

pub mod agent;
pub mod app;
pub mod cni;
pub mod config;
pub mod enrolment;
pub mod metrics;
pub mod pods;
pub mod redirect;
pub mod zds;
