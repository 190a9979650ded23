//! The objects of one waypoint, as the JSON documents an API server (or the
//! directory source) accepts. Pure: the same Gateway and settings give the
//! same bytes, so unchanged objects are never written again.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::{FIELD_MANAGER, GATEWAY_NAME, HBONE_PORT, STATUS_PORT, Settings, WaypointGateway};
use crate::translate::labels::DATAPLANE_MODE;

/// Where the projected service account token is mounted.
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// Where the root certificate ConfigMap is mounted.
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// The audience of the projected token, as Istio's CA expects.
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// Labels every waypoint object (and its pods) carries: the Gateway's name,
/// and `istio.io/dataplane-mode: none` so the waypoint is never captured.
/// The Gateway's `spec.infrastructure.labels` come first, so ours win.
pub fn labels(gw: &WaypointGateway) -> Value {
    let mut labels = serde_json::Map::new();
    for (key, value) in &gw.infrastructure_labels {
        labels.insert(key.clone(), json!(value));
    }
    labels.insert(GATEWAY_NAME.into(), json!(gw.key.name));
    labels.insert(DATAPLANE_MODE.into(), json!("none"));
    labels.insert("app.kubernetes.io/managed-by".into(), json!(FIELD_MANAGER));
    Value::Object(labels)
}

fn metadata(gw: &WaypointGateway, owned: bool) -> Value {
    let mut meta = json!({
        "name": gw.key.name,
        "namespace": gw.key.namespace,
        "labels": labels(gw),
    });
    if owned && let Some(owner) = owner_reference(gw) {
        meta["ownerReferences"] = json!([owner]);
    }
    meta
}

/// The Gateway as controlling owner, so Kubernetes' garbage collector
/// deletes the waypoint with it. None without a uid (not yet persisted).
pub fn owner_reference(gw: &WaypointGateway) -> Option<Value> {
    let uid = gw.uid.as_deref().filter(|u| !u.is_empty())?;
    Some(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": gw.key.name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }))
}

/// The waypoint's identity: `ns/<gateway namespace>/sa/<gateway name>`.
pub fn service_account(gw: &WaypointGateway, owned: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(gw, owned),
    })
}

/// The waypoint Service: `mesh` (HBONE) and `status-port`, selecting the
/// waypoint's pods. `cluster_ip` is set in directory mode, where nothing
/// else allocates one.
pub fn service(gw: &WaypointGateway, cluster_ip: Option<Ipv4Addr>, owned: bool) -> Value {
    let mut spec = json!({
        "selector": {GATEWAY_NAME: gw.key.name},
        "ports": [
            {"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT,
             "protocol": "TCP", "appProtocol": "HBONE"},
            {"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT,
             "protocol": "TCP"},
        ],
    });
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip.to_string());
        spec["type"] = json!("ClusterIP");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(gw, owned),
        "spec": spec,
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The Kubernetes waypoint: one replica of the waypoint image, settings
/// from the downward API and istiod-lite's own, a projected token with
/// audience `istio-ca`, the root certificate from a ConfigMap, hardened.
pub fn deployment(gw: &WaypointGateway, settings: &Settings) -> Value {
    let env = json!([
        {"name": "GATEWAY_NAME", "value": gw.key.name},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        {"name": "ISTIOD_ADDRESS", "value": settings.xds_address},
        {"name": "ISTIOD_SERVER_NAME", "value": settings.xds_server_name},
        {"name": "ISTIOD_ROOT_CERT", "value": format!("{ROOT_CERT_DIR}/root-cert.pem")},
        {"name": "ISTIOD_TOKEN_FILE", "value": TOKEN_PATH},
        {"name": "TRUST_DOMAIN", "value": settings.trust_domain},
        // The admin port serves the readiness probe, so it must be reachable
        // from the kubelet, not only loopback.
        {"name": "WAYPOINT_ADMIN", "value": format!("0.0.0.0:{STATUS_PORT}")},
    ]);
    let (token_dir, token_file) = TOKEN_PATH.rsplit_once('/').unwrap_or((TOKEN_PATH, ""));
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(gw, true),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME: gw.key.name}},
            "template": {
                "metadata": {"labels": labels(gw)},
                "spec": {
                    "serviceAccountName": gw.key.name,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "waypoint",
                        "image": settings.image,
                        "args": ["--gateway-name", gw.key.name],
                        "env": env,
                        "ports": [
                            {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": STATUS_PORT},
                            "periodSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "runAsGroup": 1337,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": token_dir, "readOnly": true},
                            {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{
                            "serviceAccountToken": {
                                "audience": TOKEN_AUDIENCE,
                                "expirationSeconds": 43200,
                                "path": token_file,
                            }
                        }]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": settings.root_cert_config_map}},
                    ],
                },
            },
        },
    })
}

/// The local cluster's waypoint: a Pod on `node` running `waypoint` (found
/// on the pod runner's PATH), which adds the mesh settings to its env.
pub fn pod(gw: &WaypointGateway, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(gw, false),
        "spec": {
            "nodeName": node,
            "serviceAccountName": gw.key.name,
            "containers": [{
                "name": "waypoint",
                "command": ["waypoint"],
                "env": [{"name": "GATEWAY_NAME", "value": gw.key.name}],
                "ports": [
                    {"name": "mesh", "containerPort": HBONE_PORT},
                    {"name": "status-port", "containerPort": STATUS_PORT},
                ],
            }],
        },
    })
}

/// The root certificate ConfigMap the waypoint mounts, as Istio keeps one in
/// every namespace. Not owned by the Gateway: other waypoints of the
/// namespace use it too.
pub fn root_cert_config_map(gw: &WaypointGateway, settings: &Settings) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": settings.root_cert_config_map,
            "namespace": gw.key.namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "data": {"root-cert.pem": settings.root_cert_pem},
    })
}
