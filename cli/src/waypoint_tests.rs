use super::*;

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

const APPS: &str = "---
apiVersion: v1
kind: Namespace
metadata:
  name: server
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: server
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: skip
  namespace: server
  labels: {istio.io/use-waypoint: \"#none\"}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: server
spec:
  nodeName: n1
  containers: [{name: c, command: [x]}]
";

#[test]
fn apply_writes_the_gateway_and_labels_the_namespace() {
    let dir = dir_with(&[("apps.yaml", APPS)]);
    let applied = apply(dir.path(), "server", "waypoint", "service", true).unwrap();
    assert!(applied.changed);
    assert_eq!(
        applied.file,
        dir.path().join("waypoint-server-waypoint.yaml")
    );
    assert_eq!(applied.labelled, Some(dir.path().join("apps.yaml")));
    let view = read_dir(dir.path()).unwrap();
    let gw = &view.store.gateways[&NamespacedName::new("server", "waypoint")];
    assert_eq!(gw.spec.gateway_class_name, "istio-waypoint");
    assert_eq!(gw.spec.listeners[0].port, 15008);
    assert_eq!(gw.spec.listeners[0].protocol, "HBONE");
    let ns = &view.store.namespaces[&NamespacedName::cluster("server")];
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()[USE_WAYPOINT],
        "waypoint"
    );

    let again = apply(dir.path(), "server", "waypoint", "service", false).unwrap();
    assert!(
        !again.changed,
        "re-applying the same waypoint changes nothing"
    );
}

#[test]
fn apply_adds_a_namespace_no_file_defines_and_refuses_bad_input() {
    let dir = dir_with(&[]);
    let applied = apply(dir.path(), "fresh", "wp", "all", true).unwrap();
    assert_eq!(
        applied.labelled,
        Some(dir.path().join("namespace-fresh.yaml"))
    );
    let view = read_dir(dir.path()).unwrap();
    assert!(
        view.store
            .namespaces
            .contains_key(&NamespacedName::cluster("fresh"))
    );
    assert!(matches!(
        apply(dir.path(), "fresh", "wp", "everything", false),
        Err(WaypointError::BadFor(_))
    ));
    assert!(matches!(
        apply(dir.path(), "fresh", "Bad_Name", "service", false),
        Err(WaypointError::BadName { .. })
    ));
}

#[test]
fn list_shows_status_and_bindings() {
    let dir = dir_with(&[("apps.yaml", APPS)]);
    apply(dir.path(), "server", "waypoint", "all", true).unwrap();
    fs::write(
        dir.path().join("waypoint-server-waypoint.status.yaml"),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: server}\nstatus:\n  addresses: [{type: IPAddress, value: 10.96.255.3}]\n  conditions:\n  - {type: Programmed, status: 'True', reason: Programmed, message: m}\n",
    )
    .unwrap();
    let view = read_dir(dir.path()).unwrap();
    let rows = list(&view, Some("server"));
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.address, "10.96.255.3");
    assert!(row.is_programmed());
    assert_eq!(row.namespaces, ["server"]);
    assert_eq!(row.services, ["server/web"], "#none opts out");
    assert_eq!(row.workloads, ["server/web-1"]);
    assert!(list(&view, Some("other")).is_empty());
    let table = render(&rows);
    assert!(table.starts_with("NAMESPACE  NAME"), "{table}");
    assert!(
        table.contains("server     waypoint  all  10.96.255.3  True"),
        "{table}"
    );
}

#[test]
fn a_waypoint_without_status_shows_dashes() {
    let dir = dir_with(&[]);
    apply(dir.path(), "server", "waypoint", "service", false).unwrap();
    let rows = list(&read_dir(dir.path()).unwrap(), None);
    assert_eq!(rows[0].address, "-");
    assert_eq!(rows[0].programmed, "-");
    assert!(!rows[0].is_programmed());
}

#[test]
fn delete_removes_only_files_apply_wrote() {
    let hand_written = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: mine, namespace: server}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";
    let dir = dir_with(&[("apps.yaml", APPS), ("mine.yaml", hand_written)]);
    apply(dir.path(), "server", "a", "service", true).unwrap();
    apply(dir.path(), "server", "b", "service", false).unwrap();
    let view = read_dir(dir.path()).unwrap();
    assert!(matches!(
        delete(dir.path(), &view, "server", &["mine".into()], false),
        Err(WaypointError::NotOurs { .. })
    ));
    assert!(matches!(
        delete(
            dir.path(),
            &view,
            "server",
            &["a".into(), "ghost".into()],
            false
        ),
        Err(WaypointError::NotFound(_))
    ));
    assert!(
        dir.path().join("waypoint-server-a.yaml").exists(),
        "nothing removed on error"
    );
    let removed = delete(dir.path(), &view, "server", &["a".into()], false).unwrap();
    assert_eq!(removed, [dir.path().join("waypoint-server-a.yaml")]);
    assert_eq!(namespaces_using(&view, "server", &["a".into()]), ["server"]);
    let view = read_dir(dir.path()).unwrap();
    let err = delete(dir.path(), &view, "server", &[], true).unwrap_err();
    assert!(
        matches!(err, WaypointError::NotOurs { .. }),
        "--all meets the hand-written one"
    );
}
