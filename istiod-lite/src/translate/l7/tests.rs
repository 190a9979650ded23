//! Table tests of the L7 translation: each feature from a small store, read
//! back from the `Waypoint` resource and the conditions.

use mesh_api::ambit::waypoint::v1 as wp;
use wp::{filter, path_match, path_modifier, policy, route};

use crate::model::ObjectCondition;
use crate::translate::tests::load_store;
use crate::translate::{MeshConfig, Translation, translate};

/// A waypoint in `shop` bound by the namespace label, its own Service,
/// three bound Services, an opted-out one, and an unbound namespace.
pub(super) const BASE: &str = r#"
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
kind: Namespace
metadata: {name: other}
---
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
kind: Service
metadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {clusterIP: 10.96.0.1, ports: [{name: mesh, port: 15008}]}
---
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports:
  - {name: http-web, port: 80, targetPort: 8080}
  - {name: api, port: 9090, appProtocol: grpc}
  - {name: h2, port: 81, appProtocol: kubernetes.io/h2c}
  - {name: tcp-db, port: 5432}
  - {name: other, port: 7000, targetPort: named}
---
kind: Service
metadata: {name: web-v1, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.12, ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: optout, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.13, ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: plain, namespace: other}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
"#;

fn run(extra: &str) -> Translation {
    let store = load_store(&format!("{BASE}\n---\n{extra}")).unwrap_or_else(|e| panic!("{e:#}"));
    translate(&store, &MeshConfig::default())
}

pub(super) fn waypoint(out: &Translation) -> &wp::Waypoint {
    out.waypoints
        .get("shop/waypoint")
        .expect("the waypoint's resource")
}

pub(super) fn service<'a>(out: &'a Translation, name: &str) -> &'a wp::Service {
    waypoint(out)
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("service {name} not bound"))
}

fn routes<'a>(out: &'a Translation, name: &str) -> &'a [wp::Route] {
    &service(out, name).routes
}

/// The conditions of one object, as `Type=Status Reason: message`.
pub(super) fn conditions_of(out: &Translation, kind: &str, name: &str) -> Vec<String> {
    out.conditions
        .iter()
        .filter(|c: &&ObjectCondition| {
            c.object.kind.name() == kind && c.object.name.to_string() == name
        })
        .map(|c| {
            format!(
                "{}={} {}: {}",
                c.type_,
                if c.status { "True" } else { "False" },
                c.reason,
                c.message
            )
        })
        .collect()
}

fn http_route(name: &str, body: &str) -> String {
    format!("kind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{body}")
}

fn only_rule(out: &Translation) -> &wp::Rule {
    let routes = routes(out, "web");
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].rules.len(), 1);
    &routes[0].rules[0]
}

fn ms(d: &prost_types::Duration) -> i64 {
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

#[test]
fn bound_services_with_addresses_and_port_protocols() {
    let out = run("");
    let names: Vec<&str> = waypoint(&out)
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    // Not the waypoint's own Service, not the opted-out one, not another namespace's.
    assert_eq!(names, ["web", "web-v1", "web-v2"]);
    let web = service(&out, "web");
    assert_eq!(web.hostname, "web.shop.svc.cluster.local");
    assert_eq!(web.addresses, ["10.96.0.10", "fd00::10"]);
    let ports: Vec<(u32, u32, wp::Protocol)> = web
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.protocol()))
        .collect();
    assert_eq!(
        ports,
        [
            (80, 8080, wp::Protocol::Http1),
            (81, 0, wp::Protocol::Http2),
            (5432, 0, wp::Protocol::Tcp),
            (7000, 0, wp::Protocol::Detect),
            (9090, 0, wp::Protocol::Grpc),
        ]
    );
    assert!(out.conditions.is_empty(), "{:?}", out.conditions);
}

#[test]
fn a_waypoint_for_workloads_only_has_no_services_and_a_deleted_gateway_no_resource() {
    let out = run(
        "kind: Gateway\nmetadata: {name: pods, namespace: other, labels: {istio.io/waypoint-for: workload}}\nspec: {gatewayClassName: istio-waypoint, listeners: []}\n---\nkind: Service\nmetadata: {name: s, namespace: other, labels: {istio.io/use-waypoint: pods}}\nspec: {clusterIP: 10.96.1.2}",
    );
    assert!(out.waypoints["other/pods"].services.is_empty());
    let mut store = load_store(BASE).unwrap();
    store.gateways.clear();
    assert!(
        translate(&store, &MeshConfig::default())
            .waypoints
            .is_empty()
    );
}

