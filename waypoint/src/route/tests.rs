use http::{HeaderMap, HeaderValue, Method};
use mesh_api::ambit::waypoint::v1 as pb;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::config::ConfigError;

fn prefix(v: &str) -> pb::Match {
    path(pb::path_match::Type::Prefix, v)
}

fn exact(v: &str) -> pb::Match {
    path(pb::path_match::Type::Exact, v)
}

fn path(t: pb::path_match::Type, v: &str) -> pb::Match {
    pb::Match {
        path: Some(pb::PathMatch {
            r#type: t as i32,
            value: v.to_string(),
        }),
        ..Default::default()
    }
}

fn rule(name: &str, matches: Vec<pb::Match>) -> pb::Rule {
    pb::Rule {
        name: name.to_string(),
        matches,
        ..Default::default()
    }
}

fn route(name: &str, created: i64, rules: Vec<pb::Rule>) -> pb::Route {
    pb::Route {
        namespace: "default".to_string(),
        name: name.to_string(),
        created,
        rules,
        ..Default::default()
    }
}

fn table(routes: Vec<pb::Route>) -> Table {
    let (t, errors) = compile_routes("default/svc", &routes);
    assert_eq!(errors, vec![], "unexpected compile errors");
    t
}

struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    host: String,
    port: u16,
}

impl Req {
    fn new(path: &str) -> Self {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Req {
            method: Method::GET,
            path,
            query,
            headers: HeaderMap::new(),
            host: "svc.default.svc.cluster.local".to_string(),
            port: 80,
        }
    }
    fn host(mut self, h: &str) -> Self {
        self.host = h.to_string();
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Self {
        self.headers.append(n, HeaderValue::from_static(v));
        self
    }
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            host: &self.host,
            port: self.port,
        }
    }
}

/// "<route>/<rule>" of the selection, "404" for NoMatch, "passthrough" for
/// NoRoutes.
fn pick(t: &Table, r: &Req) -> String {
    match t.select(&r.head()) {
        Selection::Matched(s) => format!("{}/{}", s.route.name, s.rule.name),
        Selection::NoMatch => "404".to_string(),
        Selection::NoRoutes => "passthrough".to_string(),
    }
}

#[test]
fn no_routes_is_passthrough_and_no_match_is_404() {
    let empty = table(vec![]);
    assert_eq!(pick(&empty, &Req::new("/")), "passthrough");
    let t = table(vec![route("a", 0, vec![rule("r", vec![exact("/x")])])]);
    assert_eq!(pick(&t, &Req::new("/y")), "404");
    assert_eq!(pick(&t, &Req::new("/x")), "a/r");
}

#[test]
fn prefix_matches_whole_segments() {
    let cases = [
        ("/foo", "/foo", true),
        ("/foo", "/foo/", true),
        ("/foo", "/foo/bar", true),
        ("/foo", "/foobar", false),
        ("/foo/", "/foo", true),
        ("/foo/", "/foo/bar", true),
        ("/foo/", "/foobar", false),
        ("/", "/anything", true),
        ("/", "/", true),
        ("/a/b", "/a", false),
    ];
    for (p, path, want) in cases {
        assert_eq!(
            matching::prefix_matches(p, path),
            want,
            "prefix {p} path {path}"
        );
        let t = table(vec![route("a", 0, vec![rule("r", vec![prefix(p)])])]);
        assert_eq!(
            pick(&t, &Req::new(path)) == "a/r",
            want,
            "table prefix {p} path {path}"
        );
    }
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let t = table(vec![
        route("short", 0, vec![rule("r", vec![prefix("/")])]),
        route("long", 5, vec![rule("r", vec![prefix("/api")])]),
        route("exact", 9, vec![rule("r", vec![exact("/api/v1")])]),
        route("longer", 7, vec![rule("r", vec![prefix("/api/v1")])]),
    ]);
    assert_eq!(pick(&t, &Req::new("/api/v1")), "exact/r");
    assert_eq!(pick(&t, &Req::new("/api/v1/x")), "longer/r");
    assert_eq!(pick(&t, &Req::new("/api/v2")), "long/r");
    assert_eq!(pick(&t, &Req::new("/other")), "short/r");
}

