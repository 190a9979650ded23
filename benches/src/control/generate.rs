//! A generated registry for the control-plane scale benchmark: namespaces of
//! pods, services selecting them and L4 policies, written as Kubernetes YAML,
//! one file per namespace, the way a user's directory would look.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// How big the generated registry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub namespaces: usize,
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
    pub nodes: usize,
}

impl Shape {
    /// The issue's figure: 10,000 pods, 2,000 services, 1,000 policies.
    pub const ISSUE: Shape = Shape {
        namespaces: 100,
        pods: 10_000,
        services: 2_000,
        policies: 1_000,
        nodes: 100,
    };

    fn per_ns(total: usize, namespaces: usize, ns: usize) -> usize {
        total / namespaces + usize::from(ns < total % namespaces)
    }

    pub fn pods_in(&self, ns: usize) -> usize {
        Self::per_ns(self.pods, self.namespaces, ns)
    }

    pub fn services_in(&self, ns: usize) -> usize {
        Self::per_ns(self.services, self.namespaces, ns)
    }

    pub fn policies_in(&self, ns: usize) -> usize {
        Self::per_ns(self.policies, self.namespaces, ns)
    }
}

pub fn namespace_name(ns: usize) -> String {
    format!("team-{ns:03}")
}

pub fn node_name(node: usize) -> String {
    format!("node-{node:03}")
}

/// A distinct pod IP for every (namespace, pod), up to 1,024 pods in each of
/// 4,096 namespaces (10.0.0.0/10).
pub fn pod_ip(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + (ns as u32) * 1024 + pod as u32)
}

pub fn service_ip(ns: usize, svc: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000u32 + (ns as u32) * 256 + svc as u32)
}

/// The node a pod runs on: pods spread evenly over nodes.
pub fn pod_node(shape: &Shape, ns: usize, pod: usize) -> usize {
    (ns * 7919 + pod) % shape.nodes.max(1)
}

/// The YAML of one namespace: the Namespace, its pods, services and policies.
/// `revision` goes into every pod's `version` label, so changing it for one
/// pod changes exactly that pod's workload.
pub fn namespace_yaml(shape: &Shape, ns: usize, revision_of: impl Fn(usize) -> u32) -> String {
    let mut out = String::with_capacity(shape.pods_in(ns) * 700);
    let name = namespace_name(ns);
    let services = shape.services_in(ns).max(1);
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    istio.io/dataplane-mode: ambient\n"
    );
    for pod in 0..shape.pods_in(ns) {
        let app = format!("app-{:03}", pod % services);
        let ip = pod_ip(ns, pod);
        let node = node_name(pod_node(shape, ns, pod));
        let revision = revision_of(pod);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-{pod:05}\n  namespace: {name}\n  labels:\n    app: {app}\n    version: v{revision}\nspec:\n  nodeName: {node}\n  serviceAccountName: {app}\n  containers:\n  - name: app\n    image: app\n    ports:\n    - name: http\n      containerPort: 8080\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
        );
    }
    for svc in 0..shape.services_in(ns) {
        let app = format!("app-{svc:03}");
        let ip = service_ip(ns, svc);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\n  namespace: {name}\nspec:\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  selector:\n    app: {app}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n  - name: tcp-metrics\n    port: 9090\n    targetPort: 9090\n"
        );
    }
    for policy in 0..shape.policies_in(ns) {
        let app = format!("app-{:03}", policy % services);
        let from = namespace_name((ns + 1) % shape.namespaces.max(1));
        let _ = write!(
            out,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-{policy:03}\n  namespace: {name}\nspec:\n  selector:\n    matchLabels:\n      app: {app}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces: [\"{from}\"]\n        principals: [\"cluster.local/ns/{from}/sa/*\"]\n    to:\n    - operation:\n        ports: [\"8080\"]\n"
        );
    }
    out
}

/// The nodes file: every node as a `Node` object.
pub fn nodes_yaml(shape: &Shape) -> String {
    let mut out = String::new();
    for node in 0..shape.nodes {
        if node > 0 {
            out.push_str("---\n");
        }
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n",
            node_name(node)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_shape_adds_up() {
        let s = Shape::ISSUE;
        let pods: usize = (0..s.namespaces).map(|n| s.pods_in(n)).sum();
        let services: usize = (0..s.namespaces).map(|n| s.services_in(n)).sum();
        let policies: usize = (0..s.namespaces).map(|n| s.policies_in(n)).sum();
        assert_eq!((pods, services, policies), (10_000, 2_000, 1_000));
    }

    #[test]
    fn uneven_totals_are_spread_without_loss() {
        let s = Shape {
            namespaces: 3,
            pods: 10,
            services: 4,
            policies: 2,
            nodes: 2,
        };
        assert_eq!((0..3).map(|n| s.pods_in(n)).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!((0..3).map(|n| s.services_in(n)).sum::<usize>(), 4);
        assert_eq!((0..3).map(|n| s.policies_in(n)).sum::<usize>(), 2);
    }

    #[test]
    fn pod_and_service_addresses_are_unique() {
        let s = Shape::ISSUE;
        let mut pods = std::collections::HashSet::new();
        let mut services = std::collections::HashSet::new();
        for ns in 0..s.namespaces {
            for pod in 0..s.pods_in(ns) {
                assert!(pods.insert(pod_ip(ns, pod)), "duplicate pod ip");
            }
            for svc in 0..s.services_in(ns) {
                assert!(services.insert(service_ip(ns, svc)), "duplicate service ip");
            }
        }
    }

    #[test]
    fn one_revision_changes_one_pod_document() {
        let s = Shape {
            namespaces: 1,
            pods: 5,
            services: 2,
            policies: 1,
            nodes: 2,
        };
        let before = namespace_yaml(&s, 0, |_| 1);
        let after = namespace_yaml(&s, 0, |p| if p == 3 { 2 } else { 1 });
        let changed: Vec<_> = before
            .split("---\n")
            .zip(after.split("---\n"))
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 1);
        assert!(changed[0].1.contains("app-001-00003"));
        let docs: Vec<serde_yaml::Value> = after
            .split("---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 1 + 5 + 2 + 1);
    }
}
