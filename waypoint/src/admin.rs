//! The admin port (15021): readiness, liveness, metrics, config dump.

use std::sync::Arc;

use http::{Method, StatusCode};
use mesh_core::admin::{self, AdminRequest, AdminResponse, Router};
use mesh_core::readiness::Readiness;
use mesh_core::telemetry::LogControl;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::app::Shutdown;
use crate::proxy::Proxy;

#[derive(Debug)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub log: LogControl,
    pub shutdown: Shutdown,
    pub xds: tokio::sync::watch::Receiver<mesh_core::xds::XdsStatus>,
    pub resource_name: String,
}

pub fn router(s: Arc<AdminState>) -> Router {
    Arc::new(move |req: AdminRequest| {
        let s = s.clone();
        Box::pin(async move { route(&s, &req) })
    })
}

fn route(s: &AdminState, req: &AdminRequest) -> AdminResponse {
    match (req.method.clone(), req.path.as_str()) {
        (Method::GET, "/ready" | "/healthz/ready") => admin::readiness(&s.readiness),
        (Method::GET, "/healthz") => admin::text(StatusCode::OK, "ok\n"),
        (Method::GET, "/metrics" | "/stats/prometheus") => admin::metrics(&s.registry, req),
        (Method::GET, "/config_dump") => admin::json(&config_dump(s)),
        (_, "/logging") => admin::logging(&s.log, req),
        (Method::POST, "/quitquitquit") => {
            s.shutdown.trigger();
            admin::text(StatusCode::OK, "draining\n")
        }
        _ => admin::text(
            StatusCode::NOT_FOUND,
            "waypoint admin: GET /ready /healthz /metrics /config_dump, POST /logging /quitquitquit\n",
        ),
    }
}

fn config_dump(s: &AdminState) -> serde_json::Value {
    let d = s.proxy.discovery.load();
    let config = s.proxy.config.load();
    json!({
        "waypoint": s.resource_name,
        "identity": s.proxy.identity_uri,
        "xds": *s.xds.borrow(),
        "services": d.service_count(),
        "workloads": d.workload_count(),
        "config": config.as_ref().map(|w| json!({
            "services": w.services().iter().map(|svc| json!({
                "hostname": svc.hostname,
                "routes": svc.routes.len(),
                "policies": svc.policies.len(),
            })).collect::<Vec<_>>(),
            "gatewayPolicies": w.gateway_policies().len(),
        })),
    })
}
