use super::*;
use crate::model::NamespacedName;

fn parse(text: &str) -> ParsedFile {
    parse_file(Path::new("cfg/mesh.yaml"), text)
}

fn messages(parsed: &ParsedFile) -> Vec<String> {
    parsed.errors.iter().map(ToString::to_string).collect()
}

fn keys(parsed: &ParsedFile) -> Vec<String> {
    parsed
        .objects
        .iter()
        .map(|o| o.object.key().to_string())
        .collect()
}

#[test]
fn reads_every_document_of_a_multi_document_file() {
    let parsed = parse(
        "# leading comment\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns1\n\
         ---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: ns1\n\
         --- # comment after the marker\n\
         \n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\nspec: {}\n",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(
        keys(&parsed),
        [
            "Namespace ns1",
            "ServiceAccount ns1/sa",
            "AuthorizationPolicy default/deny"
        ]
    );
    let lines: Vec<usize> = parsed.objects.iter().map(|o| o.line).collect();
    assert_eq!(lines, [2, 7, 14]);
}

#[test]
fn empty_and_comment_only_documents_are_skipped() {
    let parsed = parse("---\n# only a comment\n---\n\n---\n...\n---\n~\n");
    assert_eq!(parsed, ParsedFile::default());
    assert_eq!(parse(""), ParsedFile::default());
}

#[test]
fn content_on_the_marker_line_is_read() {
    let parsed = parse("--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n");
    assert_eq!(keys(&parsed), ["Namespace a"]);
    assert_eq!(parsed.objects[0].line, 1);
}

#[test]
fn a_list_is_expanded_and_its_bad_items_name_their_index() {
    let parsed = parse(
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n\
         - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: skipped}\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata: {}\n\
         - apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: ns}\n",
    );
    assert_eq!(keys(&parsed), ["Namespace a", "Pod ns/p"]);
    assert_eq!(
        messages(&parsed),
        ["cfg/mesh.yaml:12: field `items[2]`: missing `metadata.name`"]
    );
    assert_eq!(
        messages(&parse("apiVersion: v1\nkind: List\nitems: 3\n")),
        ["cfg/mesh.yaml:3: `items` of a List must be a sequence"]
    );
}

#[test]
fn unwatched_kinds_are_skipped_without_error() {
    let parsed = parse(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    assert_eq!(parsed, ParsedFile::default());
}

#[test]
fn a_namespaced_kind_without_namespace_goes_to_default() {
    let parsed = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n");
    assert_eq!(
        parsed.objects[0].object.key().name,
        NamespacedName::new("default", "web")
    );
}

#[test]
fn another_served_version_of_a_group_is_accepted() {
    let parsed = parse(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: ns}\nspec: {}\n",
    );
    assert_eq!(keys(&parsed), ["PeerAuthentication ns/strict"]);
}

#[test]
fn each_error_names_file_line_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [unclosed\n",
            "cfg/mesh.yaml:4: invalid YAML: ",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}}\nspec: {}\n",
            "cfg/mesh.yaml:3: invalid YAML: ",
        ),
        (
            "- a\n- b\n",
            "cfg/mesh.yaml:1: a document must be a mapping, found a sequence",
        ),
        (
            "apiVersion: v1\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:1: missing `kind`",
        ),
        (
            "apiVersion: v1\nkind: namespace\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:2: unknown kind `namespace`; did you mean `Namespace`?",
        ),
        (
            "apiVersion: v1\nkind: Name-space\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:2: unknown kind `Name-space`",
        ),
        (
            "kind: Pod\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:1: missing `apiVersion` for kind Pod",
        ),
        (
            "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:1: unknown apiVersion `security.istio.io/v2` for kind AuthorizationPolicy; expected `security.istio.io/v1`",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: ns\n",
            "cfg/mesh.yaml:4: missing `metadata.name`",
        ),
        (
            "apiVersion: v1\nkind: Pod\n",
            "cfg/mesh.yaml:1: missing `metadata.name`",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: [a]\n",
            "cfg/mesh.yaml:3: field `metadata`: expected a mapping, found a sequence",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
            "cfg/mesh.yaml:1: missing field `spec`",
        ),
    ];
    for (text, expected) in cases {
        let parsed = parse(text);
        assert!(parsed.objects.is_empty(), "{text}");
        let got = messages(&parsed);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        assert!(
            got[0].starts_with(expected),
            "{text}\n got {got:?}\nwant {expected}"
        );
    }
}

#[test]
fn a_field_of_the_wrong_type_names_its_path_and_line() {
    let parsed = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n\
         apiVersion: security.istio.io/v1\n\
         kind: AuthorizationPolicy\n\
         metadata: {name: p, namespace: ns}\n\
         spec:\n  rules:\n  - to:\n    - operation:\n        ports: 80\n",
    );
    assert_eq!(keys(&parsed), ["Namespace ok"]);
    assert_eq!(
        messages(&parsed),
        [
            "cfg/mesh.yaml:12: field `spec.rules[0].to[0].operation.ports`: invalid type: integer `80`, expected a sequence"
        ]
    );
}

#[test]
fn a_syntax_error_points_at_the_failing_line_of_a_later_document() {
    let parsed = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\n  bad: indent\n",
    );
    assert_eq!(keys(&parsed), ["Namespace a"]);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].line, 6, "{:?}", messages(&parsed));
    assert!(matches!(
        parsed.errors[0].problem,
        DocumentProblem::Syntax(_)
    ));
}

