//! Shared (in-pod) mode: one ztunnel serves every pod the node agent hands it
//! over ZDS, with a full listener set (15001, 15006, 15008) inside each pod's
//! network namespace and upstream sockets created there too, so traffic leaves
//! with the pod's address and the pod's redirection rules, keyed on the packet
//! mark, let it through. Admin, metrics and readiness stay in ztunnel's own
//! namespace. Pods come and go without touching each other: each has its own
//! listeners, HBONE pool and drain.
//!
//! `session` decides (pure), `client` talks ZDS, `pods` keeps the set of
//! served pods, `pod` starts one pod's proxy. Not done here: the DNS proxy
//! (15053) and the self-listener of ztunnel's own pod.

mod client;
pub mod pod;
pub mod pods;
pub mod session;

pub use client::ZdsClient;
pub use pod::{PodContext, PodError, PodPorts};
pub use pods::{PodStatus, Pods, PodsView};