#[test]
fn route_parents_bind_to_services_with_port_restriction() {
    let cases: Vec<(&str, Vec<u32>)> = vec![
        ("[{group: \"\", kind: Service, name: web}]", vec![]),
        ("[{kind: Service, name: web, port: 80}]", vec![80]),
        (
            "[{kind: Service, name: web, port: 80}, {kind: Service, name: web, port: 9090}]",
            vec![80, 9090],
        ),
        // A parentRef without a port widens to every port.
        (
            "[{kind: Service, name: web, port: 80}, {kind: Service, group: core, name: web}]",
            vec![],
        ),
    ];
    for (parents, want) in cases {
        let out = run(&http_route(
            "r",
            &format!(
                "  parentRefs: {parents}\n  rules: [{{backendRefs: [{{name: web-v1, port: 80}}]}}]"
            ),
        ));
        let routes = routes(&out, "web");
        assert_eq!(routes.len(), 1, "{parents}");
        assert_eq!(routes[0].ports, want, "{parents}");
        assert_eq!(routes[0].kind(), route::Kind::Http);
        assert_eq!(
            conditions_of(&out, "HTTPRoute", "shop/r"),
            [
                "Accepted=True Accepted: attached to every parent Service it names",
                "ResolvedRefs=True ResolvedRefs: every backendRef resolves to a Service port",
            ],
            "{parents}"
        );
    }
}

#[test]
fn parents_that_cannot_take_the_route() {
    let cases = [
        (
            "[{kind: Service, name: plain, namespace: other}]",
            "Accepted=False ConsumerRouteNotSupported: spec.parentRefs[0] names Service other/plain in another namespace: consumer routes are not supported yet; put the route in namespace other (a producer route, for every caller)",
        ),
        (
            "[{kind: Service, name: optout}]",
            "Accepted=False NoWaypoint: spec.parentRefs[0] names Service shop/optout, which is not bound to a waypoint; label the Service or its namespace istio.io/use-waypoint=<waypoint name> so a waypoint applies this route",
        ),
        (
            "[{kind: Service, name: ghost}]",
            "Accepted=False NoMatchingParent: spec.parentRefs[0] names Service shop/ghost, which does not exist",
        ),
        (
            "[{kind: Service, name: web, port: 1234}]",
            "Accepted=False NoMatchingParent: spec.parentRefs[0] names port 1234, which Service shop/web does not have",
        ),
        (
            "[{kind: Service, group: example.com, name: web}]",
            "Accepted=False NoMatchingParent: spec.parentRefs[0] has kind Service with group \"example.com\"; a mesh route's parent Service has the core group (\"\")",
        ),
    ];
    for (parents, want) in cases {
        let out = run(&http_route(
            "r",
            &format!("  parentRefs: {parents}\n  rules: [{{}}]"),
        ));
        assert!(routes(&out, "web").is_empty(), "{parents}");
        let got = conditions_of(&out, "HTTPRoute", "shop/r");
        assert!(got.contains(&want.to_string()), "{parents}: {got:#?}");
    }
    // A route to the unbound Service in its own namespace.
    let out = run(
        "kind: HTTPRoute\nmetadata: {name: r, namespace: other}\nspec: {parentRefs: [{kind: Service, name: plain}]}",
    );
    assert!(
        conditions_of(&out, "HTTPRoute", "other/r")[0].starts_with("Accepted=False NoWaypoint")
    );
    // Gateway parents are an ingress gateway's business: no status from here.
    let out = run(&http_route("r", "  parentRefs: [{name: ingress}]"));
    assert!(conditions_of(&out, "HTTPRoute", "shop/r").is_empty());
}