#[test]
fn method_then_headers_then_query_break_ties() {
    let mut with_method = prefix("/");
    with_method.method = "POST".to_string();
    let mut one_header = prefix("/");
    one_header.headers = vec![header("x-a", "1")];
    let mut two_headers = prefix("/");
    two_headers.headers = vec![header("x-a", "1"), header("x-b", "2")];
    let mut one_query = prefix("/");
    one_query.query_params = vec![query("q", "1")];
    // Every route is older than the next so that age would pick the wrong one.
    let t = table(vec![
        route("plain", 0, vec![rule("r", vec![prefix("/")])]),
        route("query", 1, vec![rule("r", vec![one_query])]),
        route("header1", 2, vec![rule("r", vec![one_header])]),
        route("header2", 3, vec![rule("r", vec![two_headers])]),
        route("method", 4, vec![rule("r", vec![with_method])]),
    ]);
    let all = || {
        Req::new("/x?q=1")
            .method(Method::POST)
            .header("x-a", "1")
            .header("x-b", "2")
    };
    assert_eq!(pick(&t, &all()), "method/r");
    assert_eq!(pick(&t, &all().method(Method::GET)), "header2/r");
    assert_eq!(
        pick(&t, &Req::new("/x?q=1").header("x-a", "1")),
        "header1/r"
    );
    assert_eq!(pick(&t, &Req::new("/x?q=1")), "query/r");
    assert_eq!(pick(&t, &Req::new("/x")), "plain/r");
}

#[test]
fn older_route_then_namespace_name_then_rule_order() {
    let t = table(vec![
        route("b", 10, vec![rule("r", vec![prefix("/")])]),
        route("a", 20, vec![rule("r", vec![prefix("/")])]),
    ]);
    assert_eq!(pick(&t, &Req::new("/")), "b/r", "older wins over name");
    let t = table(vec![
        route("b", 10, vec![rule("r", vec![prefix("/")])]),
        route("a", 10, vec![rule("r", vec![prefix("/")])]),
    ]);
    assert_eq!(pick(&t, &Req::new("/")), "a/r", "same age: name order");
    let mut other_ns = route("a", 10, vec![rule("r", vec![prefix("/")])]);
    other_ns.namespace = "aaa".to_string();
    let t = table(vec![
        route("a", 10, vec![rule("r", vec![prefix("/")])]),
        other_ns,
    ]);
    match t.select(&Req::new("/").head()) {
        Selection::Matched(s) => assert_eq!(s.route.namespace, "aaa"),
        other => panic!("{other:?}"),
    }
    let t = table(vec![route(
        "a",
        0,
        vec![
            rule("first", vec![prefix("/")]),
            rule("second", vec![prefix("/")]),
        ],
    )]);
    assert_eq!(pick(&t, &Req::new("/")), "a/first");
}

#[test]
fn hostname_specificity_comes_first() {
    let mut exact_host = route("exact", 9, vec![rule("r", vec![prefix("/")])]);
    exact_host.hostnames = vec!["api.example.com".to_string()];
    let mut wildcard = route("wild", 0, vec![rule("r", vec![exact("/x")])]);
    wildcard.hostnames = vec!["*.example.com".to_string()];
    let mut longer_wild = route("longwild", 5, vec![rule("r", vec![prefix("/")])]);
    longer_wild.hostnames = vec!["*.api.example.com".to_string()];
    let any = route("any", 0, vec![rule("r", vec![exact("/x")])]);
    let t = table(vec![exact_host, wildcard, longer_wild, any]);
    // An exact hostname beats a wildcard even with a less specific path.
    assert_eq!(pick(&t, &Req::new("/x").host("api.example.com")), "exact/r");
    assert_eq!(
        pick(&t, &Req::new("/x").host("API.example.com:8080")),
        "exact/r"
    );
    assert_eq!(
        pick(&t, &Req::new("/x").host("v1.api.example.com")),
        "longwild/r"
    );
    assert_eq!(pick(&t, &Req::new("/x").host("a.b.example.com")), "wild/r");
    assert_eq!(pick(&t, &Req::new("/x").host("example.com")), "any/r");
    assert_eq!(pick(&t, &Req::new("/y").host("example.com")), "404");
    // A route with hostnames does not match other hosts.
    let mut only = route("only", 0, vec![rule("r", vec![prefix("/")])]);
    only.hostnames = vec!["a.example.com".to_string()];
    let t = table(vec![only]);
    assert_eq!(pick(&t, &Req::new("/").host("b.example.com")), "404");
}

#[test]
fn ports_restrict_routes() {
    let mut on_8080 = route("p8080", 0, vec![rule("r", vec![prefix("/")])]);
    on_8080.ports = vec![8080];
    let t = table(vec![on_8080]);
    assert_eq!(pick(&t, &Req::new("/").port(8080)), "p8080/r");
    assert_eq!(pick(&t, &Req::new("/").port(80)), "passthrough");
}

fn header(n: &str, v: &str) -> pb::HeaderMatch {
    pb::HeaderMatch {
        r#type: pb::header_match::Type::Exact as i32,
        name: n.to_string(),
        value: v.to_string(),
    }
}

