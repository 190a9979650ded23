//! The in-memory view of the mesh: workloads, services and policies with the
//! indices the data path needs. Replaced as a whole on every update (file now,
//! xDS later) and read lock-free through [`StateStore`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::Identity;

pub mod from_xds;

use crate::config::{Authorization, Config, PeerAuthentication, PortMapping, Service, Workload};

/// A workload with its identity computed once.
#[derive(Debug)]
pub struct WorkloadEntry {
    pub spec: Workload,
    pub identity: Identity,
}

impl WorkloadEntry {
    /// The canonical service name used in telemetry.
    pub fn canonical_service(&self) -> &str {
        first_set(&[
            &self.spec.canonical_name,
            &self.spec.workload_name,
            &self.spec.name,
        ])
    }

    pub fn canonical_revision(&self) -> &str {
        first_set(&[&self.spec.canonical_revision, "latest"])
    }

    pub fn workload_name(&self) -> &str {
        first_set(&[&self.spec.workload_name, &self.spec.name])
    }

    /// The first address of the same family as `like`.
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.spec
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }
}

fn first_set<'a>(options: &[&'a str]) -> &'a str {
    options
        .iter()
        .copied()
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

/// An endpoint of a service: a workload and its port mapping for that service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<WorkloadEntry>,
    pub ports: Vec<PortMapping>,
}

#[derive(Debug, Default)]
pub struct State {
    workloads: HashMap<String, Arc<WorkloadEntry>>,
    by_ip: HashMap<IpAddr, Arc<WorkloadEntry>>,
    /// `(namespace, name)`; the smallest uid wins when several share a name.
    by_name: HashMap<(String, String), Arc<WorkloadEntry>>,
    services: HashMap<String, Arc<Service>>,
    /// The first listed service of each hostname.
    by_hostname: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Vec<Arc<Service>>>,
    endpoints: HashMap<String, Vec<Endpoint>>,
    policies: HashMap<String, Arc<Authorization>>,
    peer_authentications: Vec<PeerAuthentication>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("workload {uid}: {source}")]
    Identity {
        uid: String,
        source: mesh_core::identity::IdentityError,
    },
}

impl State {
    pub fn from_config(config: &Config) -> Result<State, StateError> {
        Self::build(
            &config.workloads,
            &config.services,
            &config.authorization_policies,
            &config.peer_authentications,
        )
    }

    pub fn build(
        workloads: &[Workload],
        services: &[Service],
        policies: &[Authorization],
        peer_authentications: &[PeerAuthentication],
    ) -> Result<State, StateError> {
        let mut s = State::default();
        for svc in services {
            let svc = Arc::new(svc.clone());
            for vip in &svc.addresses {
                s.by_vip.entry(*vip).or_default().push(svc.clone());
            }
            s.by_hostname
                .entry(svc.hostname.clone())
                .or_insert_with(|| svc.clone());
            s.services
                .insert(format!("{}/{}", svc.namespace, svc.hostname), svc);
        }
        for w in workloads {
            let identity =
                Identity::for_workload(&w.trust_domain, &w.namespace, &w.service_account).map_err(
                    |e| StateError::Identity {
                        uid: w.uid.clone(),
                        source: e,
                    },
                )?;
            let entry = Arc::new(WorkloadEntry {
                spec: w.clone(),
                identity,
            });
            for ip in &w.addresses {
                // Several workloads on one IP: keep the first HBONE one (spec 3.5).
                let keep_existing = s.by_ip.get(ip).is_some_and(|e| {
                    e.spec.tunnel_protocol == crate::config::TunnelProtocol::Hbone
                });
                if !keep_existing {
                    s.by_ip.insert(*ip, entry.clone());
                }
            }
            for (svc_key, ports) in &w.services {
                s.endpoints
                    .entry(svc_key.clone())
                    .or_default()
                    .push(Endpoint {
                        workload: entry.clone(),
                        ports: ports.clone(),
                    });
            }
            let key = (w.namespace.clone(), w.name.clone());
            if s.by_name.get(&key).is_none_or(|e| w.uid < e.spec.uid) {
                s.by_name.insert(key, entry.clone());
            }
            s.workloads.insert(w.uid.clone(), entry);
        }
        for p in policies {
            s.policies.insert(p.key(), Arc::new(p.clone()));
        }
        s.peer_authentications = peer_authentications.to_vec();
        Ok(s)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<WorkloadEntry>> {
        self.by_ip.get(&ip)
    }

    /// The workload named `namespace/name` (the one a dedicated ztunnel serves).
    pub fn workload_named(&self, namespace: &str, name: &str) -> Option<&Arc<WorkloadEntry>> {
        self.by_name.get(&(namespace.to_string(), name.to_string()))
    }

    /// The service `namespace/hostname`.
    pub fn service(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(&format!("{namespace}/{hostname}"))
    }

    /// The service by its `namespace/hostname` key (a workload's `services` key).
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.by_hostname.get(hostname)
    }

    /// The service for a VIP as seen from a client namespace: the client's own
    /// namespace first, then any (spec 2.6 step 2).
    pub fn service_by_vip(&self, vip: IpAddr, client_namespace: &str) -> Option<&Arc<Service>> {
        let list = self.by_vip.get(&vip)?;
        list.iter()
            .find(|s| s.namespace == client_namespace)
            .or_else(|| list.first())
    }

    pub fn service_key(svc: &Service) -> String {
        format!("{}/{}", svc.namespace, svc.hostname)
    }

    pub fn endpoints(&self, svc: &Service) -> &[Endpoint] {
        self.endpoints
            .get(&Self::service_key(svc))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn policy(&self, key: &str) -> Option<&Arc<Authorization>> {
        self.policies.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_authentications
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<WorkloadEntry>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }
}

/// Lock-free shared access to the current state.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<State>,
}

impl StateStore {
    pub fn new(state: State) -> Self {
        StateStore {
            current: ArcSwap::from_pointee(state),
        }
    }

    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn replace(&self, state: State) {
        self.current.store(Arc::new(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_hostname_lookups_are_indexed_and_deterministic() {
        let c = crate::config::Config::parse(
            "
proxy:
  workload: default/server
  certificates: {ca: {cert: r, key: k}}
workloads:
- {uid: b-uid, name: server, namespace: default, addresses: [10.0.0.3]}
- {uid: a-uid, name: server, namespace: default, addresses: [10.0.0.2]}
- {name: server, namespace: other, addresses: [10.0.0.4]}
services:
- {name: echo, namespace: default, addresses: [10.96.0.1], ports: [{servicePort: 80}]}
",
        )
        .unwrap();
        let s = State::from_config(&c).unwrap();
        // Several workloads share a name: the smallest uid, whatever the order listed.
        assert_eq!(
            s.workload_named("default", "server").unwrap().spec.uid,
            "a-uid"
        );
        assert_eq!(
            s.workload_named("other", "server").unwrap().spec.addresses,
            vec!["10.0.0.4".parse::<IpAddr>().unwrap()]
        );
        assert!(s.workload_named("default", "nobody").is_none());
        assert_eq!(
            s.service_by_hostname("echo.default.svc.cluster.local")
                .unwrap()
                .name,
            "echo"
        );
        assert!(
            s.service_by_hostname("echo.other.svc.cluster.local")
                .is_none()
        );
    }
}
