//! Kubernetes: each accepted waypoint Gateway's ServiceAccount, Service and
//! Deployment, created and updated with server-side apply (field manager
//! `istiod-lite`) and owned by the Gateway, so the garbage collector removes
//! them with it; and the Gateways' `status.addresses`. What to send is
//! decided by the pure functions in `objects` and `status`; this only sends
//! what changed since the last successful write.

use std::collections::{BTreeMap, HashMap};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::status::invalid_reason;
use super::{FIELD_MANAGER, Settings, objects, waypoint_gateways};
use crate::model::{NamespacedName, ObjectKey, StatusAddress, Store};

#[derive(Debug, thiserror::Error)]
pub enum KubeProvisionError {
    #[error("applying {kind} {object}: {source}")]
    Apply {
        kind: String,
        object: NamespacedName,
        source: Box<kube::Error>,
    },
    #[error("patching the addresses of Gateway {object}: {source}")]
    Addresses {
        object: NamespacedName,
        source: Box<kube::Error>,
    },
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "Service" => "services",
        "ServiceAccount" => "serviceaccounts",
        "ConfigMap" => "configmaps",
        _ => "gateways",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The documents to apply for each accepted waypoint Gateway the API server
/// has given a uid.
pub fn desired(store: &Store, settings: &Settings) -> BTreeMap<NamespacedName, Vec<Value>> {
    waypoint_gateways(store)
        .into_iter()
        .filter(|gw| gw.uid.is_some() && invalid_reason(store, gw).is_none())
        .map(|gw| {
            let mut documents = vec![
                objects::service_account(&gw, true),
                objects::service(&gw, None, true),
                objects::deployment(&gw, settings),
            ];
            if !settings.root_cert_pem.is_empty() {
                documents.insert(0, objects::root_cert_config_map(&gw, settings));
            }
            (gw.key, documents)
        })
        .collect()
}

/// Applies waypoint objects and writes Gateway addresses, remembering what
/// was written so an unchanged registry sends nothing.
pub struct KubeProvisioner {
    client: kube::Client,
    settings: Settings,
    applied: HashMap<NamespacedName, Vec<Value>>,
    addresses: HashMap<ObjectKey, Vec<StatusAddress>>,
}

impl KubeProvisioner {
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            applied: HashMap::new(),
            addresses: HashMap::new(),
        }
    }

    /// Applies the objects of every waypoint whose documents changed. All
    /// waypoints are attempted; the first failure is returned (and retried
    /// at the next call).
    pub async fn apply(&mut self, store: &Store) -> Result<(), KubeProvisionError> {
        let desired = desired(store, &self.settings);
        // Deleted Gateways' objects go with them (owner references).
        self.applied.retain(|key, _| desired.contains_key(key));
        let mut first_error = None;
        for (key, documents) in desired {
            if self.applied.get(&key) == Some(&documents) {
                continue;
            }
            match self.apply_documents(&key, &documents).await {
                Ok(()) => {
                    tracing::info!(gateway = %key, "waypoint objects applied");
                    self.applied.insert(key, documents);
                }
                Err(error) => {
                    tracing::warn!(%error, "waypoint provisioning failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn apply_documents(
        &self,
        key: &NamespacedName,
        documents: &[Value],
    ) -> Result<(), KubeProvisionError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for document in documents {
            let api_version = document["apiVersion"].as_str().unwrap_or_default();
            let kind = document["kind"].as_str().unwrap_or_default();
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                &key.namespace,
                &resource(api_version, kind),
            );
            let name = document["metadata"]["name"].as_str().unwrap_or(&key.name);
            api.patch(name, &params, &Patch::Apply(document))
                .await
                .map_err(|source| KubeProvisionError::Apply {
                    kind: kind.to_string(),
                    object: key.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// Merge-patches `status.addresses` of each Gateway whose addresses
    /// changed since the last write (the conditions are written by the
    /// registry's status writer, so the two never overwrite each other).
    pub async fn write_addresses(
        &mut self,
        addresses: &BTreeMap<ObjectKey, Vec<StatusAddress>>,
    ) -> Result<(), KubeProvisionError> {
        self.addresses.retain(|key, _| addresses.contains_key(key));
        let gateways = resource("gateway.networking.k8s.io/v1", "Gateway");
        let mut first_error = None;
        for (key, wanted) in addresses {
            if self.addresses.get(key) == Some(wanted) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.name.namespace, &gateways);
            let body = json!({"status": {"addresses": wanted
                .iter()
                .map(|a| json!({"type": a.type_, "value": a.value}))
                .collect::<Vec<_>>()}});
            match api
                .patch_status(&key.name.name, &PatchParams::default(), &Patch::Merge(body))
                .await
            {
                Ok(_) => {
                    self.addresses.insert(key.clone(), wanted.clone());
                }
                Err(source) => {
                    let error = KubeProvisionError::Addresses {
                        object: key.name.clone(),
                        source: Box::new(source),
                    };
                    tracing::warn!(%error, "Gateway address write failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