fn query(n: &str, v: &str) -> pb::QueryMatch {
    pb::QueryMatch {
        r#type: pb::query_match::Type::Exact as i32,
        name: n.to_string(),
        value: v.to_string(),
    }
}

#[test]
fn header_query_method_and_regex_matches() {
    let mut m = prefix("/");
    m.headers = vec![
        header("X-Env", "canary"),
        pb::HeaderMatch {
            r#type: pb::header_match::Type::Regex as i32,
            name: "x-user".to_string(),
            value: "u[0-9]+".to_string(),
        },
    ];
    m.query_params = vec![
        query("debug", "on"),
        pb::QueryMatch {
            r#type: pb::query_match::Type::Regex as i32,
            name: "v".to_string(),
            value: "[12]".to_string(),
        },
    ];
    m.method = "PUT".to_string();
    let t = table(vec![route("a", 0, vec![rule("r", vec![m])])]);
    let ok = || {
        Req::new("/p?debug=on&v=2")
            .method(Method::PUT)
            .header("x-env", "canary")
            .header("x-user", "u42")
    };
    assert_eq!(pick(&t, &ok()), "a/r");
    assert_eq!(pick(&t, &ok().method(Method::GET)), "404", "method");
    let mut bad = ok();
    bad.headers
        .insert("x-user", HeaderValue::from_static("u42x"));
    assert_eq!(pick(&t, &bad), "404", "regex is a full match");
    let mut bad = ok();
    bad.query = Some("debug=ON&v=2".to_string());
    assert_eq!(pick(&t, &bad), "404", "query values are case-sensitive");
    let mut bad = ok();
    bad.query = Some("DEBUG=on&v=2".to_string());
    assert_eq!(pick(&t, &bad), "404", "query names are case-sensitive");
    let mut bad = ok();
    bad.headers.remove("x-env");
    assert_eq!(pick(&t, &bad), "404", "missing header");
    let mut first_wins = ok();
    first_wins.query = Some("debug=on&v=2&v=3".to_string());
    assert_eq!(pick(&t, &first_wins), "a/r", "first query value counts");
    let t = table(vec![route(
        "re",
        0,
        vec![rule(
            "r",
            vec![path(pb::path_match::Type::Regex, "/pkg\\.Svc/[A-Z].*")],
        )],
    )]);
    assert_eq!(pick(&t, &Req::new("/pkg.Svc/Get")), "re/r");
    assert_eq!(pick(&t, &Req::new("/x/pkg.Svc/Get")), "404");
}

#[test]
fn matched_prefix_is_reported() {
    let t = table(vec![route(
        "a",
        0,
        vec![
            rule("p", vec![prefix("/api/")]),
            rule("e", vec![exact("/exact")]),
            rule("all", vec![]),
        ],
    )]);
    let prefix_of = |p: &str| match t.select(&Req::new(p).head()) {
        Selection::Matched(s) => s.matched_prefix.map(str::to_string),
        other => panic!("{other:?}"),
    };
    assert_eq!(prefix_of("/api/x"), Some("/api/".to_string()));
    assert_eq!(prefix_of("/exact"), None);
    assert_eq!(prefix_of("/else"), Some("/".to_string()));
}

fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        hostname: format!("{name}.default.svc.cluster.local"),
        namespace: "default".to_string(),
        name: name.to_string(),
        port: 80,
        weight,
        filters: Default::default(),
    }
}

fn rule_with(backends: Vec<Backend>) -> Rule {
    Rule {
        name: String::new(),
        filters: Default::default(),
        backends,
        timeouts: Timeouts::default(),
        retry: None,
        fault: None,
        mirrors: vec![],
    }
}

#[test]
fn weighted_choice_follows_weights() {
    let r = rule_with(vec![backend("a", 90), backend("zero", 0), backend("b", 10)]);
    let mut rng = StdRng::seed_from_u64(7);
    let (mut a, mut b) = (0, 0);
    for _ in 0..10_000 {
        match pick_backend(&r, &mut rng).map(|b| b.name.as_str()) {
            Some("a") => a += 1,
            Some("b") => b += 1,
            other => panic!("picked {other:?}"),
        }
    }
    // 3 sigma of a binomial(10000, 0.1) is about 90.
    assert!((8_900..=9_100).contains(&a), "a picked {a} times");
    assert!((900..=1_100).contains(&b), "b picked {b} times");
    assert_eq!(
        pick_backend(&rule_with(vec![backend("z", 0)]), &mut rng),
        None
    );
    assert_eq!(pick_backend(&rule_with(vec![]), &mut rng), None);
    let max = rule_with(vec![backend("m", MAX_WEIGHT), backend("n", MAX_WEIGHT)]);
    assert!(pick_backend(&max, &mut rng).is_some());
}

