use super::*;

const FILE: &str = "# apps of the example\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: client   # the caller\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: server\n  labels:\n    team: b\n---\n# a pod\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: server}\nspec: {containers: [{name: c, command: [x]}]}\n";

fn set(key: &str, value: &str) -> LabelChange {
    LabelChange::Set {
        key: key.into(),
        value: value.into(),
    }
}

#[test]
fn setting_a_label_rewrites_only_that_document() {
    let edited = edit_text(
        FILE,
        &Target::Namespace("server".into()),
        &[set("istio.io/dataplane-mode", "ambient")],
    )
    .unwrap();
    let expected = FILE.replace(
        "  labels:\n    team: b\n",
        "  labels:\n    team: b\n    istio.io/dataplane-mode: ambient\n",
    );
    assert_eq!(edited, expected);
}

#[test]
fn removing_the_last_label_drops_the_map_and_keeps_the_rest_byte_identical() {
    let edited = edit_text(
        FILE,
        &Target::Namespace("server".into()),
        &[LabelChange::Remove { key: "team".into() }],
    )
    .unwrap();
    assert_eq!(edited, FILE.replace("  labels:\n    team: b\n", ""));
}

#[test]
fn a_pod_is_found_by_namespace_and_name_and_keeps_its_header_comment() {
    let target = Target::pod("server/web").unwrap();
    let edited = edit_text(FILE, &target, &[set("app", "web")]).unwrap();
    let (before, after) = edited.split_at(FILE.find("# a pod").unwrap());
    assert_eq!(before, &FILE[..FILE.find("# a pod").unwrap()]);
    assert_eq!(
        after,
        "# a pod\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: server\n  labels:\n    app: web\nspec:\n  containers:\n  - name: c\n    command:\n    - x\n"
    );
    assert!(edit_text(FILE, &Target::pod("client/web").unwrap(), &[set("a", "b")]).is_none());
    assert!(edit_text(FILE, &Target::Namespace("nope".into()), &[set("a", "b")]).is_none());
}

#[test]
fn an_object_in_a_list_is_labelled_too() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n";
    let edited = edit_text(list, &Target::Namespace("a".into()), &[set("k", "v")]).unwrap();
    assert!(edited.contains("labels:\n      k: v"), "{edited}");
}

#[test]
fn changes_are_validated_like_kubectl() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parse_changes(&args(&["istio.io/dataplane-mode=ambient", "team-"])).unwrap(),
        [
            set("istio.io/dataplane-mode", "ambient"),
            LabelChange::Remove { key: "team".into() }
        ]
    );
    assert!(matches!(
        parse_changes(&args(&["novalue"])),
        Err(LabelError::BadChange(_))
    ));
    assert!(matches!(
        parse_changes(&args(&["-bad=x"])),
        Err(LabelError::BadKey(_))
    ));
    assert!(matches!(
        parse_changes(&args(&["k=bad value"])),
        Err(LabelError::BadValue(_))
    ));
    assert!(matches!(parse_changes(&[]), Err(LabelError::NoChanges)));
    assert!(matches!(Target::pod("a/b/c"), Err(LabelError::BadPod(_))));
    assert_eq!(
        Target::pod("web").unwrap(),
        Target::Pod {
            namespace: "default".into(),
            name: "web".into()
        }
    );
}

#[test]
fn labelling_a_directory_edits_the_file_that_defines_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let other = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}  # keep me\n";
    std::fs::write(dir.path().join("a-nodes.yaml"), other).unwrap();
    std::fs::write(dir.path().join("b-apps.yaml"), FILE).unwrap();
    let file = label(
        dir.path(),
        &Target::Namespace("client".into()),
        &[set("istio.io/dataplane-mode", "ambient")],
    )
    .unwrap();
    assert_eq!(file, dir.path().join("b-apps.yaml"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a-nodes.yaml")).unwrap(),
        other
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("istio.io/dataplane-mode: ambient"), "{text}");
    assert!(text.ends_with(&FILE[FILE.find("---").unwrap()..]), "{text}");
    let missing = label(
        dir.path(),
        &Target::Namespace("gone".into()),
        &[set("a", "b")],
    )
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("namespace gone not found in any YAML file of"),
        "{missing}"
    );
}

#[test]
fn waypoint_bindings_and_opt_outs_are_labels_like_any_other() {
    let changes = parse_changes(&[
        "istio.io/use-waypoint=waypoint".into(),
        "istio.io/use-waypoint-namespace-".into(),
    ])
    .unwrap();
    assert_eq!(changes[0], set("istio.io/use-waypoint", "waypoint"));
    assert!(parse_changes(&["istio.io/use-waypoint=none".into()]).is_ok());
    // `#none` is not a valid Kubernetes label value; the API server refuses
    // it too, so the opt-out is written `none`.
    assert!(matches!(
        parse_changes(&["istio.io/use-waypoint=#none".into()]),
        Err(LabelError::BadValue(v)) if v == "#none"
    ));
}

#[test]
fn a_service_is_found_by_namespace_and_name() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: server}\nspec: {ports: [{port: 80}]}\n";
    let target = Target::service("server/web").unwrap();
    assert_eq!(target.to_string(), "service server/web");
    let edited = edit_text(text, &target, &[set("istio.io/use-waypoint", "waypoint")]).unwrap();
    assert!(
        edited.contains("istio.io/use-waypoint: waypoint"),
        "{edited}"
    );
    assert!(edit_text(text, &Target::pod("server/web").unwrap(), &[set("a", "b")]).is_none());
}
