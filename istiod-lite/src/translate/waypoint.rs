//! Waypoints (Gateways of class `istio-waypoint`) and which objects bind to them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_api::istio::workload::{
    GatewayAddress, NamespacedHostname, NetworkAddress, gateway_address,
};

use super::labels::{self, Labels, WaypointLabel};
use super::{MeshConfig, condition, ip_bytes};
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

pub const WAYPOINT_CLASS: &str = "istio-waypoint";
const HBONE_PORT: u32 = 15008;

/// Which traffic a waypoint serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficKind {
    Service,
    Workload,
}

impl TrafficKind {
    fn plural(self) -> &'static str {
        match self {
            TrafficKind::Service => "services",
            TrafficKind::Workload => "workloads",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    pub for_services: bool,
    pub for_workloads: bool,
    /// The `istio.io/waypoint-for` value, for messages.
    pub waypoint_for: String,
    pub address: GatewayAddress,
}

impl Waypoint {
    fn serves(&self, kind: TrafficKind) -> bool {
        match kind {
            TrafficKind::Service => self.for_services,
            TrafficKind::Workload => self.for_workloads,
        }
    }
}

/// Every waypoint in the store, by namespace/name.
#[derive(Clone, Debug, Default)]
pub struct Waypoints {
    by_name: BTreeMap<NamespacedName, Waypoint>,
}

/// The object a binding was read from, for the condition on a broken binding.
pub struct BindingSource<'a> {
    pub kind: Kind,
    pub key: &'a NamespacedName,
    pub labels: Option<&'a Labels>,
}

impl Waypoints {
    pub fn build(
        store: &Store,
        mesh: &MeshConfig,
        conditions: &mut BTreeSet<ObjectCondition>,
    ) -> Self {
        let mut by_name = BTreeMap::new();
        for (key, gw) in &store.gateways {
            if gw.spec.gateway_class_name != WAYPOINT_CLASS {
                continue;
            }
            let raw_for = gw
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::WAYPOINT_FOR))
                .map(String::as_str)
                .unwrap_or("service");
            let (for_services, for_workloads) = match raw_for {
                "service" => (true, false),
                "workload" => (false, true),
                "all" => (true, true),
                "none" => (false, false),
                other => {
                    conditions.insert(condition(
                        Kind::Gateway,
                        key,
                        "Accepted",
                        false,
                        "InvalidWaypointFor",
                        format!(
                            "label {} has value \"{other}\"; expected service, workload, all or none; serving services only",
                            labels::WAYPOINT_FOR
                        ),
                    ));
                    (true, false)
                }
            };
            let address = waypoint_address(key, store, mesh);
            by_name.insert(
                key.clone(),
                Waypoint {
                    for_services,
                    for_workloads,
                    waypoint_for: raw_for.to_string(),
                    address,
                },
            );
        }
        Self { by_name }
    }

    pub fn is_waypoint(&self, key: &NamespacedName) -> bool {
        self.by_name.contains_key(key)
    }

    /// Every waypoint's namespace/name.
    pub fn names(&self) -> impl Iterator<Item = &NamespacedName> {
        self.by_name.keys()
    }

    /// The waypoint for an object's traffic, as `resolve` decides it.
    pub fn resolve(
        &self,
        kind: TrafficKind,
        object: BindingSource<'_>,
        namespace: BindingSource<'_>,
        conditions: &mut BTreeSet<ObjectCondition>,
    ) -> Option<GatewayAddress> {
        self.binding(kind, object, namespace, conditions)
            .map(|(_, waypoint)| waypoint.address.clone())
    }

    /// The waypoint (name and settings) for an object's traffic: its own
    /// label wins over its namespace's. A binding that cannot be honoured
    /// yields no waypoint and a condition on the object carrying the label.
    pub fn binding(
        &self,
        kind: TrafficKind,
        object: BindingSource<'_>,
        namespace: BindingSource<'_>,
        conditions: &mut BTreeSet<ObjectCondition>,
    ) -> Option<(&NamespacedName, &Waypoint)> {
        let own_ns = &object.key.namespace;
        let (label, source, from_namespace) = match labels::waypoint_label(object.labels, own_ns) {
            WaypointLabel::Absent => (
                labels::waypoint_label(namespace.labels, own_ns),
                &namespace,
                true,
            ),
            label => (label, &object, false),
        };
        let WaypointLabel::Named {
            namespace: wp_ns,
            name,
        } = label
        else {
            return None;
        };
        let wp_key = NamespacedName::new(wp_ns, name);
        let Some((wp_key, waypoint)) = self.by_name.get_key_value(&wp_key) else {
            conditions.insert(condition(
                source.kind,
                source.key,
                crate::provision::status::WAYPOINT_BOUND,
                false,
                "WaypointNotFound",
                format!(
                    "{} names waypoint {wp_key}, but there is no Gateway of class {WAYPOINT_CLASS} by that name; traffic is not sent to a waypoint",
                    labels::USE_WAYPOINT
                ),
            ));
            return None;
        };
        if waypoint.serves(kind) {
            return Some((wp_key, waypoint));
        }
        // A namespace binding to a service-only waypoint is the normal case for
        // the namespace's pods (and the reverse for its Services); it is a
        // mistake only on the object itself, or when the waypoint serves nothing.
        if !from_namespace || !(waypoint.for_services || waypoint.for_workloads) {
            conditions.insert(condition(
                source.kind,
                source.key,
                crate::provision::status::WAYPOINT_BOUND,
                false,
                "WaypointNotForThisKind",
                format!(
                    "waypoint {wp_key} has {}={}, so it does not serve {}; traffic is not sent to a waypoint",
                    labels::WAYPOINT_FOR,
                    waypoint.waypoint_for,
                    kind.plural()
                ),
            ));
        }
        None
    }
}

/// The waypoint Service's ClusterIP when it exists, else its DNS name.
fn waypoint_address(key: &NamespacedName, store: &Store, mesh: &MeshConfig) -> GatewayAddress {
    let vip = store
        .services
        .get(key)
        .and_then(|svc| svc.spec.as_ref())
        .and_then(|spec| spec.cluster_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let destination = match vip {
        Some(ip) => gateway_address::Destination::Address(NetworkAddress {
            network: mesh.network.clone(),
            address: ip_bytes(ip),
            length: None,
        }),
        None => gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: key.namespace.clone(),
            hostname: format!("{}.{}.svc.{}", key.name, key.namespace, mesh.cluster_domain),
        }),
    };
    GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: HBONE_PORT,
    }
}