#[test]
fn compile_errors_name_route_rule_and_problem() {
    let bad_regex = rule("bad-regex", vec![path(pb::path_match::Type::Regex, "(")]);
    let mut heavy = rule("heavy", vec![]);
    heavy.backends = vec![pb::Backend {
        name: "b".to_string(),
        namespace: "default".to_string(),
        port: 80,
        weight: MAX_WEIGHT + 1,
        ..Default::default()
    }];
    let mut both = rule("both", vec![]);
    both.filters = vec![
        pb::Filter {
            kind: Some(pb::filter::Kind::RequestRedirect(pb::Redirect::default())),
        },
        pb::Filter {
            kind: Some(pb::filter::Kind::UrlRewrite(pb::Rewrite::default())),
        },
    ];
    let mut prefix_on_exact = rule("prefix-on-exact", vec![exact("/x")]);
    prefix_on_exact.filters = vec![pb::Filter {
        kind: Some(pb::filter::Kind::UrlRewrite(pb::Rewrite {
            hostname: String::new(),
            path: Some(pb::PathModifier {
                r#type: pb::path_modifier::Type::Prefix as i32,
                value: "/y".to_string(),
            }),
        })),
    }];
    let mut bad_header = rule("bad-header", vec![]);
    bad_header.filters = vec![pb::Filter {
        kind: Some(pb::filter::Kind::RequestHeaderModifier(
            pb::HeaderModifier {
                set: vec![pb::Header {
                    name: "bad name".to_string(),
                    value: "v".to_string(),
                }],
                ..Default::default()
            },
        )),
    }];
    let good = rule("good", vec![prefix("/")]);
    let mut bad_host = route("bad-host", 0, vec![rule("r", vec![])]);
    bad_host.hostnames = vec!["no spaces.example".to_string()];
    let mut bad_port = route("bad-port", 0, vec![rule("r", vec![])]);
    bad_port.ports = vec![70_000];
    let routes = vec![
        route(
            "mixed",
            0,
            vec![bad_regex, heavy, both, prefix_on_exact, bad_header, good],
        ),
        bad_host,
        bad_port,
    ];
    let (t, errors) = compile_routes("default/svc", &routes);
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 7, "{messages:#?}");
    let expect = [
        ("bad-regex", "invalid regular expression"),
        ("heavy", "weight 1000001"),
        ("both", "both redirect and rewrite"),
        ("prefix-on-exact", "prefix path modifier"),
        ("bad-header", "invalid header name"),
        ("bad-host", "invalid hostname"),
        ("bad-port", "70000"),
    ];
    for (what, msg) in expect {
        assert!(
            messages
                .iter()
                .any(|m| m.contains(what) && m.contains(msg) && m.contains("default/svc")),
            "no error about {what} ({msg}) in {messages:#?}"
        );
    }
    assert!(matches!(
        &errors[0],
        ConfigError::Route { route, rule: Some(rule), reason: RouteError::Regex { .. }, .. }
            if route == "default/mixed" && rule == "bad-regex"
    ));
    // The valid rule is kept, the invalid routes are dropped.
    assert_eq!(t.len(), 1);
    assert_eq!(pick(&t, &Req::new("/anything")), "mixed/good");
}

#[test]
fn rule_settings_compile() {
    let mut r = rule("r", vec![]);
    r.timeouts = Some(pb::Timeouts {
        request: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        backend_request: Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
    });
    r.retry = Some(pb::Retry {
        attempts: 2,
        codes: vec![],
        backoff: None,
    });
    r.fault = Some(pb::Fault {
        abort_status: 503,
        abort_percent: 5.0,
        ..Default::default()
    });
    let t = table(vec![route("a", 0, vec![r])]);
    let Selection::Matched(s) = t.select(&Req::new("/").head()) else {
        panic!("no match")
    };
    assert_eq!(s.rule.timeouts.request, Some(Duration::from_secs(5)));
    assert_eq!(
        s.rule.timeouts.backend_request,
        Some(Duration::from_millis(500))
    );
    let retry = s.rule.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.codes, vec![502, 503, 504]);
    assert_eq!(retry.backoff, Duration::from_millis(25));
    let fault = s.rule.fault.as_ref().expect("fault");
    assert_eq!(
        fault.abort.map(|a| (a.http_status, a.grpc_status)),
        Some((503, 14))
    );
    let mut neg = rule("neg", vec![]);
    neg.timeouts = Some(pb::Timeouts {
        request: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        backend_request: None,
    });
    let (_, errors) = compile_routes("default/svc", &[route("a", 0, vec![neg])]);
    assert!(errors[0].to_string().contains("timeouts.request: negative"));
}
