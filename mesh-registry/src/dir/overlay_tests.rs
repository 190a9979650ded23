use super::*;
use crate::Change;
use crate::dir::index::FileIndex;
use crate::dir::parse::parse_file;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  nodeName: node-a\n  containers: [{name: c}]\n";

const KUBELET_STATUS: &str = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps, uid: '1234'}\nstatus:\n  phase: Running\n  podIP: 10.244.0.2\n  podIPs: [{ip: 10.244.0.2}]\n  hostIP: 10.255.0.10\n  conditions: [{type: Ready, status: 'True'}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: apps}\nstatus: {phase: Pending}\n";

fn pod_of(change: &Change) -> k8s_openapi::api::core::v1::Pod {
    match change {
        Change::Upsert(Object::Pod(pod)) => (**pod).clone(),
        other => panic!("expected a pod upsert, got {other:?}"),
    }
}

#[test]
fn reads_only_pod_documents_and_their_status() {
    let text = format!(
        "{KUBELET_STATUS}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: apps}}\nstatus: {{conditions: []}}\n"
    );
    let parsed = parse_status_file(Path::new("s.status.yaml"), &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let keys: Vec<String> = parsed.overlays.keys().map(ToString::to_string).collect();
    assert_eq!(keys, ["Pod apps/other", "Pod apps/web"]);
    let web = &parsed.overlays[&ObjectKey {
        kind: Kind::Pod,
        name: NamespacedName::new("apps", "web"),
    }];
    assert_eq!(web.uid.as_deref(), Some("1234"));
    assert_eq!(web.status["podIP"], "10.244.0.2");
}

#[test]
fn a_bad_status_document_is_refused_with_its_field() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nstatus: {podIPs: 3}\n---\nkind: Pod\nstatus: {}\n";
    let parsed = parse_status_file(Path::new("s.status.yaml"), text);
    assert!(parsed.overlays.is_empty());
    let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("s.status.yaml:1: field `status.podIPs`"),
        "{errors:?}"
    );
    assert_eq!(errors[1], "s.status.yaml:6: missing `metadata.name`");
}

#[test]
fn status_merges_onto_the_spec_pod_and_leaves_when_its_file_goes() {
    let mut index = FileIndex::default();
    let spec = index.update_file(
        Path::new("pods.yaml"),
        parse_file(Path::new("pods.yaml"), POD),
    );
    assert_eq!(spec.len(), 1);
    assert!(pod_of(&spec[0]).status.is_none());

    // Only the pod a source defines changes; `other` has no spec.
    let file = Path::new("ambit-pods.status.yaml");
    let changes = index.update_status_file(file, parse_status_file(file, KUBELET_STATUS));
    assert_eq!(changes.len(), 1, "{changes:?}");
    let pod = pod_of(&changes[0]);
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.2"));
    assert_eq!(status.host_ip.as_deref(), Some("10.255.0.10"));
    assert_eq!(pod.metadata.uid.as_deref(), Some("1234"));
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-a"));

    // Rewriting the same status changes nothing.
    assert!(
        index
            .update_status_file(file, parse_status_file(file, KUBELET_STATUS))
            .is_empty()
    );

    // Editing the spec keeps the status on.
    let edited = POD.replace("name: web\n", "name: web\n  labels: {a: b}\n");
    let changes = index.update_file(
        Path::new("pods.yaml"),
        parse_file(Path::new("pods.yaml"), &edited),
    );
    assert_eq!(
        pod_of(&changes[0]).status.unwrap().pod_ip.as_deref(),
        Some("10.244.0.2")
    );

    let changes = index.remove_file(file);
    assert_eq!(changes.len(), 1);
    let pod = pod_of(&changes[0]);
    assert!(pod.status.is_none());
    assert_eq!(pod.metadata.uid, None);
}

#[test]
fn a_uid_in_the_spec_wins_and_conditions_merge_by_type() {
    let spec = POD.replace("namespace: apps\n", "namespace: apps\n  uid: from-spec\n");
    let mut index = FileIndex::default();
    index.update_file(
        Path::new("pods.yaml"),
        parse_file(Path::new("pods.yaml"), &spec),
    );
    let kubelet = Path::new("a.status.yaml");
    index.update_status_file(kubelet, parse_status_file(kubelet, KUBELET_STATUS));
    // istiod-lite's file: a condition of its own on the same pod.
    let istiod = Path::new("pods.status.yaml");
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps}\nstatus:\n  conditions: [{type: WaypointBound, status: 'False', reason: NotFound}]\n";
    let changes = index.update_status_file(istiod, parse_status_file(istiod, text));
    let pod = pod_of(&changes[0]);
    assert_eq!(pod.metadata.uid.as_deref(), Some("from-spec"));
    let status = pod.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.2"));
    let types: Vec<String> = status
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    assert_eq!(types, ["Ready=True", "WaypointBound=False"]);
}

#[test]
fn a_broken_status_file_keeps_the_last_good_status() {
    let mut index = FileIndex::default();
    index.update_file(
        Path::new("pods.yaml"),
        parse_file(Path::new("pods.yaml"), POD),
    );
    let file = Path::new("k.status.yaml");
    index.update_status_file(file, parse_status_file(file, KUBELET_STATUS));
    let changes = index.update_status_file(file, parse_status_file(file, "kind: Pod\n: :\n"));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(index.errors().len(), 1);
}
