//! The env the pod runner adds when it starts a pod, once the pod has an
//! address: `INSTANCE_IP` for every pod, and for waypoint pods (label
//! `gateway.networking.k8s.io/gateway-name`) where istiod-lite is and how to
//! authenticate to it. The node's token stands in for a projected service
//! account token: istiod-lite's CA gives a node's caller the identities of
//! the pods on that node. The pod spec's own `env` wins over all of these.

use std::net::Ipv4Addr;

use super::mesh::{ISTIOD_GRPC_PORT, ISTIOD_SERVER_NAME, istiod_state_dir};
use super::plan::{Plan, PodPlan};

/// The label istiod-lite puts on waypoint pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The local cluster's trust domain (istiod-lite's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Whether a pod is a waypoint.
pub fn is_waypoint(pod: &PodPlan) -> bool {
    pod.labels.contains_key(GATEWAY_NAME_LABEL)
}

/// The pod's planned env (downward API values and its spec's `env`) plus
/// what is known only at start: its IP, and a waypoint's mesh settings.
pub fn runtime_env(plan: &Plan, pod: &PodPlan, ip: Ipv4Addr) -> Vec<(String, String)> {
    let mut added = vec![("INSTANCE_IP".to_string(), ip.to_string())];
    if is_waypoint(pod)
        && let Some(node) = plan.node(&pod.node)
    {
        added.extend([
            (
                "ISTIOD_ADDRESS".to_string(),
                format!("https://{}:{ISTIOD_GRPC_PORT}", plan.fabric_ip()),
            ),
            ("ISTIOD_SERVER_NAME".into(), ISTIOD_SERVER_NAME.into()),
            (
                "ISTIOD_ROOT_CERT".into(),
                istiod_state_dir(plan)
                    .join("root-cert.pem")
                    .display()
                    .to_string(),
            ),
            (
                "ISTIOD_TOKEN_FILE".into(),
                node.dir.join("token").display().to_string(),
            ),
            ("TRUST_DOMAIN".into(), TRUST_DOMAIN.into()),
        ]);
    }
    let mut env = pod.env.clone();
    for (name, value) in added {
        if !env.iter().any(|(k, _)| *k == name) {
            env.push((name, value));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan::{PlanOptions, plan};
    use crate::cluster::spec::ClusterSpec;
    use mesh_registry::model::{Kind, Object};
    use serde_json::json;

    fn test_plan() -> Plan {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "app", "namespace": "shop"},
                   "spec": {"nodeName": "n1", "serviceAccountName": "web",
                            "containers": [{"name": "c", "command": ["sleep"],
                                            "env": [{"name": "TRUST_DOMAIN", "value": "mine"}]}]}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "waypoint", "namespace": "shop",
                                "labels": {GATEWAY_NAME_LABEL: "waypoint", "istio.io/dataplane-mode": "none"}},
                   "spec": {"nodeName": "n1", "serviceAccountName": "waypoint",
                            "containers": [{"name": "waypoint", "command": ["waypoint"],
                                            "env": [{"name": "GATEWAY_NAME", "value": "waypoint"}]}]}}),
        ];
        let spec = ClusterSpec::from_objects(objects.into_iter().map(|o| {
            let kind = Kind::from_name(o["kind"].as_str().unwrap()).unwrap();
            Object::from_value(kind, o).unwrap()
        }));
        plan(
            &spec,
            &PlanOptions {
                cluster: "envtest".into(),
                state_dir: "/tmp/envtest".into(),
                mesh: true,
            },
        )
        .unwrap()
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_pod_gets_the_downward_api_and_its_ip() {
        let plan = test_plan();
        let app = plan.pods.iter().find(|p| p.name == "app").unwrap();
        let env = runtime_env(&plan, app, "10.244.0.5".parse().unwrap());
        assert_eq!(get(&env, "POD_NAME"), Some("app"));
        assert_eq!(get(&env, "POD_NAMESPACE"), Some("shop"));
        assert_eq!(get(&env, "NODE_NAME"), Some("n1"));
        assert_eq!(get(&env, "SERVICE_ACCOUNT"), Some("web"));
        assert_eq!(get(&env, "INSTANCE_IP"), Some("10.244.0.5"));
        assert_eq!(get(&env, "ISTIOD_ADDRESS"), None, "not a waypoint");
        assert_eq!(
            get(&env, "TRUST_DOMAIN"),
            Some("mine"),
            "the spec's own env"
        );
    }

    #[test]
    fn waypoint_pods_also_get_istiod_and_the_nodes_token() {
        let plan = test_plan();
        let waypoint = plan.pods.iter().find(|p| p.name == "waypoint").unwrap();
        let env = runtime_env(&plan, waypoint, "10.244.0.6".parse().unwrap());
        assert_eq!(get(&env, "GATEWAY_NAME"), Some("waypoint"));
        assert_eq!(get(&env, "SERVICE_ACCOUNT"), Some("waypoint"));
        assert_eq!(
            get(&env, "ISTIOD_ADDRESS"),
            Some("https://10.255.0.1:15012")
        );
        assert_eq!(
            get(&env, "ISTIOD_SERVER_NAME"),
            Some("istiod.istio-system.svc")
        );
        assert_eq!(get(&env, "TRUST_DOMAIN"), Some("cluster.local"));
        let token = get(&env, "ISTIOD_TOKEN_FILE").unwrap();
        assert!(token.ends_with("/token") && token.contains("n1"), "{token}");
        assert!(
            get(&env, "ISTIOD_ROOT_CERT")
                .unwrap()
                .ends_with("istiod-lite/root-cert.pem")
        );
    }
}