#[test]
fn http_matches() {
    let out = run(&http_route(
        "r",
        r#"  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches:
    - {}
    - path: {type: Exact, value: /a}
      method: POST
      headers: [{name: x-user, value: bob}, {type: RegularExpression, name: x-id, value: "[0-9]+"}]
      queryParams: [{name: debug, value: "1"}]
    - path: {type: RegularExpression, value: "/b/.*"}
"#,
    ));
    let m = &only_rule(&out).matches;
    assert_eq!(m.len(), 3);
    let path = |i: usize| m[i].path.as_ref().map(|p| (p.r#type(), p.value.clone()));
    assert_eq!(path(0), Some((path_match::Type::Prefix, "/".into())));
    assert_eq!(path(1), Some((path_match::Type::Exact, "/a".into())));
    assert_eq!(path(2), Some((path_match::Type::Regex, "/b/.*".into())));
    assert_eq!(m[1].method, "POST");
    assert_eq!(m[1].headers.len(), 2);
    assert_eq!(m[1].headers[1].r#type(), wp::header_match::Type::Regex);
    assert_eq!(
        (
            m[1].query_params[0].name.as_str(),
            m[1].query_params[0].value.as_str()
        ),
        ("debug", "1")
    );
}

#[test]
fn every_filter_kind() {
    let out = run(&http_route(
        "r",
        r#"  parentRefs: [{kind: Service, name: web}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}]}
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: example.com, port: 8443, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: URLRewrite
      urlRewrite: {hostname: internal, path: {type: ReplaceFullPath, replaceFullPath: /index}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 25}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 8}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}}
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: Filter, name: x}
"#,
    ));
    let filters: Vec<&filter::Kind> = only_rule(&out)
        .filters
        .iter()
        .filter_map(|f| f.kind.as_ref())
        .collect();
    assert_eq!(filters.len(), 7, "{filters:#?}");
    let filter::Kind::RequestHeaderModifier(req) = filters[0] else {
        panic!("{:?}", filters[0])
    };
    assert_eq!(
        (
            req.set[0].name.as_str(),
            req.add[0].name.as_str(),
            req.remove[0].as_str()
        ),
        ("x-a", "x-b", "x-c")
    );
    let filter::Kind::ResponseHeaderModifier(resp) = filters[1] else {
        panic!("{:?}", filters[1])
    };
    assert_eq!(resp.add[0].value, "waypoint");
    let filter::Kind::RequestRedirect(redirect) = filters[2] else {
        panic!("{:?}", filters[2])
    };
    assert_eq!(
        (
            redirect.scheme.as_str(),
            redirect.hostname.as_str(),
            redirect.port,
            redirect.status_code
        ),
        ("https", "example.com", 8443, 301)
    );
    let path = redirect.path.as_ref().unwrap();
    assert_eq!(
        (path.r#type(), path.value.as_str()),
        (path_modifier::Type::Prefix, "/new")
    );
    let filter::Kind::UrlRewrite(rewrite) = filters[3] else {
        panic!("{:?}", filters[3])
    };
    assert_eq!(rewrite.hostname, "internal");
    assert_eq!(
        rewrite.path.as_ref().unwrap().r#type(),
        path_modifier::Type::Full
    );
    let percents: Vec<f64> = filters[4..]
        .iter()
        .map(|f| match f {
            filter::Kind::RequestMirror(m) => {
                assert_eq!(
                    m.backend.as_ref().unwrap().hostname,
                    "web-v2.shop.svc.cluster.local"
                );
                m.percent
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(percents, [25.0, 12.5, 100.0]);
    assert_eq!(
        conditions_of(&out, "HTTPRoute", "shop/r"),
        [
            "Accepted=True Accepted: attached to every parent Service it names",
            "PartiallyInvalid=True UnsupportedValue: spec.rules[0].filters[7]: filter type ExtensionRef is not supported by the waypoint; this filter is not applied",
            "ResolvedRefs=True ResolvedRefs: every backendRef resolves to a Service port",
        ]
    );
}

#[test]
fn backends_weights_and_backend_filters() {
    let out = run(&http_route(
        "r",
        r#"  parentRefs: [{kind: Service, name: web}]
  rules:
  - backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - name: web-v2
      port: 80
      weight: 10
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-canary, value: "1"}]}}]
    - {name: web, port: 80}
"#,
    ));
    let backends: Vec<(&str, u32, u32, usize)> = only_rule(&out)
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.port, b.weight, b.filters.len()))
        .collect();
    assert_eq!(
        backends,
        [
            ("web-v1", 80, 90, 0),
            ("web-v2", 80, 10, 1),
            ("web", 80, 1, 0)
        ]
    );
    assert_eq!(
        only_rule(&out).backends[0].hostname,
        "web-v1.shop.svc.cluster.local"
    );
}

