use super::*;
use mesh_registry::dir::parse_file;

fn spec(yaml: &str) -> ClusterSpec {
    let parsed = parse_file(Path::new("cluster.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut spec = ClusterSpec::from_objects(parsed.objects.into_iter().map(|o| o.object));
    spec.dir = PathBuf::from("/cluster");
    spec
}

fn options() -> PlanOptions {
    PlanOptions {
        cluster: "t1".into(),
        state_dir: PathBuf::from("/run/t1"),
        mesh: true,
    }
}

const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n";

fn pod(name: &str, node: &str, container: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  nodeName: {node}\n  containers: [{container}]\n"
    )
}

#[test]
fn nodes_get_addresses_and_pod_cidrs_in_name_order_with_routes_to_each_other() {
    let yaml = format!(
        "{NODES}---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-c}}\nspec: {{podCIDR: 10.50.0.0/16}}\n"
    );
    let plan = plan(&spec(&yaml), &options()).unwrap();
    let rows: Vec<(String, String, String, String)> = plan
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.netns.clone(),
                n.address.to_string(),
                n.pod_cidr.to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "node-a".into(),
                "ambit-t1-node-node-a".into(),
                "10.255.0.10/24".into(),
                "10.244.0.0/24".into()
            ),
            (
                "node-b".into(),
                "ambit-t1-node-node-b".into(),
                "10.255.0.11/24".into(),
                "10.244.1.0/24".into()
            ),
            (
                "node-c".into(),
                "ambit-t1-node-node-c".into(),
                "10.255.0.12/24".into(),
                "10.50.0.0/16".into()
            ),
        ]
    );
    assert_eq!(
        plan.nodes[0].routes,
        [
            Route {
                to: "10.244.1.0/24".parse().unwrap(),
                via: "10.255.0.11".parse().unwrap()
            },
            Route {
                to: "10.50.0.0/16".parse().unwrap(),
                via: "10.255.0.12".parse().unwrap()
            },
        ]
    );
    assert_eq!(plan.nodes[1].dir, Path::new("/run/t1/nodes/node-b"));
    assert_eq!(plan.fabric.netns, "ambit-t1-fabric");
    assert_eq!(plan.fabric_ip().to_string(), "10.255.0.1");
}

#[test]
fn a_pod_runs_its_first_container_command_and_args_with_downward_env() {
    let yaml = format!(
        "{NODES}{}",
        pod(
            "web",
            "node-b",
            "{name: c, command: [ambit, app], args: [server, --port, '8080'], env: [{name: NODE_NAME, value: mine}, {name: X, value: y}]}"
        )
    );
    let plan = plan(&spec(&yaml), &options()).unwrap();
    let web = &plan.pods[0];
    assert_eq!(web.key(), "apps/web");
    assert_eq!(web.node, "node-b");
    assert_eq!(web.netns, "ambit-t1-pod-apps.web");
    assert_eq!(web.command, ["ambit", "app", "server", "--port", "8080"]);
    let env: Vec<String> = web.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        env,
        [
            "POD_NAME=web".to_string(),
            "POD_NAMESPACE=apps".into(),
            format!("POD_UID={}", web.uid),
            "SERVICE_ACCOUNT=default".into(),
            "NODE_NAME=mine".into(),
            "X=y".into()
        ]
    );
    assert_eq!(web.container_id.len(), 64);
    // A generated uid is stable and UUID-shaped; a given one is kept.
    let again = super::plan(&spec(&yaml), &options()).unwrap();
    assert_eq!(again.pods[0].uid, web.uid);
    assert_eq!(web.uid.len(), 36);
    let given = yaml.replace("namespace: apps}", "namespace: apps, uid: abc}");
    assert_eq!(
        super::plan(&spec(&given), &options()).unwrap().pods[0].uid,
        "abc"
    );
}

#[test]
fn services_keep_their_cluster_ip_selector_and_target_ports() {
    let yaml = format!(
        "{NODES}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: apps}}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {{app: s}}\n  ports: [{{port: 80, targetPort: 8080}}, {{port: 81, targetPort: http}}, {{port: 82}}]\n"
    );
    let plan = plan(&spec(&yaml), &options()).unwrap();
    let service = &plan.services[0];
    assert_eq!(service.cluster_ip, Some("10.96.0.10".parse().unwrap()));
    let targets: Vec<_> = service
        .ports
        .iter()
        .map(|p| (p.port, p.target.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (80, TargetPort::Number(8080)),
            (81, TargetPort::Name("http".into())),
            (82, TargetPort::Number(82)),
        ]
    );
}

