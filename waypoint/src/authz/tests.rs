use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use mesh_api::ambit::waypoint::v1 as pb;

use super::*;

const SRC: &str = "spiffe://cluster.local/ns/frontend/sa/web";

fn policy(name: &str, action: pb::policy::Action, rules: Vec<pb::PolicyRule>) -> pb::Policy {
    pb::Policy {
        namespace: "default".to_string(),
        name: name.to_string(),
        action: action as i32,
        rules,
        dry_run: false,
    }
}

fn set(policies: Vec<pb::Policy>) -> PolicySet {
    let mut errors = Vec::new();
    let s = compile_policies("service default/svc", &policies, &mut errors);
    assert_eq!(errors, vec![], "unexpected compile errors");
    s
}

fn from(s: pb::Source) -> pb::PolicyRule {
    pb::PolicyRule {
        from: vec![s],
        ..Default::default()
    }
}

fn to(o: pb::Operation) -> pb::PolicyRule {
    pb::PolicyRule {
        to: vec![o],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::PolicyRule {
    pb::PolicyRule {
        when: vec![pb::Condition {
            key: key.to_string(),
            values: values.iter().map(|s| s.to_string()).collect(),
            not_values: not_values.iter().map(|s| s.to_string()).collect(),
        }],
        ..Default::default()
    }
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

struct Req {
    principal: Option<String>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    port: u16,
    http: Option<(Method, String, String, HeaderMap)>,
    auth: Option<Verified>,
}

impl Req {
    fn http(method: Method, path: &str) -> Self {
        Req {
            principal: Some(SRC.to_string()),
            source_ip: "10.0.1.5".parse().unwrap(),
            destination_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            http: Some((
                method,
                path.to_string(),
                "svc.default.svc.cluster.local:80".to_string(),
                HeaderMap::new(),
            )),
            auth: None,
        }
    }
    fn tcp() -> Self {
        Req {
            http: None,
            ..Req::http(Method::GET, "/")
        }
    }
    fn principal(mut self, p: Option<&str>) -> Self {
        self.principal = p.map(str::to_string);
        self
    }
    fn header(mut self, n: &'static str, value: &'static str) -> Self {
        if let Some((_, _, _, h)) = &mut self.http {
            h.append(n, HeaderValue::from_static(value));
        }
        self
    }
    /// The request carries a verified JWT of `https://idp/<sub>`.
    fn jwt(mut self, sub: &str) -> Self {
        let claims = serde_json::json!({
            "iss": "https://idp", "sub": sub, "aud": ["web", "api"], "azp": "cli",
            "groups": ["dev", "ops"], "org": {"team": "core", "level": 3},
        });
        self.auth = Some(Verified {
            principal: format!("https://idp/{sub}"),
            audiences: vec!["web".into(), "api".into()],
            presenter: Some("cli".into()),
            claims: claims.as_object().unwrap().clone(),
        });
        self
    }
    fn host(mut self, host: &str) -> Self {
        if let Some((_, _, h, _)) = &mut self.http {
            *h = host.to_string();
        }
        self
    }
    fn attrs(&self) -> RequestAttrs<'_> {
        RequestAttrs {
            source_principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            request: self.http.as_ref().map(|(m, p, h, hs)| HttpAttrs {
                method: m,
                path: p,
                host: h,
                headers: hs,
                auth: self.auth.as_ref(),
            }),
        }
    }
}

fn allowed(s: &PolicySet, r: &Req) -> bool {
    decide(&PolicySet::default(), Some(s), &r.attrs()).is_allow()
}

fn get(path: &str) -> Req {
    Req::http(Method::GET, path)
}

const ALLOW: pb::policy::Action = pb::policy::Action::Allow;
const DENY: pb::policy::Action = pb::policy::Action::Deny;
const AUDIT: pb::policy::Action = pb::policy::Action::Audit;

#[test]
fn no_policies_allow() {
    let d = decide(&PolicySet::default(), None, &get("/").attrs());
    assert_eq!(d, Decision::Allow { policy: None });
}

#[test]
fn deny_before_allow_and_allow_without_match_denies() {
    let s = set(vec![
        policy("allow-all", ALLOW, vec![pb::PolicyRule::default()]),
        policy(
            "deny-admin",
            DENY,
            vec![to(pb::Operation {
                paths: v(&["/admin*"]),
                ..Default::default()
            })],
        ),
    ]);
    assert_eq!(
        decide(&PolicySet::default(), Some(&s), &get("/admin/x").attrs()),
        Decision::Deny {
            policy: PolicyRef {
                namespace: "default".into(),
                name: "deny-admin".into()
            },
            reason: DenyReason::DenyMatched
        }
    );
    assert_eq!(
        decide(&PolicySet::default(), Some(&s), &get("/home").attrs()),
        Decision::Allow {
            policy: Some(PolicyRef {
                namespace: "default".into(),
                name: "allow-all".into()
            })
        }
    );
    let only_get = set(vec![
        policy(
            "allow-get",
            ALLOW,
            vec![to(pb::Operation {
                methods: v(&["GET"]),
                ..Default::default()
            })],
        ),
        policy(
            "allow-head",
            ALLOW,
            vec![to(pb::Operation {
                methods: v(&["HEAD"]),
                ..Default::default()
            })],
        ),
    ]);
    assert!(allowed(&only_get, &get("/")));
    assert_eq!(
        decide(
            &PolicySet::default(),
            Some(&only_get),
            &Req::http(Method::POST, "/").attrs()
        ),
        Decision::Deny {
            policy: PolicyRef {
                namespace: "default".into(),
                name: "allow-get".into()
            },
            reason: DenyReason::NoAllowMatched
        }
    );
    // An ALLOW policy without rules allows nothing.
    assert!(!allowed(
        &set(vec![policy("allow-nothing", ALLOW, vec![])]),
        &get("/")
    ));
    // A DENY policy without rules denies nothing.
    assert!(allowed(
        &set(vec![policy("deny-nothing", DENY, vec![])]),
        &get("/")
    ));
}

#[test]
fn gateway_and_service_policies_combine() {
    let gateway = set(vec![policy(
        "gw-deny-post",
        DENY,
        vec![to(pb::Operation {
            methods: v(&["POST"]),
            ..Default::default()
        })],
    )]);
    let service = set(vec![policy(
        "svc-allow-frontend",
        ALLOW,
        vec![from(pb::Source {
            namespaces: v(&["frontend"]),
            ..Default::default()
        })],
    )]);
    let d = |r: &Req| decide(&gateway, Some(&service), &r.attrs());
    assert!(d(&get("/")).is_allow());
    assert!(!d(&Req::http(Method::POST, "/")).is_allow());
    assert!(!d(&get("/").principal(Some("spiffe://cluster.local/ns/other/sa/x"))).is_allow());
    // Gateway policies alone apply to workload traffic (no service).
    assert!(!decide(&gateway, None, &Req::http(Method::POST, "/").attrs()).is_allow());
}

#[test]
fn string_forms() {
    let cases = [
        ("cluster.local/ns/frontend/sa/web", true),
        ("cluster.local/ns/frontend/sa/other", false),
        ("cluster.local/ns/frontend/*", true),
        ("cluster.local/ns/back*", false),
        ("*/sa/web", true),
        ("*/sa/db", false),
        ("*", true),
        // Principals are compared without "spiffe://".
        ("spiffe://cluster.local/ns/frontend/sa/web", false),
    ];
    for (pattern, want) in cases {
        let s = set(vec![policy(
            "p",
            ALLOW,
            vec![from(pb::Source {
                principals: v(&[pattern]),
                ..Default::default()
            })],
        )]);
        assert_eq!(allowed(&s, &get("/")), want, "principal pattern {pattern}");
    }
    // "*" needs a principal to be present.
    let any = set(vec![policy(
        "p",
        ALLOW,
        vec![from(pb::Source {
            principals: v(&["*"]),
            ..Default::default()
        })],
    )]);
    assert!(!allowed(&any, &get("/").principal(None)));
    for (pattern, path, want) in [
        ("/api", "/api", true),
        ("/api", "/api/", false),
        ("/api/*", "/api/v1/x", true),
        ("*.css", "/static/site.css", true),
        ("*.css", "/static/site.js", false),
    ] {
        let s = set(vec![policy(
            "p",
            ALLOW,
            vec![to(pb::Operation {
                paths: v(&[pattern]),
                ..Default::default()
            })],
        )]);
        assert_eq!(allowed(&s, &get(path)), want, "path {pattern} vs {path}");
    }
}

#[test]
fn not_fields() {
    let s = set(vec![policy(
        "p",
        ALLOW,
        vec![pb::PolicyRule {
            from: vec![pb::Source {
                not_namespaces: v(&["blocked"]),
                not_principals: v(&["*/sa/evil"]),
                ..Default::default()
            }],
            to: vec![pb::Operation {
                not_methods: v(&["DELETE"]),
                not_paths: v(&["/private*"]),
                not_hosts: v(&["internal.*"]),
                not_ports: v(&["9090"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    )]);
    assert!(allowed(&s, &get("/public")));
    assert!(!allowed(&s, &Req::http(Method::DELETE, "/public")));
    assert!(!allowed(&s, &get("/private/x")));
    assert!(!allowed(&s, &get("/").host("internal.corp:80")));
    assert!(!allowed(
        &s,
        &get("/").principal(Some("spiffe://cluster.local/ns/blocked/sa/a"))
    ));
    assert!(!allowed(
        &s,
        &get("/").principal(Some("spiffe://cluster.local/ns/x/sa/evil"))
    ));
    let mut other_port = get("/");
    other_port.port = 9090;
    assert!(!allowed(&s, &other_port));
    // not_ fields hold when the attribute is absent (no mTLS).
    assert!(allowed(&s, &get("/").principal(None)));
}

#[test]
fn namespaces_ips_ports_and_hosts() {
    let s = set(vec![policy(
        "p",
        ALLOW,
        vec![pb::PolicyRule {
            from: vec![pb::Source {
                namespaces: v(&["front*"]),
                ip_blocks: v(&["10.0.1.0/24"]),
                remote_ip_blocks: v(&["10.0.0.0/8"]),
                ..Default::default()
            }],
            to: vec![pb::Operation {
                hosts: v(&["SVC.default.svc.cluster.local"]),
                ports: v(&["80"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    )]);
    assert!(
        allowed(&s, &get("/")),
        "host matched without its port, case-insensitively"
    );
    let mut r = get("/");
    r.source_ip = "10.0.2.5".parse().unwrap();
    assert!(!allowed(&s, &r), "ip block");
    let mut r = get("/");
    r.port = 8080;
    assert!(!allowed(&s, &r), "port");
    assert!(!allowed(&s, &get("/").host("other:80")), "host");
    assert!(!allowed(
        &s,
        &get("/").principal(Some("spiffe://cluster.local/ns/back/sa/x"))
    ));
    assert!(
        !allowed(&s, &get("/").principal(None)),
        "namespaces need a principal"
    );
    let mut mapped = get("/");
    mapped.source_ip = "::ffff:10.0.1.5".parse().unwrap();
    assert!(allowed(&s, &mapped), "IPv4-mapped source");
}

#[test]
fn every_when_key() {
    let cases: Vec<(pb::PolicyRule, Req, bool)> = vec![
        (
            when("request.headers[x-token]", &["abc*"], &[]),
            get("/").header("x-token", "abc123"),
            true,
        ),
        (
            when("request.headers[x-token]", &["abc*"], &[]),
            get("/"),
            false,
        ),
        (
            when("request.headers[x-token]", &[], &["bad"]),
            get("/").header("x-token", "bad"),
            false,
        ),
        (when("source.ip", &["10.0.1.0/24"], &[]), get("/"), true),
        (when("source.ip", &["10.0.9.9"], &[]), get("/"), false),
        (when("remote.ip", &["10.0.1.5"], &[]), get("/"), true),
        (when("source.namespace", &["frontend"], &[]), get("/"), true),
        (
            when("source.namespace", &[], &["frontend"]),
            get("/"),
            false,
        ),
        (
            when(
                "source.principal",
                &["cluster.local/ns/frontend/sa/web"],
                &[],
            ),
            get("/"),
            true,
        ),
        (
            when("destination.ip", &["10.96.0.0/16"], &[]),
            get("/"),
            true,
        ),
        (
            when("destination.ip", &["10.97.0.0/16"], &[]),
            get("/"),
            false,
        ),
        (when("destination.port", &["80"], &[]), get("/"), true),
        (when("destination.port", &[], &["80"]), get("/"), false),
        // request.auth.*: absent without a verified JWT.
        (when("request.auth.principal", &["*"], &[]), get("/"), false),
        (
            when("request.auth.principal", &[], &["https://idp/bob"]),
            get("/"),
            true,
        ),
        (
            when("request.auth.principal", &["https://idp/*"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        (
            when("request.auth.principal", &[], &["*/alice"]),
            get("/").jwt("alice"),
            false,
        ),
        (
            when("request.auth.claims[iss]", &["x"], &[]),
            get("/"),
            false,
        ),
        (
            when("request.auth.claims[iss]", &["https://idp"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        (
            when("request.auth.claims[groups]", &["ops"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        (
            when("request.auth.claims[groups]", &["admin"], &[]),
            get("/").jwt("alice"),
            false,
        ),
        (
            when("request.auth.claims[groups]", &[], &["dev"]),
            get("/").jwt("alice"),
            false,
        ),
        (
            when("request.auth.claims[org][team]", &["core"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        // Not a string: no value to compare.
        (
            when("request.auth.claims[org][level]", &["3"], &[]),
            get("/").jwt("alice"),
            false,
        ),
        (
            when("request.auth.audiences", &["api"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        (
            when("request.auth.audiences", &["other"], &[]),
            get("/").jwt("alice"),
            false,
        ),
        (
            when("request.auth.presenter", &["cli"], &[]),
            get("/").jwt("alice"),
            true,
        ),
        // No SNI at the waypoint.
        (when("connection.sni", &["*"], &[]), get("/"), false),
    ];
    for (i, (rule, req, want)) in cases.into_iter().enumerate() {
        let key = rule.when[0].key.clone();
        let s = set(vec![policy("p", ALLOW, vec![rule])]);
        assert_eq!(allowed(&s, &req), want, "case {i}: {key}");
    }
}

#[test]
fn request_principals_match_the_verified_jwt() {
    let allow = |p: &[&str]| {
        set(vec![policy(
            "p",
            ALLOW,
            vec![from(pb::Source {
                request_principals: v(p),
                ..Default::default()
            })],
        )])
    };
    for (pattern, req, want) in [
        ("*", get("/"), false),
        ("*", get("/").jwt("alice"), true),
        ("https://idp/alice", get("/").jwt("alice"), true),
        ("https://idp/alice", get("/").jwt("bob"), false),
        ("https://idp/*", get("/").jwt("bob"), true),
        ("https://other/*", get("/").jwt("bob"), false),
        ("*/bob", get("/").jwt("bob"), true),
    ] {
        assert_eq!(allowed(&allow(&[pattern]), &req), want, "{pattern}");
    }
    // "Deny requests without a JWT" denies exactly those.
    let d = set(vec![policy(
        "d",
        DENY,
        vec![from(pb::Source {
            not_request_principals: v(&["*"]),
            ..Default::default()
        })],
    )]);
    assert!(!allowed(&d, &get("/")));
    assert!(allowed(&d, &get("/").jwt("alice")));
    // On TCP there is no request: ALLOW rules with request principals do
    // not match, DENY rules ignore them.
    assert!(!allowed(&allow(&["*"]), &Req::tcp()));
    assert!(!allowed(&d, &Req::tcp()));
}

#[test]
fn claim_keys_must_be_bracketed_names() {
    for key in [
        "request.auth.claims",
        "request.auth.claims[]",
        "request.auth.claims[a",
        "request.auth.claims[a]b",
        "request.auth.claims.a",
        "request.auth.claims[a][]",
    ] {
        let mut errors = Vec::new();
        compile_policies(
            "service default/svc",
            &[policy("p", ALLOW, vec![when(key, &["x"], &[])])],
            &mut errors,
        );
        assert_eq!(errors.len(), 1, "{key}");
    }
}

#[test]
fn http_only_fields_on_tcp() {
    let allow_get = set(vec![policy(
        "p",
        ALLOW,
        vec![to(pb::Operation {
            methods: v(&["GET"]),
            ports: v(&["80"]),
            ..Default::default()
        })],
    )]);
    assert!(allowed(&allow_get, &get("/")));
    assert!(
        !allowed(&allow_get, &Req::tcp()),
        "an ALLOW rule with HTTP fields does not match TCP"
    );
    let allow_port = set(vec![policy(
        "p",
        ALLOW,
        vec![to(pb::Operation {
            ports: v(&["80"]),
            ..Default::default()
        })],
    )]);
    assert!(
        allowed(&allow_port, &Req::tcp()),
        "L4 fields still apply on TCP"
    );
    let deny_post = set(vec![policy(
        "d",
        DENY,
        vec![to(pb::Operation {
            methods: v(&["POST"]),
            ports: v(&["80"]),
            ..Default::default()
        })],
    )]);
    assert!(allowed(&deny_post, &get("/")));
    assert!(
        !allowed(&deny_post, &Req::tcp()),
        "a DENY rule ignores HTTP fields on TCP"
    );
    let mut other_port = Req::tcp();
    other_port.port = 81;
    assert!(allowed(&deny_post, &other_port), "but keeps its L4 fields");
    let deny_header = set(vec![policy(
        "d",
        DENY,
        vec![when("request.headers[x-a]", &["1"], &[])],
    )]);
    assert!(!allowed(&deny_header, &Req::tcp()));
    assert!(allowed(&deny_header, &get("/")));
}

#[test]
fn invalid_rules_fail_closed() {
    let mut errors = Vec::new();
    let bad = || when("no.such.key", &["x"], &[]);
    let allow = compile_policies(
        "service default/svc",
        &[policy("allow-bad", ALLOW, vec![bad()])],
        &mut errors,
    );
    let deny = compile_policies(
        "service default/svc",
        &[policy(
            "deny-bad",
            DENY,
            vec![
                bad(),
                to(pb::Operation {
                    ports: v(&["x"]),
                    ..Default::default()
                }),
            ],
        )],
        &mut errors,
    );
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0]
            .to_string()
            .contains("unknown condition key \"no.such.key\""),
        "{}",
        errors[0]
    );
    assert!(
        errors[2].to_string().contains("ports: \"x\" is not a port"),
        "{}",
        errors[2]
    );
    assert!(
        !allowed(&allow, &get("/")),
        "an invalid ALLOW rule is dropped"
    );
    assert!(
        !allowed(&deny, &get("/")),
        "an invalid DENY rule matches everything"
    );
    assert!(!allowed(&deny, &Req::tcp()));
}

#[test]
fn path_encoding_cannot_bypass_deny() {
    let s = set(vec![
        policy("allow-all", ALLOW, vec![pb::PolicyRule::default()]),
        policy(
            "deny-admin",
            DENY,
            vec![to(pb::Operation {
                paths: v(&["/admin", "/admin/*"]),
                ..Default::default()
            })],
        ),
    ]);
    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/%61%64%6D%69%6E",
        "/admin/",
        "/admin//x",
        "/public/%2e%2e/admin",
        "/admin?x=1",
        // Not normalizable: a DENY path field matches (fail closed).
        "/admin%2Fx",
        "/../admin",
        "/adm%00in",
        "/%zz",
    ] {
        assert!(!allowed(&s, &get(path)), "{path} must be denied");
    }
    assert!(allowed(&s, &get("/administrator")));
    assert!(allowed(&s, &get("/public")));
    // ALLOW path rules do not match a path that cannot be normalized.
    let allow_public = set(vec![policy(
        "p",
        ALLOW,
        vec![to(pb::Operation {
            paths: v(&["/public*"]),
            ..Default::default()
        })],
    )]);
    assert!(allowed(&allow_public, &get("/public/a")));
    assert!(!allowed(&allow_public, &get("/public/%2F")));
}

#[test]
fn normalization() {
    let ok = [
        ("/", "/"),
        ("//", "/"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/", "/a/"),
        ("/%61%62", "/ab"),
        ("/%7e%2d%5F", "/~-_"),
        ("/%2e%2e/x", ""),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/x?q=%2F//", "/x?q=%2F//"),
        ("/é", "/é"),
    ];
    for (raw, want) in ok {
        if want.is_empty() {
            assert_eq!(normalize_path(raw), Err(PathError::AboveRoot), "{raw}");
        } else {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }
    let bad = [
        ("admin", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
        ("/a%2fb", PathError::EncodedSlash),
        ("/a%5Cb", PathError::EncodedSlash),
        ("/a\0", PathError::Nul),
        ("/a%00", PathError::Nul),
        ("/a b", PathError::Control),
        ("/a%", PathError::BadEscape),
        ("/a%g1", PathError::BadEscape),
        ("/..", PathError::AboveRoot),
    ];
    for (raw, want) in bad {
        assert_eq!(normalize_path(raw), Err(want), "{raw:?}");
    }
}

#[test]
fn audit_and_dry_run_never_decide() {
    let mut dry_deny = policy("dry-deny", DENY, vec![pb::PolicyRule::default()]);
    dry_deny.dry_run = true;
    let mut dry_allow = policy(
        "dry-allow",
        ALLOW,
        vec![to(pb::Operation {
            methods: v(&["POST"]),
            ..Default::default()
        })],
    );
    dry_allow.dry_run = true;
    let s = set(vec![
        policy("audit-all", AUDIT, vec![pb::PolicyRule::default()]),
        dry_deny,
        dry_allow,
    ]);
    let e = evaluate(&PolicySet::default(), Some(&s), &get("/").attrs());
    assert_eq!(e.decision, Decision::Allow { policy: None });
    assert_eq!(
        e.audited,
        vec![PolicyRef {
            namespace: "default".into(),
            name: "audit-all".into()
        }]
    );
    assert_eq!(
        e.dry_run,
        vec![(
            PolicyRef {
                namespace: "default".into(),
                name: "dry-deny".into()
            },
            Action::Deny
        )]
    );
}
