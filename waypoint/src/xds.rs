//! The waypoint as an xDS client: `istio.workload.Address` (wildcard) fills
//! the discovery model, and `ambit.waypoint.v1.Waypoint` (its own resource,
//! `<namespace>/<gateway>`) the L7 config. Each update rebuilds the model
//! and swaps it in whole; resources that cannot be used are NACKed with the
//! reason and counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mesh_api::ambit::waypoint::v1::Waypoint;
use mesh_api::{ADDRESS_TYPE_URL, WAYPOINT_TYPE_URL};
use mesh_core::xds::{Handler, Rejection, Update};
use prost::Message;

use crate::config::Snapshot;
use crate::discovery::{self, Address, Discovery};
use crate::metrics::ConfigErrorLabels;
use crate::proxy::Proxy;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `Address` resources by name and swaps in a new [`Discovery`] on
/// every update.
#[derive(Debug)]
pub struct AddressHandler {
    proxy: Arc<Proxy>,
    resources: Mutex<BTreeMap<String, Address>>,
}

impl AddressHandler {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        AddressHandler {
            proxy,
            resources: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Handler for AddressHandler {
    fn type_url(&self) -> &str {
        ADDRESS_TYPE_URL
    }

    fn apply(&self, update: &Update) -> Vec<Rejection> {
        let mut resources = lock(&self.resources);
        for name in &update.removed {
            resources.remove(name);
        }
        let mut rejected = Vec::new();
        for r in &update.resources {
            if r.body.type_url != ADDRESS_TYPE_URL {
                rejected.push(Rejection::new(
                    &r.name,
                    format!("type {} is not {ADDRESS_TYPE_URL}", r.body.type_url),
                ));
                continue;
            }
            match discovery::decode_address(&r.body.value) {
                Ok(a) => {
                    resources.insert(r.name.clone(), a);
                }
                Err(e) => rejected.push(Rejection::new(&r.name, e.to_string())),
            }
        }
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        for a in resources.values() {
            match a {
                Address::Workload(w) => workloads.push((**w).clone()),
                Address::Service(s) => services.push(s.clone()),
            }
        }
        self.proxy
            .discovery
            .store(Arc::new(Discovery::build(&workloads, &services)));
        count(&self.proxy, "address", rejected.len());
        rejected
    }
}

/// Receives the waypoint's own `Waypoint` resource.
#[derive(Debug)]
pub struct WaypointHandler {
    proxy: Arc<Proxy>,
    /// `<namespace>/<gateway name>`.
    name: String,
}

impl WaypointHandler {
    pub fn new(proxy: Arc<Proxy>, name: String) -> Self {
        WaypointHandler { proxy, name }
    }
}

impl Handler for WaypointHandler {
    fn type_url(&self) -> &str {
        WAYPOINT_TYPE_URL
    }

    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn apply(&self, update: &Update) -> Vec<Rejection> {
        if update.removed.contains(&self.name) {
            tracing::warn!(waypoint = %self.name, "the control plane removed this waypoint's config; serving without routes or policies");
            self.proxy.config.store(None);
        }
        let mut rejected = Vec::new();
        for r in &update.resources {
            if r.name != self.name {
                rejected.push(Rejection::new(
                    &r.name,
                    format!("not subscribed: this waypoint is {}", self.name),
                ));
                continue;
            }
            let decoded = if r.body.type_url != WAYPOINT_TYPE_URL {
                Err(format!(
                    "type {} is not {WAYPOINT_TYPE_URL}",
                    r.body.type_url
                ))
            } else {
                Waypoint::decode(r.body.value.as_slice())
                    .map_err(|e| format!("not a valid Waypoint message: {e}"))
            };
            match decoded {
                Ok(w) => {
                    // Invalid parts are dropped and NACKed with the reasons;
                    // the rest applies (a bad route must not take down the
                    // others).
                    let (snapshot, errors) = Snapshot::compile(&w);
                    if !errors.is_empty() {
                        let reasons: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                        tracing::warn!(waypoint = %self.name, errors = %reasons.join("; "), "parts of the waypoint config were refused");
                        count(&self.proxy, "waypoint_config", errors.len());
                        rejected.push(Rejection::new(&r.name, reasons.join("; ")));
                    }
                    self.proxy.config.store(Some(Arc::new(snapshot)));
                }
                Err(reason) => {
                    count(&self.proxy, "waypoint", 1);
                    rejected.push(Rejection::new(&r.name, reason));
                }
            }
        }
        rejected
    }
}

fn count(proxy: &Proxy, kind: &str, n: usize) {
    if n > 0 {
        proxy
            .metrics
            .config_errors
            .get_or_create(&ConfigErrorLabels { kind: kind.into() })
            .inc_by(n as u64);
    }
}
