//! The `Node` a proxy introduces itself with (spec 3.3).

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_api::envoy::config::core::v3::Node;
use prost_types::{Struct, Value, value::Kind};

/// Who this proxy is, as istiod expects to read it from the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The proxy type, `ztunnel` or `waypoint`.
    pub proxy_type: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// `None` is sent as `1.1.1.1`, as Istio does.
    pub instance_ip: Option<IpAddr>,
    pub node_name: String,
    pub cluster_id: String,
    /// Extra metadata (`ISTIO_META_<K>`), string values.
    pub metadata: BTreeMap<String, String>,
}

impl NodeInfo {
    /// `<type>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` and the metadata Struct.
    pub fn to_node(&self) -> Node {
        let ip = self
            .instance_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "1.1.1.1".into());
        let id = format!(
            "{}~{ip}~{}.{}~{}.svc.cluster.local",
            self.proxy_type, self.pod_name, self.pod_namespace, self.pod_namespace
        );
        let mut fields: BTreeMap<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        for (k, v) in [
            ("NAME", &self.pod_name),
            ("NAMESPACE", &self.pod_namespace),
            ("INSTANCE_IPS", &ip),
            ("NODE_NAME", &self.node_name),
            ("CLUSTER_ID", &self.cluster_id),
        ] {
            fields.insert(k.to_string(), string(v));
        }
        Node {
            id,
            cluster: String::new(),
            metadata: Some(Struct { fields }),
        }
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_metadata_follow_istio() {
        let node = NodeInfo {
            proxy_type: "ztunnel".into(),
            pod_name: "ztunnel-x1".into(),
            pod_namespace: "istio-system".into(),
            instance_ip: Some("10.0.0.9".parse().unwrap()),
            node_name: "node-a".into(),
            cluster_id: "Kubernetes".into(),
            metadata: BTreeMap::from([("ISTIO_VERSION".into(), "1.0".into())]),
        }
        .to_node();
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.9~ztunnel-x1.istio-system~istio-system.svc.cluster.local"
        );
        let m = node.metadata.unwrap().fields;
        let get = |k: &str| match &m[k].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "ztunnel-x1");
        assert_eq!(get("NAMESPACE"), "istio-system");
        assert_eq!(get("INSTANCE_IPS"), "10.0.0.9");
        assert_eq!(get("NODE_NAME"), "node-a");
        assert_eq!(get("CLUSTER_ID"), "Kubernetes");
        assert_eq!(get("ISTIO_VERSION"), "1.0");
    }

    #[test]
    fn a_missing_ip_is_sent_as_1_1_1_1() {
        let node = NodeInfo {
            proxy_type: "ztunnel".into(),
            pod_name: "p".into(),
            pod_namespace: "n".into(),
            ..Default::default()
        }
        .to_node();
        assert_eq!(node.id, "ztunnel~1.1.1.1~p.n~n.svc.cluster.local");
    }
}
