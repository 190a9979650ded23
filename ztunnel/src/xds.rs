//! ztunnel as a workload xDS client: the handlers for `Address` and
//! `Authorization` keep the received resources by name and rebuild the whole
//! [`State`] from them on every update, through the same model the config
//! file fills. PeerAuthentication arrives as Authorization policies (spec
//! 10.4), so the xDS-filled state has no peer authentications of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::xds::{Handler, NodeInfo, Rejection, Update, XdsClient, XdsError};
use tokio::sync::watch;

use crate::config::{Authorization, Service, Workload, XdsConfig};
use crate::state::from_xds::{self, AddressResource};
use crate::state::{State, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum XdsSetupError {
    #[error("proxy.xds.rootCert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("proxy.xds: {0}")]
    Client(#[from] XdsError),
}

/// The resources received so far, by resource name.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub workloads: BTreeMap<String, Workload>,
    pub services: BTreeMap<String, Service>,
    pub policies: BTreeMap<String, Authorization>,
}

impl Resources {
    /// Applies an `Address` update; bad resources are left as they were and
    /// reported.
    pub fn apply_addresses(&mut self, update: &Update) -> Vec<Rejection> {
        for name in &update.removed {
            self.workloads.remove(name);
            self.services.remove(name);
        }
        let mut rejected = Vec::new();
        for r in &update.resources {
            match from_xds::address_from_any(&r.body) {
                Ok(AddressResource::Workload(w)) => {
                    self.services.remove(&r.name);
                    self.workloads.insert(r.name.clone(), *w);
                }
                Ok(AddressResource::Service(s)) => {
                    self.workloads.remove(&r.name);
                    self.services.insert(r.name.clone(), *s);
                }
                Err(e) => rejected.push(Rejection::new(&r.name, e.to_string())),
            }
        }
        rejected
    }

    pub fn apply_authorizations(&mut self, update: &Update) -> Vec<Rejection> {
        for name in &update.removed {
            self.policies.remove(name);
        }
        let mut rejected = Vec::new();
        for r in &update.resources {
            match from_xds::authorization_from_any(&r.body) {
                Ok(p) => {
                    self.policies.insert(r.name.clone(), p);
                }
                Err(e) => rejected.push(Rejection::new(&r.name, e.to_string())),
            }
        }
        rejected
    }

    pub fn build_state(&self) -> Result<State, crate::state::StateError> {
        let workloads: Vec<_> = self.workloads.values().cloned().collect();
        let services: Vec<_> = self.services.values().cloned().collect();
        let policies: Vec<_> = self.policies.values().cloned().collect();
        State::build(&workloads, &services, &policies, &[])
    }
}

/// The xDS-filled model behind the state store.
#[derive(Debug)]
pub struct XdsModel {
    resources: Mutex<Resources>,
    store: Arc<StateStore>,
    /// Bumped after every state swap, for whoever waits on a workload.
    generation: watch::Sender<u64>,
}

impl XdsModel {
    pub fn new(store: Arc<StateStore>) -> Arc<Self> {
        Arc::new(XdsModel {
            resources: Mutex::new(Resources::default()),
            store,
            generation: watch::channel(0).0,
        })
    }

    /// Changes whenever the state was rebuilt.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn apply(
        &self,
        update: &Update,
        f: fn(&mut Resources, &Update) -> Vec<Rejection>,
    ) -> Vec<Rejection> {
        let mut resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let before = resources.clone();
        let mut rejected = f(&mut resources, update);
        match resources.build_state() {
            Ok(state) => {
                self.store.replace(state);
                self.generation.send_modify(|g| *g += 1);
            }
            Err(e) => {
                // Conversion checks what the build needs, so this is a bug
                // guard: keep the last good model and refuse the whole update.
                *resources = before;
                rejected = update
                    .resources
                    .iter()
                    .map(|r| Rejection::new(&r.name, format!("state rebuild failed: {e}")))
                    .collect();
            }
        }
        rejected
    }
}

#[derive(Debug)]
struct AddressHandler(Arc<XdsModel>);

impl Handler for AddressHandler {
    fn type_url(&self) -> &str {
        ADDRESS_TYPE_URL
    }
    fn apply(&self, update: &Update) -> Vec<Rejection> {
        self.0.apply(update, Resources::apply_addresses)
    }
}

#[derive(Debug)]
struct AuthorizationHandler(Arc<XdsModel>);

impl Handler for AuthorizationHandler {
    fn type_url(&self) -> &str {
        AUTHORIZATION_TYPE_URL
    }
    fn apply(&self, update: &Update) -> Vec<Rejection> {
        self.0.apply(update, Resources::apply_authorizations)
    }
}

/// Builds the client for `config`, filling `store`. Address is subscribed
/// first, then Authorization (spec 3.3).
pub async fn client(
    config: &XdsConfig,
    store: Arc<StateStore>,
    mark: Option<u32>,
) -> Result<(XdsClient, Arc<XdsModel>), XdsSetupError> {
    let root_err = |reason: String| XdsSetupError::RootCert {
        path: config.root_cert.display().to_string(),
        reason,
    };
    let pem = tokio::fs::read(&config.root_cert)
        .await
        .map_err(|e| root_err(e.to_string()))?;
    let roots = mesh_core::tls::parse_certs(&pem, "xDS root certificate")
        .map_err(|e| root_err(e.to_string()))?;
    let token = match (&config.token, &config.token_file) {
        (Some(t), _) => Some(TokenSource::Literal(t.clone())),
        (None, Some(path)) => Some(TokenSource::File(path.clone())),
        (None, None) => None,
    };
    let control = ControlPlane {
        address: config.address.clone(),
        server_name: config.server_name.clone(),
        roots,
        token,
        cluster_id: config.cluster_id.clone(),
        headers: config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mark,
    };
    let node = NodeInfo {
        proxy_type: "ztunnel".into(),
        pod_name: config.pod_name.clone(),
        pod_namespace: config.pod_namespace.clone(),
        instance_ip: config.instance_ip,
        node_name: config.node_name.clone(),
        cluster_id: config.cluster_id.clone(),
        metadata: config.metadata.clone(),
    }
    .to_node();
    let model = XdsModel::new(store);
    let client = XdsClient::new(
        control,
        node,
        vec![
            Arc::new(AddressHandler(model.clone())),
            Arc::new(AuthorizationHandler(model.clone())),
        ],
    )?;
    Ok((client, model))
}

#[cfg(test)]
mod tests;