#[test]
fn invalid_backends_are_dropped_with_resolved_refs_false() {
    let out = run(&http_route(
        "r",
        r#"  parentRefs: [{kind: Service, name: web}]
  rules:
  - backendRefs:
    - {name: ghost, port: 80}
    - {group: example.com, kind: Bucket, name: b}
    - {name: plain, namespace: other, port: 80}
    - {name: web-v1}
    - {name: web-v1, port: 99}
"#,
    ));
    assert!(only_rule(&out).backends.is_empty());
    let got = conditions_of(&out, "HTTPRoute", "shop/r");
    let tail = "this backend is left out (a rule left without backends answers 500)";
    assert_eq!(
        got,
        [
            "Accepted=True Accepted: attached to every parent Service it names".to_string(),
            format!(
                "ResolvedRefs=False BackendNotFound: spec.rules[0].backendRefs[0]: Service shop/ghost does not exist; {tail}; spec.rules[0].backendRefs[3]: the backendRef to Service shop/web-v1 has no port; {tail}; spec.rules[0].backendRefs[4]: Service shop/web-v1 has no port 99; {tail}"
            ),
            format!(
                "ResolvedRefs=False InvalidKind: spec.rules[0].backendRefs[1]: kind Bucket (group \"example.com\") is not a Service; only Service backends are supported; {tail}"
            ),
            format!(
                "ResolvedRefs=False RefNotPermitted: spec.rules[0].backendRefs[2]: Service other/plain is in another namespace; cross-namespace backends need a ReferenceGrant, which is not supported yet; {tail}"
            ),
        ]
    );
}

#[test]
fn timeouts() {
    /// Request and backend request timeouts in milliseconds.
    type Millis = (Option<i64>, Option<i64>);
    let cases: Vec<(&str, Option<Millis>, bool)> = vec![
        (
            "{request: 10s, backendRequest: 500ms}",
            Some((Some(10_000), Some(500))),
            false,
        ),
        ("{request: 1m30s}", Some((Some(90_000), None)), false),
        // 0s = no timeout.
        ("{request: 0s}", None, false),
        (
            "{request: 10 seconds, backendRequest: 1s}",
            Some((None, Some(1000))),
            true,
        ),
    ];
    for (timeouts, want, invalid) in cases {
        let out = run(&http_route(
            "r",
            &format!(
                "  parentRefs: [{{kind: Service, name: web}}]\n  rules: [{{timeouts: {timeouts}}}]"
            ),
        ));
        let got = only_rule(&out).timeouts.as_ref().map(|t| {
            (
                t.request.as_ref().map(ms),
                t.backend_request.as_ref().map(ms),
            )
        });
        assert_eq!(got, want, "{timeouts}");
        let flagged = conditions_of(&out, "HTTPRoute", "shop/r")
            .iter()
            .any(|c| c.starts_with("PartiallyInvalid=True UnsupportedValue: spec.rules[0].timeouts.request: \"10 seconds\" is not a duration"));
        assert_eq!(flagged, invalid, "{timeouts}");
    }
}

#[test]
fn retry_and_fault_annotations_apply_to_every_rule() {
    let out = run(r#"kind: HTTPRoute
metadata:
  name: r
  namespace: shop
  annotations:
    waypoint.ambit.dev/retry-attempts: "3"
    waypoint.ambit.dev/retry-codes: "503,504"
    waypoint.ambit.dev/retry-backoff: 50ms
    waypoint.ambit.dev/fault-delay: 100ms
    waypoint.ambit.dev/fault-delay-percent: "10"
    waypoint.ambit.dev/fault-abort-status: "503"
    waypoint.ambit.dev/fault-abort-percent: "5"
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{matches: [{path: {value: /a}}]}, {}]
"#);
    let rules = &routes(&out, "web")[0].rules;
    assert_eq!(rules.len(), 2);
    for rule in rules {
        let retry = rule.retry.as_ref().unwrap();
        assert_eq!(
            (
                retry.attempts,
                retry.codes.clone(),
                retry.backoff.as_ref().map(ms)
            ),
            (3, vec![503, 504], Some(50))
        );
        let fault = rule.fault.as_ref().unwrap();
        assert_eq!(
            (
                fault.delay.as_ref().map(ms),
                fault.delay_percent,
                fault.abort_status,
                fault.abort_percent
            ),
            (Some(100), 10.0, 503, 5.0)
        );
    }
    assert!(
        !conditions_of(&out, "HTTPRoute", "shop/r")
            .iter()
            .any(|c| c.contains("False") || c.contains("Partially"))
    );
}

