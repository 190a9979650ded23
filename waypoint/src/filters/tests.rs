use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::*;

fn hv(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

fn hn(s: &'static str) -> HeaderName {
    HeaderName::from_static(s)
}

#[test]
fn header_modifier_sets_adds_and_removes() {
    let m = HeaderModifier {
        set: vec![(hn("x-set"), hv("new"))],
        add: vec![(hn("x-add"), hv("two")), (hn("x-fresh"), hv("1"))],
        remove: vec![hn("x-remove")],
    };
    let mut h = HeaderMap::new();
    h.append("x-set", hv("old1"));
    h.append("x-set", hv("old2"));
    h.append("x-add", hv("one"));
    h.append("x-remove", hv("gone"));
    h.append("x-keep", hv("kept"));
    modify_headers(&m, &mut h);
    let all = |n: &str| {
        h.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-set"), ["new"]);
    assert_eq!(all("x-add"), ["one", "two"]);
    assert_eq!(all("x-fresh"), ["1"]);
    assert!(all("x-remove").is_empty());
    assert_eq!(all("x-keep"), ["kept"]);
}

fn head<'a>(
    path: &'a str,
    query: Option<&'a str>,
    host: &'a str,
    port: u16,
    h: &'a HeaderMap,
) -> RequestHead<'a> {
    static GET: Method = Method::GET;
    RequestHead {
        method: &GET,
        path,
        query,
        headers: h,
        host,
        port,
    }
}

fn redirect_to(
    scheme: Option<&str>,
    host: Option<&str>,
    path: Option<PathModifier>,
    port: Option<u16>,
    status: u16,
) -> Redirect {
    Redirect {
        scheme: scheme.map(str::to_string),
        hostname: host.map(str::to_string),
        path,
        port,
        status: StatusCode::from_u16(status).unwrap(),
    }
}

#[test]
fn redirect_location_forms() {
    let h = HeaderMap::new();
    let req = head("/foo/x", Some("a=1&b=2"), "svc.ns:8080", 8080, &h);
    let cases: Vec<(Redirect, Option<&str>, u16, &str)> = vec![
        // Nothing changes but the status: same scheme, host, port, path, query.
        (
            redirect_to(None, None, None, None, 302),
            None,
            302,
            "http://svc.ns:8080/foo/x?a=1&b=2",
        ),
        // A new scheme takes its well-known port, left out of Location.
        (
            redirect_to(Some("https"), None, None, None, 301),
            None,
            301,
            "https://svc.ns/foo/x?a=1&b=2",
        ),
        (
            redirect_to(Some("https"), Some("new.example"), None, Some(8443), 302),
            None,
            302,
            "https://new.example:8443/foo/x?a=1&b=2",
        ),
        (
            redirect_to(None, None, None, Some(80), 302),
            None,
            302,
            "http://svc.ns/foo/x?a=1&b=2",
        ),
        (
            redirect_to(
                None,
                None,
                Some(PathModifier::Full("/other".into())),
                None,
                302,
            ),
            None,
            302,
            "http://svc.ns:8080/other?a=1&b=2",
        ),
        (
            redirect_to(
                None,
                None,
                Some(PathModifier::Prefix("/bar".into())),
                None,
                302,
            ),
            Some("/foo"),
            302,
            "http://svc.ns:8080/bar/x?a=1&b=2",
        ),
        (
            redirect_to(
                None,
                None,
                Some(PathModifier::Prefix("/".into())),
                None,
                302,
            ),
            Some("/foo/"),
            302,
            "http://svc.ns:8080/x?a=1&b=2",
        ),
    ];
    for (r, prefix, status, want) in cases {
        let (s, loc) = redirect(&r, &req, "http", prefix);
        assert_eq!((s.as_u16(), loc.as_str()), (status, want), "{r:?}");
    }
    let v6 = head("/", None, "[fd00::1]:80", 80, &h);
    let (_, loc) = redirect(&redirect_to(None, None, None, None, 302), &v6, "http", None);
    assert_eq!(loc, "http://[fd00::1]/");
}

#[test]
fn prefix_replacement() {
    let cases = [
        ("/foo/x", "/foo", "/bar", "/bar/x"),
        ("/foo", "/foo", "/bar", "/bar"),
        ("/foo/", "/foo", "/bar", "/bar/"),
        ("/foo/x", "/foo", "/", "/x"),
        ("/foo", "/foo", "/", "/"),
        ("/foo/x/y", "/foo/", "/bar/", "/bar/x/y"),
        ("/x", "/", "/bar", "/bar/x"),
        ("/", "/", "/bar", "/bar/"),
    ];
    for (path, prefix, repl, want) in cases {
        assert_eq!(
            replace_prefix(path, prefix, repl),
            want,
            "{path} {prefix} -> {repl}"
        );
    }
}

#[test]
fn rewrite_keeps_query_and_changes_host() {
    let r = Rewrite {
        hostname: Some("backend.example".into()),
        path: Some(PathModifier::Prefix("/v2".into())),
    };
    assert_eq!(
        rewrite(&r, "/v1/items?id=7", "svc:80", Some("/v1")),
        ("/v2/items?id=7".to_string(), "backend.example".to_string())
    );
    let full = Rewrite {
        hostname: None,
        path: Some(PathModifier::Full("/fixed".into())),
    };
    assert_eq!(
        rewrite(&full, "/a/b?x", "svc:80", None),
        ("/fixed?x".to_string(), "svc:80".to_string())
    );
    let none = Rewrite {
        hostname: None,
        path: None,
    };
    assert_eq!(
        rewrite(&none, "/a", "h", None),
        ("/a".to_string(), "h".to_string())
    );
}

#[test]
fn host_port_is_stripped() {
    for (h, want) in [
        ("a.b", "a.b"),
        ("a.b:80", "a.b"),
        ("10.0.0.1:8080", "10.0.0.1"),
        ("[fd00::1]:80", "[fd00::1]"),
        ("[fd00::1]", "[fd00::1]"),
        ("fd00::1", "fd00::1"),
    ] {
        assert_eq!(host_without_port(h), want);
    }
}