#[test]
fn binary_garbage_is_an_error_not_a_panic() {
    let parsed = parse("\u{0}\u{1}: [\n{{{{\n---\n&a [*a]\n");
    assert!(parsed.objects.is_empty());
    assert!(!parsed.errors.is_empty());
}

#[test]
fn lines_stay_inside_the_text_whatever_its_line_breaks() {
    let inputs = [
        "apiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p}\r\nspec:\r\n  containers: 3\r\n",
        "apiVersion: v1\rkind: Pod\rmetadata: {name: p}\rspec:\r  containers: 3\r",
        "apiVersion: v1\u{2028}kind: Pod\u{2028}spec: {containers: 3}\nmetadata: {name: p}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [\n",
        "---\n---\n...\n---",
        "a: &x [*x]\n",
    ];
    for text in inputs {
        let parsed = parse(text);
        let lines = text.split('\n').count();
        for error in &parsed.errors {
            assert!(
                (1..=lines).contains(&error.line),
                "{text:?}: {error} outside 1..={lines}"
            );
        }
    }
}

#[test]
fn routes_and_target_ref_policies_are_read() {
    let parsed = parse(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  \
         rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 10}}}]}]\n\
         ---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: api, namespace: shop}\n\
         spec: {parentRefs: [{kind: Service, name: api}], rules: [{matches: [{method: {type: RegularExpression, method: \"Get.*\"}}]}]}\n\
         ---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: l7, namespace: shop}\n\
         spec: {targetRef: {kind: Service, group: \"\", name: web}, action: CUSTOM, provider: {name: ext}}\n",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(
        keys(&parsed),
        [
            "HTTPRoute shop/web",
            "GRPCRoute shop/api",
            "AuthorizationPolicy shop/l7"
        ]
    );
    let crate::model::Object::AuthorizationPolicy(policy) = &parsed.objects[2].object else {
        panic!("not a policy")
    };
    let target = policy.spec.target_ref.as_ref().unwrap();
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Service", "web")
    );
}

#[test]
fn request_authentications_are_read_with_every_jwt_rule_field() {
    let parsed = parse(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]\n  \
         jwtRules:\n  - issuer: https://issuer.example\n    audiences: [shop]\n    \
         jwksUri: https://issuer.example/keys\n    timeout: 3s\n    \
         fromHeaders: [{name: x-jwt, prefix: \"Bearer \"}, {name: x-raw}]\n    \
         fromParams: [token]\n    fromCookies: [session]\n    \
         outputPayloadToHeader: x-payload\n    forwardOriginalToken: true\n    \
         outputClaimToHeaders: [{header: x-sub, claim: sub}]\n    \
         futureField: tolerated\n  \
         - issuer: inline\n    jwks: '{\"keys\": []}'\n\
         ---\n\
         apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: sel, namespace: shop}\n\
         spec: {selector: {matchLabels: {app: web}}, jwtRules: [{jwksUri: https://x/keys}]}\n",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(
        keys(&parsed),
        [
            "RequestAuthentication shop/jwt",
            "RequestAuthentication shop/sel"
        ]
    );
    let crate::model::Object::RequestAuthentication(ra) = &parsed.objects[0].object else {
        panic!("not a RequestAuthentication")
    };
    assert_eq!(ra.spec.target_refs[0].kind, "Gateway");
    let rule = &ra.spec.jwt_rules[0];
    assert_eq!(rule.issuer, "https://issuer.example");
    assert_eq!(rule.audiences, ["shop"]);
    assert_eq!(rule.jwks_uri, "https://issuer.example/keys");
    assert_eq!(rule.timeout.as_deref(), Some("3s"));
    assert_eq!(
        (
            rule.from_headers[0].name.as_str(),
            rule.from_headers[0].prefix.as_str()
        ),
        ("x-jwt", "Bearer ")
    );
    assert_eq!(rule.from_headers[1].prefix, "");
    assert_eq!(rule.from_params, ["token"]);
    assert_eq!(rule.from_cookies, ["session"]);
    assert_eq!(rule.output_payload_to_header, "x-payload");
    assert!(rule.forward_original_token);
    assert_eq!(
        (
            rule.output_claim_to_headers[0].header.as_str(),
            rule.output_claim_to_headers[0].claim.as_str()
        ),
        ("x-sub", "sub")
    );
    assert_eq!(ra.spec.jwt_rules[1].jwks, "{\"keys\": []}");
    assert!(!ra.spec.jwt_rules[1].forward_original_token);

    let crate::model::Object::RequestAuthentication(sel) = &parsed.objects[1].object else {
        panic!("not a RequestAuthentication")
    };
    // A rule without an issuer is read; translation reports it on the object.
    assert_eq!(sel.spec.jwt_rules[0].issuer, "");
    assert_eq!(
        sel.spec.selector.as_ref().unwrap().match_labels["app"],
        "web"
    );
}

#[test]
fn a_request_authentication_with_a_wrong_field_type_names_its_path() {
    let parsed = parse(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: bad}\n\
         spec: {jwtRules: [{issuer: a, fromHeaders: [{prefix: x}]}]}\n",
    );
    assert!(parsed.objects.is_empty());
    let text = messages(&parsed).join("\n");
    assert!(text.contains("spec.jwtRules[0].fromHeaders[0]"), "{text}");
}