#[test]
fn errors_name_what_to_fix() {
    let cases: Vec<(String, PlanError)> = vec![
        (String::new(), PlanError::NoNodes),
        (
            format!("{NODES}{}", pod("p", "node-x", "{name: c, command: [x]}")),
            PlanError::UnknownNode {
                pod: "apps/p".into(),
                node: "node-x".into(),
                known: "node-a, node-b".into(),
            },
        ),
        (
            format!("{NODES}{}", pod("p", "node-a", "{name: c, image: nginx}")),
            PlanError::NoCommand { pod: "apps/p".into() },
        ),
        (
            format!("{NODES}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, command: [x]}}]}}\n"),
            PlanError::PodWithoutNode { pod: "default/p".into() },
        ),
        (
            format!("{NODES}{}", pod("p", "node-a", "{name: c, command: [x], env: [{name: A, valueFrom: {fieldRef: {fieldPath: x}}}]}")),
            PlanError::UnsupportedEnv { pod: "apps/p".into(), index: 0, name: "A".into() },
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.255.0.0/16}\n".into(),
            PlanError::BadPodCidr {
                node: "n".into(),
                value: "10.255.0.0/16".into(),
                reason: "overlaps the fabric 10.255.0.0/24".into(),
            },
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.1.0.1/24}\n".into(),
            PlanError::BadPodCidr {
                node: "n".into(),
                value: "10.1.0.1/24".into(),
                reason: "host bits are set".into(),
            },
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nspec: {podCIDR: 10.244.1.0/24}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n".into(),
            PlanError::OverlappingCidrs {
                a: "a".into(),
                cidr_a: "10.244.1.0/24".parse().unwrap(),
                b: "b".into(),
                cidr_b: "10.244.1.0/24".parse().unwrap(),
            },
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(
            plan(&spec(&yaml), &options()).unwrap_err(),
            expected,
            "{yaml}"
        );
    }
    let bad_name = PlanOptions {
        cluster: "Bad_Name".into(),
        ..options()
    };
    assert_eq!(
        plan(&spec(NODES), &bad_name).unwrap_err(),
        PlanError::BadClusterName("Bad_Name".into())
    );
    assert!(
        PlanError::NoCommand {
            pod: "apps/p".into()
        }
        .to_string()
        .contains("set `command:`")
    );
}

#[test]
fn a_reread_directory_adds_removes_and_relabels_pods() {
    let base = format!(
        "{NODES}{}{}",
        pod("a", "node-a", "{name: c, command: [x]}"),
        pod("b", "node-a", "{name: c, command: [x]}")
    );
    let running = plan(&spec(&base), &options()).unwrap().pods;
    assert!(diff_pods(&running, &running).is_empty());
    let next = format!(
        "{NODES}{}{}{}",
        pod("a", "node-a", "{name: c, command: [x]}")
            .replace("namespace: apps}", "namespace: apps, labels: {v: '2'}}"),
        pod("c", "node-b", "{name: c, command: [y]}"),
        pod("b", "node-a", "{name: c, command: [z]}"),
    );
    let wanted = plan(&spec(&next), &options()).unwrap().pods;
    let diff = diff_pods(&running, &wanted);
    assert_eq!(
        diff.added.iter().map(PodPlan::key).collect::<Vec<_>>(),
        ["apps/c"]
    );
    assert_eq!(
        diff.relabelled.iter().map(PodPlan::key).collect::<Vec<_>>(),
        ["apps/a"]
    );
    assert_eq!(diff.changed, ["apps/b"]);
    assert!(diff.removed.is_empty());
    let only_c = format!("{NODES}{}", pod("c", "node-b", "{name: c, command: [y]}"));
    let diff = diff_pods(&running, &plan(&spec(&only_c), &options()).unwrap().pods);
    assert_eq!(diff.removed, ["apps/a", "apps/b"]);
}
