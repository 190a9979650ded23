use super::*;
use crate::cluster::plan::{PlanOptions, plan};
use crate::cluster::spec::ClusterSpec;
use mesh_registry::dir::parse_file;

fn test_plan(mesh: bool) -> Plan {
    let yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps, uid: u-1}\nspec: {nodeName: n1, containers: [{name: c, command: [x]}]}\n";
    let parsed = parse_file(Path::new("c.yaml"), yaml);
    let spec = ClusterSpec::from_objects(parsed.objects.into_iter().map(|o| o.object));
    plan(
        &spec,
        &PlanOptions {
            cluster: "t".into(),
            state_dir: "/run/t".into(),
            mesh,
        },
    )
    .unwrap()
}

#[test]
fn the_conflist_chains_bridge_with_host_local_then_ambit_cni() {
    let plan = test_plan(true);
    let list = conflist(&plan, &plan.nodes[0]);
    assert_eq!(
        list,
        json!({
            "cniVersion": "1.0.0",
            "name": "ambit-t",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.244.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": "/run/t/nodes/n1/ipam",
                    },
                },
                {"type": "ambit-cni", "cniSocket": "/run/t/nodes/n1/cni.sock"},
            ],
        })
    );
    let without_mesh = conflist(&test_plan(false), &plan.nodes[0]);
    assert_eq!(without_mesh["plugins"].as_array().unwrap().len(), 1);
}

#[test]
fn each_plugin_gets_the_list_name_version_and_previous_result() {
    let plan = test_plan(true);
    let list = conflist(&plan, &plan.nodes[0]);
    let first = plugin_config(&list, 0, None);
    assert_eq!(first["name"], "ambit-t");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none());
    let prev = json!({"ips": [{"address": "10.244.0.2/24"}]});
    let second = plugin_config(&list, 1, Some(&prev));
    assert_eq!(second["type"], "ambit-cni");
    assert_eq!(second["prevResult"], prev);
    assert_eq!(
        result_ips(&prev),
        ["10.244.0.2".parse::<Ipv4Addr>().unwrap()]
    );
}

#[test]
fn the_environment_is_a_kubelets() {
    let plan = test_plan(true);
    let pod = &plan.pods[0];
    let env = plugin_env(
        CniCommand::Add,
        pod,
        Path::new("/var/run/netns/p"),
        "/usr/lib/cni:/bin",
    );
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("CNI_COMMAND"), Some("ADD"));
    assert_eq!(get("CNI_CONTAINERID"), Some(pod.container_id.as_str()));
    assert_eq!(get("CNI_NETNS"), Some("/var/run/netns/p"));
    assert_eq!(get("CNI_IFNAME"), Some("eth0"));
    assert_eq!(get("CNI_PATH"), Some("/usr/lib/cni:/bin"));
    assert_eq!(
        get("CNI_ARGS").unwrap(),
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=u-1",
            pod.container_id
        )
    );
    let del = plugin_env(CniCommand::Del, pod, Path::new("/x"), "");
    assert_eq!(del[0], ("CNI_COMMAND".to_string(), "DEL".to_string()));
}

#[test]
fn plugin_errors_are_read_from_the_spec_shape_or_stderr() {
    assert_eq!(
        error_message(
            r#"{"code": 11, "msg": "node agent unreachable", "details": "connect: refused"}"#,
            ""
        ),
        "code 11: node agent unreachable: connect: refused"
    );
    assert_eq!(error_message("", "boom\n"), "boom");
}
