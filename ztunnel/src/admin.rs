//! ztunnel's admin (15000), metrics (15020) and readiness (15021) routes.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{Method, StatusCode};
use mesh_core::admin::{self, AdminRequest, AdminResponse, Router};
use mesh_core::readiness::Readiness;
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{CertStore, LeafInfo};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::app::Shutdown;
use crate::config::Config;
use crate::state::StateStore;

#[derive(Debug)]
pub struct AdminState {
    pub config: Config,
    pub state: Arc<StateStore>,
    pub certs: Arc<CertStore>,
    pub log: LogControl,
    pub shutdown: Shutdown,
    /// The xDS client's status when the state comes from a control plane.
    pub xds: Option<tokio::sync::watch::Receiver<mesh_core::xds::XdsStatus>>,
    /// In-pod mode: the pods served.
    pub pods: Option<crate::inpod::PodsView>,
}

pub fn admin_router(s: Arc<AdminState>) -> Router {
    Arc::new(move |req: AdminRequest| {
        let s = s.clone();
        Box::pin(async move { route_admin(&s, &req) })
    })
}

fn route_admin(s: &AdminState, req: &AdminRequest) -> AdminResponse {
    match (req.method.clone(), req.path.as_str()) {
        (Method::GET, "/") => admin::text(
            StatusCode::OK,
            "ztunnel admin\n  GET  /config_dump\n  POST /logging[?level=<filter>|?reset]\n  POST /quitquitquit\n",
        ),
        (Method::GET, "/config_dump") => admin::json(&config_dump(s)),
        (_, "/logging") => admin::logging(&s.log, req),
        (Method::POST, "/quitquitquit") => {
            s.shutdown.trigger();
            admin::text(StatusCode::OK, "shutdown now\n")
        }
        (_, "/quitquitquit") => admin::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => admin::text(StatusCode::NOT_FOUND, "not found; see /\n"),
    }
}

fn config_dump(s: &AdminState) -> serde_json::Value {
    let state = s.state.load();
    let mut workloads: Vec<_> = state
        .workloads()
        .map(|w| json!({"identity": w.identity.to_string(), "workload": w.spec}))
        .collect();
    workloads.sort_by_key(|w| w["workload"]["uid"].as_str().map(String::from));
    let mut services: Vec<_> = state.services().map(|s| json!(s.as_ref())).collect();
    services.sort_by_key(|s| s["hostname"].as_str().map(String::from));
    let mut policies: Vec<_> = state.policies().map(|p| json!(p.as_ref())).collect();
    policies.sort_by_key(|p| format!("{}/{}", p["namespace"], p["name"]));
    let certificates: Vec<_> = s
        .certs
        .snapshot()
        .into_iter()
        .map(|(id, cert)| match cert {
            Some(c) => {
                let info = LeafInfo::parse(c.leaf()).ok();
                json!({
                    "identity": id.to_string(),
                    "state": if c.is_expired(std::time::SystemTime::now()) { "Expired" } else { "Available" },
                    "notBefore": secs(c.not_before),
                    "notAfter": secs(c.not_after),
                    "serial": info.map(|i| i.serial),
                })
            }
            None => json!({"identity": id.to_string(), "state": "Initializing"}),
        })
        .collect();
    json!({
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "peerAuthentications": state.peer_authentications(),
        "config": s.config.proxy,
        "source": if s.xds.is_some() { "xds" } else { "file" },
        "xds": s.xds.as_ref().map(|x| x.borrow().clone()),
        "certificates": certificates,
        "mode": if s.pods.is_some() { "inpod" } else { "dedicated" },
        "workloadState": s.pods.as_ref().map(|p| p.list()),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Arc::new(move |req: AdminRequest| {
        let registry = registry.clone();
        Box::pin(async move {
            match req.path.as_str() {
                "/metrics" | "/stats/prometheus" => admin::metrics(&registry, &req),
                _ => admin::text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
            }
        })
    })
}

pub fn readiness_router(readiness: Readiness) -> Router {
    Arc::new(move |req: AdminRequest| {
        let readiness = readiness.clone();
        Box::pin(async move {
            match req.path.as_str() {
                "/healthz/ready" => admin::readiness(&readiness),
                _ => admin::text(StatusCode::NOT_FOUND, "not found; try /healthz/ready\n"),
            }
        })
    })
}