#[test]
fn invalid_annotations_drop_the_setting_and_name_the_annotation() {
    let out = run(r#"kind: HTTPRoute
metadata:
  name: r
  namespace: shop
  annotations:
    waypoint.ambit.dev/retry-attempts: lots
    waypoint.ambit.dev/fault-delay: 100ms
    waypoint.ambit.dev/fault-delay-percent: "250"
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{}]
"#);
    let rule = only_rule(&out);
    assert!(rule.retry.is_none() && rule.fault.is_none());
    assert_eq!(
        conditions_of(&out, "HTTPRoute", "shop/r")[1],
        "PartiallyInvalid=True InvalidAnnotation: annotation waypoint.ambit.dev/fault-delay-percent: \"250\" is not a number from 0 to 100; the route's fault injection is not applied; annotation waypoint.ambit.dev/retry-attempts: \"lots\" is not a number from 0 to 100; the route's retry policy is not applied"
    );
}

#[test]
fn grpc_method_matches_become_paths() {
    let out = run(r#"kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web, port: 9090}]
  rules:
  - matches:
    - method: {service: pkg.Greeter, method: Hello}
    - method: {service: pkg.Greeter}
    - method: {method: Hello}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "Get.*"}
    - method: {type: RegularExpression, method: "Get.*"}
    - headers: [{name: x-tenant, value: a}]
    backendRefs: [{name: web, port: 9090}]
"#);
    let route = &routes(&out, "web")[0];
    assert_eq!(
        (route.kind(), route.ports.clone()),
        (route::Kind::Grpc, vec![9090])
    );
    let paths: Vec<Option<(path_match::Type, String)>> = route.rules[0]
        .matches
        .iter()
        .map(|m| m.path.as_ref().map(|p| (p.r#type(), p.value.clone())))
        .collect();
    assert_eq!(
        paths,
        [
            Some((path_match::Type::Exact, "/pkg.Greeter/Hello".into())),
            Some((path_match::Type::Prefix, "/pkg.Greeter/".into())),
            Some((path_match::Type::Regex, "^/[^/]+/Hello$".into())),
            Some((path_match::Type::Regex, "^/pkg\\..*/Get.*$".into())),
            Some((path_match::Type::Regex, "^/[^/]+/Get.*$".into())),
            None,
        ]
    );
    assert_eq!(route.rules[0].matches[5].headers[0].name, "x-tenant");
    assert_eq!(
        conditions_of(&out, "GRPCRoute", "shop/g")[0],
        "Accepted=True Accepted: attached to every parent Service it names"
    );
}

#[test]
fn routes_of_a_service_are_sorted_and_carry_hostnames_and_creation_time() {
    let out = run(r#"kind: HTTPRoute
metadata: {name: b, namespace: shop, creationTimestamp: "2026-01-02T03:04:05Z"}
spec: {parentRefs: [{kind: Service, name: web}], hostnames: [web.example]}
---
kind: HTTPRoute
metadata: {name: a, namespace: shop}
spec: {parentRefs: [{kind: Service, name: web}]}
"#);
    let routes = routes(&out, "web");
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(routes[1].hostnames, ["web.example"]);
    assert_eq!(routes[1].created, 1_767_323_045);
}

#[test]
fn policies_on_the_gateway_and_on_a_service() {
    let out = run(r#"kind: AuthorizationPolicy
metadata: {name: gw, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/x"], notNamespaces: [b], ipBlocks: [10.0.0.0/8], remoteIpBlocks: [1.2.3.4], requestPrincipals: ["iss/sub"], serviceAccounts: [c/y, z]}}]
    to: [{operation: {hosts: [web.shop], ports: ["80"], methods: [GET], paths: ["/admin*"], notPaths: [/admin/health]}}]
    when: [{key: "request.headers[x-user]", values: [bob], notValues: [eve]}]
---
kind: AuthorizationPolicy
metadata: {name: svc, namespace: shop}
spec:
  targetRef: {kind: Service, group: "", name: web}
  targetRefs: [{kind: Service, group: "", name: web}, {kind: Service, group: "", name: web-v1}]
  action: ALLOW
  rules: [{}]
---
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: AUDIT
"#);
    let wp = waypoint(&out);
    assert_eq!(wp.policies.len(), 1);
    let gw = &wp.policies[0];
    assert_eq!(
        (gw.name.as_str(), gw.action(), gw.dry_run),
        ("gw", policy::Action::Deny, true)
    );
    let source = &gw.rules[0].from[0];
    assert_eq!(
        source.principals,
        [
            "cluster.local/ns/a/sa/x",
            "cluster.local/ns/c/sa/y",
            "cluster.local/ns/shop/sa/z"
        ]
    );
    assert_eq!(
        (
            source.not_namespaces.clone(),
            source.ip_blocks.clone(),
            source.remote_ip_blocks.clone(),
            source.request_principals.clone()
        ),
        (
            vec!["b".to_string()],
            vec!["10.0.0.0/8".to_string()],
            vec!["1.2.3.4".to_string()],
            vec!["iss/sub".to_string()]
        )
    );
    let op = &gw.rules[0].to[0];
    assert_eq!(
        (
            op.hosts.clone(),
            op.ports.clone(),
            op.methods.clone(),
            op.paths.clone(),
            op.not_paths.clone()
        ),
        (
            vec!["web.shop".to_string()],
            vec!["80".to_string()],
            vec!["GET".to_string()],
            vec!["/admin*".to_string()],
            vec!["/admin/health".to_string()]
        )
    );
    let when = &gw.rules[0].when[0];
    assert_eq!(
        (
            when.key.as_str(),
            when.values.clone(),
            when.not_values.clone()
        ),
        (
            "request.headers[x-user]",
            vec!["bob".to_string()],
            vec!["eve".to_string()]
        )
    );

    let on = |svc: &str| -> Vec<(String, policy::Action)> {
        service(&out, svc)
            .policies
            .iter()
            .map(|p| (p.name.clone(), p.action()))
            .collect()
    };
    // Listed twice (targetRef and targetRefs), attached once.
    assert_eq!(
        on("web"),
        [
            ("audit".to_string(), policy::Action::Audit),
            ("svc".to_string(), policy::Action::Allow)
        ]
    );
    assert_eq!(on("web-v1"), [("svc".to_string(), policy::Action::Allow)]);
    assert!(on("web-v2").is_empty());
    assert_eq!(service(&out, "web").policies[1].rules.len(), 1);

    // None of them reaches ztunnel as an L4 policy.
    for name in ["shop/gw", "shop/svc", "shop/audit"] {
        assert!(!out.authorizations.contains_key(name), "{name}");
        assert!(
            conditions_of(&out, "AuthorizationPolicy", name)
                .iter()
                .any(|c| c.starts_with("ZtunnelEnforced=False EnforcedByWaypoint"))
        );
    }
}

#[test]
fn policies_that_cannot_attach() {
    let out = run(r#"kind: AuthorizationPolicy
metadata: {name: custom, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: [/private*]}}]}]
---
kind: AuthorizationPolicy
metadata: {name: both, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
---
kind: AuthorizationPolicy
metadata: {name: missing, namespace: shop}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: ghost}
  - {kind: Service, group: "", name: ghost}
  - {kind: Service, group: "", name: optout}
  - {kind: ServiceEntry, group: networking.istio.io, name: se}
  - {kind: Service, group: "", name: plain, namespace: other}
---
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio, listeners: []}
---
kind: AuthorizationPolicy
metadata: {name: ingress, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: ingress}]
"#);
    // CUSTOM fails closed: a DENY with the same rules.
    let custom = &waypoint(&out).policies[0];
    assert_eq!(
        (custom.name.as_str(), custom.action()),
        ("custom", policy::Action::Deny)
    );
    assert_eq!(custom.rules[0].to[0].paths, ["/private*"]);
    assert_eq!(waypoint(&out).policies.len(), 1);
    assert!(conditions_of(&out, "AuthorizationPolicy", "shop/custom").contains(&"PartiallyEnforced=True CustomEnforcedAsDeny: action CUSTOM (an external authorizer) is not supported by the waypoint; the requests its rules select are denied".to_string()));
    assert!(conditions_of(&out, "AuthorizationPolicy", "shop/both").contains(&"Accepted=False InvalidTarget: the policy has both a selector and targetRef(s), which Istio does not allow; it is not applied".to_string()));
    assert!(!out.authorizations.contains_key("shop/both"));
    assert_eq!(
        conditions_of(&out, "AuthorizationPolicy", "shop/missing")[0],
        "Accepted=False TargetNotFound: targetRefs[0] names Gateway shop/ghost, which does not exist; targetRefs[1] names Service shop/ghost, which does not exist; targetRefs[2] names Service shop/optout, which is not bound to a waypoint; label it or its namespace istio.io/use-waypoint; targetRefs[3] names kind ServiceEntry of group \"networking.istio.io\"; a waypoint policy targets a Gateway (gateway.networking.k8s.io) or a Service; targetRefs[4] names Service other/plain in another namespace; a policy attaches only within its own namespace"
    );
    assert_eq!(
        conditions_of(&out, "AuthorizationPolicy", "shop/ingress")[0],
        "Accepted=False TargetNotFound: targetRefs[0] names Gateway shop/ingress, which is not of class istio-waypoint"
    );
}

#[test]
fn translation_is_deterministic_and_sorted() {
    let extra = "kind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec: {parentRefs: [{kind: Service, name: web}, {kind: Service, name: web-v1}]}";
    let a = run(extra);
    let b = run(extra);
    assert_eq!(a.waypoints, b.waypoints);
    assert_eq!(routes(&a, "web-v1").len(), 1);
}

/// The control-plane benchmark's shape (100 namespaces, 10,000 pods, 2,000
/// Services, 1,000 L4 policies, 100 nodes), with a waypoint in every
/// namespace, every Service bound to it with an HTTPRoute, and a targetRef
/// policy per Service: what recomputing the L7 part costs next to the
/// incremental translation of a one-pod change. Prints its figures (debug
/// build; `--release` is several times faster).
#[test]
fn l7_translation_cost_at_scale() {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use crate::model::{Kind, Object, Store};
    use crate::translate::{Touched, Translator};

    let mut store = Store::default();
    let mut add = |kind: Kind, value: serde_json::Value| {
        store.upsert(Object::from_value(kind, value).expect("a valid object"));
    };
    for node in 0..100 {
        add(
            Kind::Node,
            json!({"metadata": {"name": format!("node-{node:03}")}}),
        );
    }
    for ns in 0..100u32 {
        let namespace = format!("team-{ns:03}");
        add(
            Kind::Namespace,
            json!({"metadata": {"name": namespace, "labels": {
            "istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}}}),
        );
        add(
            Kind::Gateway,
            json!({"metadata": {"name": "waypoint", "namespace": namespace},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
        );
        for svc in 0..20u32 {
            let app = format!("app-{svc:03}");
            add(
                Kind::Service,
                json!({"metadata": {"name": app, "namespace": namespace},
                "spec": {"selector": {"app": app}, "clusterIP": format!("10.96.{ns}.{svc}"),
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            );
            add(
                Kind::HTTPRoute,
                json!({"metadata": {"name": app, "namespace": namespace},
                "spec": {"parentRefs": [{"kind": "Service", "name": app}],
                         "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                                    "backendRefs": [{"name": app, "port": 80, "weight": 90},
                                                    {"name": format!("app-{:03}", (svc + 1) % 20), "port": 80, "weight": 10}]}]}}),
            );
            add(
                Kind::AuthorizationPolicy,
                json!({"metadata": {"name": format!("{app}-l7"), "namespace": namespace},
                "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": app}],
                         "rules": [{"from": [{"source": {"namespaces": [namespace]}}], "to": [{"operation": {"methods": ["GET"]}}]}]}}),
            );
        }
        for policy in 0..10u32 {
            add(
                Kind::AuthorizationPolicy,
                json!({"metadata": {"name": format!("l4-{policy}"), "namespace": namespace},
                "spec": {"selector": {"matchLabels": {"app": format!("app-{policy:03}")}},
                         "rules": [{"from": [{"source": {"namespaces": [namespace]}}]}]}}),
            );
        }
        for pod in 0..100u32 {
            add(
                Kind::Pod,
                json!({"metadata": {"name": format!("pod-{pod:03}"), "namespace": namespace,
                    "labels": {"app": format!("app-{:03}", pod % 20)}},
                "spec": {"nodeName": format!("node-{:03}", (ns * 7 + pod) % 100), "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", ns / 50, (ns % 50) * 4 + pod / 64, pod % 64 + 1)}}),
            );
        }
    }
    assert_eq!(store.pods.len(), 10_000);
    assert_eq!(store.services.len(), 2_000);

    let mesh = MeshConfig::default();
    let started = Instant::now();
    let l7 = super::translate_waypoints(&store, &mesh, &Default::default());
    let l7_full = started.elapsed();
    assert_eq!(l7.waypoints.len(), 100);
    for waypoint in l7.waypoints.values() {
        assert_eq!(waypoint.services.len(), 20);
        assert!(
            waypoint
                .services
                .iter()
                .all(|s| s.routes.len() == 1 && s.policies.len() == 1)
        );
        assert_eq!(waypoint.services[0].routes[0].rules[0].backends.len(), 2);
    }

    let mut translator = Translator::new(mesh);
    let shared = Arc::new(store.clone());
    let started = Instant::now();
    translator.update(&shared);
    let full = started.elapsed();

    let mut timed = |store: &Store| {
        let store = Arc::new(store.clone());
        let started = Instant::now();
        let touched = translator.update(&store);
        (started.elapsed(), touched)
    };
    let mut pod_changed = store.clone();
    edit(&mut pod_changed, Kind::Pod, "team-042", "pod-007");
    let (pod_step, touched) = timed(&pod_changed);
    assert!(
        matches!(&touched, Touched::Keys { waypoints, .. } if waypoints.is_empty()),
        "{touched:?}"
    );
    let mut route_changed = pod_changed.clone();
    edit(&mut route_changed, Kind::HTTPRoute, "team-042", "app-007");
    let (route_step, touched) = timed(&route_changed);
    assert!(
        matches!(&touched, Touched::Keys { waypoints, .. } if waypoints.len() == 1),
        "{touched:?}"
    );
    println!(
        "10k pods, 2k Services, 100 waypoints with 2k routes and 2k policies: L7 translation alone {:.1} ms; \
         full translation {:.1} ms; one-pod change {:.1} ms (L7 not recomputed); one-route change {:.1} ms (L7 recomputed)",
        l7_full.as_secs_f64() * 1e3,
        full.as_secs_f64() * 1e3,
        pod_step.as_secs_f64() * 1e3,
        route_step.as_secs_f64() * 1e3,
    );
}

/// Edits one object, as a watch event would replace it: a pod gets a
/// label, a route a new weight for its first backend.
fn edit(store: &mut crate::model::Store, kind: crate::model::Kind, namespace: &str, name: &str) {
    use crate::model::{NamespacedName, Object, ObjectKey};
    let key = ObjectKey {
        kind,
        name: NamespacedName::new(namespace, name),
    };
    let object = store.get(&key).expect("the object exists");
    let mut value = match &object {
        Object::Pod(o) => serde_json::to_value(&**o),
        Object::HTTPRoute(o) => serde_json::to_value(&**o),
        _ => unreachable!("only pods and routes are edited here"),
    }
    .expect("objects serialize");
    if kind == crate::model::Kind::HTTPRoute {
        value["spec"]["rules"][0]["backendRefs"][0]["weight"] = serde_json::json!(50);
    } else {
        value["metadata"]["labels"]["edited"] = serde_json::json!("yes");
    }
    store.upsert(Object::from_value(kind, value).expect("reads back"));
}
