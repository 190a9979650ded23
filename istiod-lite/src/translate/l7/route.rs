//! HTTPRoute and GRPCRoute with Service parents to the waypoint's `Route`s.
//!
//! Only producer routes are served: a route in the Service's own namespace
//! applies to every caller. A route naming a Service of another namespace (a
//! consumer route, which applies only to callers in the route's namespace)
//! is not supported yet and says so in its status. Parents of kind Gateway
//! belong to ingress gateways, not to the mesh, and are ignored here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::ambit::waypoint::v1 as wp;
use wp::{filter, header_match, path_match, path_modifier, query_match, route};

use super::view::{
    BackendRefSpec, FilterSpec, GrpcMethodSpec, HeaderModifierSpec, MatchSpec, PathModifierSpec,
    RouteSpec, RuleSpec, ValueMatchSpec,
};
use super::{Notes, annotations, duration};
use crate::model::{Kind, NamespacedName, ObjectKey, Store};
use crate::translate::MeshConfig;

/// What route translation reads besides the route.
pub struct Context<'a> {
    pub store: &'a Store,
    pub mesh: &'a MeshConfig,
    /// Services bound to a waypoint.
    pub bound: &'a BTreeSet<NamespacedName>,
}

/// Attaches one route to the bound Services it names, in `routes` (by
/// Service), and notes its conditions.
pub fn attach(
    kind: route::Kind,
    meta: &ObjectMeta,
    spec: serde_json::Value,
    cx: &Context<'_>,
    routes: &mut BTreeMap<NamespacedName, Vec<wp::Route>>,
    notes: &mut Notes,
) {
    let key = NamespacedName::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let object = ObjectKey {
        kind: match kind {
            route::Kind::Http => Kind::HTTPRoute,
            route::Kind::Grpc => Kind::GRPCRoute,
        },
        name: key.clone(),
    };
    let spec: RouteSpec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(err) => {
            notes.add(
                &object,
                "Accepted",
                false,
                "UnsupportedValue",
                format!("spec could not be read: {err}"),
            );
            return;
        }
    };
    let service_parents: Vec<_> = spec
        .parent_refs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind.as_deref() == Some("Service"))
        .collect();
    if service_parents.is_empty() {
        return;
    }

    // Ports per accepted Service; None = every port.
    let mut accepted: BTreeMap<NamespacedName, Option<BTreeSet<u32>>> = BTreeMap::new();
    for (i, parent) in service_parents {
        let at = format!("spec.parentRefs[{i}]");
        if !matches!(parent.group.as_deref(), None | Some("") | Some("core")) {
            notes.add(&object, "Accepted", false, "NoMatchingParent", format!(
                "{at} has kind Service with group \"{}\"; a mesh route's parent Service has the core group (\"\")",
                parent.group.as_deref().unwrap_or_default()
            ));
            continue;
        }
        let svc_key = NamespacedName::new(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone()),
            &parent.name,
        );
        if svc_key.namespace != key.namespace {
            notes.add(&object, "Accepted", false, "ConsumerRouteNotSupported", format!(
                "{at} names Service {svc_key} in another namespace: consumer routes are not supported yet; put the route in namespace {} (a producer route, for every caller)",
                svc_key.namespace
            ));
            continue;
        }
        let Some(svc) = cx.store.services.get(&svc_key) else {
            notes.add(
                &object,
                "Accepted",
                false,
                "NoMatchingParent",
                format!("{at} names Service {svc_key}, which does not exist"),
            );
            continue;
        };
        if !cx.bound.contains(&svc_key) {
            notes.add(&object, "Accepted", false, "NoWaypoint", format!(
                "{at} names Service {svc_key}, which is not bound to a waypoint; label the Service or its namespace istio.io/use-waypoint=<waypoint name> so a waypoint applies this route"
            ));
            continue;
        }
        let port = match parent.port {
            None => None,
            Some(port) => {
                let listed = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .is_some_and(|ports| ports.iter().any(|p| p.port == port));
                if !listed {
                    notes.add(
                        &object,
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        format!("{at} names port {port}, which Service {svc_key} does not have"),
                    );
                    continue;
                }
                Some(port as u32)
            }
        };
        match (accepted.get_mut(&svc_key), port) {
            (None, None) => {
                accepted.insert(svc_key, None);
            }
            (None, Some(port)) => {
                accepted.insert(svc_key, Some(BTreeSet::from([port])));
            }
            // Another parentRef to the same Service widens the ports.
            (Some(ports), None) => *ports = None,
            (Some(Some(ports)), Some(port)) => {
                ports.insert(port);
            }
            (Some(None), Some(_)) => {}
        }
    }

    let annotations = meta.annotations.as_ref();
    let retry = annotations::retry(annotations).unwrap_or_else(|invalid| {
        notes.add(
            &object,
            "PartiallyInvalid",
            true,
            "InvalidAnnotation",
            invalid.message("retry policy"),
        );
        None
    });
    let fault = annotations::fault(annotations).unwrap_or_else(|invalid| {
        notes.add(
            &object,
            "PartiallyInvalid",
            true,
            "InvalidAnnotation",
            invalid.message("fault injection"),
        );
        None
    });
    let rules: Vec<wp::Rule> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut out = translate_rule(kind, i, rule, &key.namespace, cx, &object, notes);
            out.retry = retry.clone();
            out.fault = fault;
            out
        })
        .collect();

    let created = meta
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    for (svc_key, ports) in accepted {
        routes.entry(svc_key).or_default().push(wp::Route {
            kind: kind as i32,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            created,
            hostnames: spec.hostnames.clone(),
            rules: rules.clone(),
            ports: ports.into_iter().flatten().collect(),
        });
    }
    if !notes.has_false(&object, "Accepted") {
        notes.add(
            &object,
            "Accepted",
            true,
            "Accepted",
            "attached to every parent Service it names".to_string(),
        );
    }
    if !notes.has_false(&object, "ResolvedRefs") {
        notes.add(
            &object,
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backendRef resolves to a Service port".to_string(),
        );
    }
}

fn translate_rule(
    kind: route::Kind,
    index: usize,
    rule: &RuleSpec,
    namespace: &str,
    cx: &Context<'_>,
    object: &ObjectKey,
    notes: &mut Notes,
) -> wp::Rule {
    let at = format!("spec.rules[{index}]");
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .filter_map(|(j, m)| {
            let converted = match kind {
                route::Kind::Http => http_match(m),
                route::Kind::Grpc => grpc_match(m),
            };
            converted
                .map_err(|problem| {
                    notes.add(
                        object,
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        format!("{at}.matches[{j}]: {problem}; this match is left out"),
                    );
                })
                .ok()
        })
        .collect();
    let rule_filters = filters(
        &rule.filters,
        &format!("{at}.filters"),
        namespace,
        cx,
        object,
        notes,
    );
    let backends = rule
        .backend_refs
        .iter()
        .enumerate()
        .filter_map(|(j, b)| {
            let path = format!("{at}.backendRefs[{j}]");
            match backend(b, namespace, cx) {
                Ok(mut backend) => {
                    backend.weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
                    backend.filters =
                        filters(&b.filters, &format!("{path}.filters"), namespace, cx, object, notes);
                    Some(backend)
                }
                Err((reason, problem)) => {
                    notes.add(object, "ResolvedRefs", false, reason, format!(
                        "{path}: {problem}; this backend is left out (a rule left without backends answers 500)"
                    ));
                    None
                }
            }
        })
        .collect();
    let timeouts =
        rule.timeouts.as_ref().and_then(|t| {
            let mut parse =
                |field: &str, raw: &Option<String>| {
                    let raw = raw.as_deref()?;
                    match duration::parse(raw) {
                        // 0s turns the timeout off.
                        Ok(d) if d.seconds == 0 && d.nanos == 0 => None,
                        Ok(d) => Some(d),
                        Err(problem) => {
                            notes.add(object, "PartiallyInvalid", true, "UnsupportedValue", format!(
                        "{at}.timeouts.{field}: {problem}; no {field} timeout is applied"
                    ));
                            None
                        }
                    }
                };
            let request = parse("request", &t.request);
            let backend_request = parse("backendRequest", &t.backend_request);
            (request.is_some() || backend_request.is_some()).then_some(wp::Timeouts {
                request,
                backend_request,
            })
        });
    wp::Rule {
        name: rule.name.clone().unwrap_or_default(),
        matches,
        filters: rule_filters,
        backends,
        timeouts,
        retry: None,
        fault: None,
    }
}

fn http_match(m: &MatchSpec) -> Result<wp::Match, String> {
    let path = m.path.as_ref();
    let type_ = match path
        .and_then(|p| p.type_.as_deref())
        .unwrap_or("PathPrefix")
    {
        "PathPrefix" => path_match::Type::Prefix,
        "Exact" => path_match::Type::Exact,
        "RegularExpression" => path_match::Type::Regex,
        other => {
            return Err(format!(
                "path match type {other} is not one of PathPrefix, Exact, RegularExpression"
            ));
        }
    };
    let method = match &m.method {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.to_ascii_uppercase(),
        Some(other) => return Err(format!("method {other} is not a string")),
    };
    Ok(wp::Match {
        path: Some(wp::PathMatch {
            r#type: type_ as i32,
            value: path
                .and_then(|p| p.value.clone())
                .unwrap_or_else(|| "/".to_string()),
        }),
        headers: header_matches(&m.headers)?,
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                Ok(wp::QueryMatch {
                    r#type: match value_match_type(q)? {
                        header_match::Type::Exact => query_match::Type::Exact,
                        header_match::Type::Regex => query_match::Type::Regex,
                    } as i32,
                    name: q.name.clone(),
                    value: q.value.clone(),
                })
            })
            .collect::<Result<_, String>>()?,
        method,
    })
}

fn value_match_type(m: &ValueMatchSpec) -> Result<header_match::Type, String> {
    match m.type_.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(header_match::Type::Exact),
        "RegularExpression" => Ok(header_match::Type::Regex),
        other => Err(format!(
            "match type {other} for {} is not Exact or RegularExpression",
            m.name
        )),
    }
}

fn header_matches(headers: &[ValueMatchSpec]) -> Result<Vec<wp::HeaderMatch>, String> {
    headers
        .iter()
        .map(|h| {
            Ok(wp::HeaderMatch {
                r#type: value_match_type(h)? as i32,
                name: h.name.clone(),
                value: h.value.clone(),
            })
        })
        .collect()
}

/// A gRPC method match as the request path it selects.
fn grpc_match(m: &MatchSpec) -> Result<wp::Match, String> {
    let method: Option<GrpcMethodSpec> = m
        .method
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("method could not be read: {e}"))?;
    let path = match method {
        None => None,
        Some(method) => grpc_path(&method)?,
    };
    Ok(wp::Match {
        path,
        headers: header_matches(&m.headers)?,
        query_params: Vec::new(),
        method: String::new(),
    })
}

fn grpc_path(m: &GrpcMethodSpec) -> Result<Option<wp::PathMatch>, String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let (type_, value) = match (m.type_.as_deref().unwrap_or("Exact"), service, method) {
        (_, None, None) => return Ok(None),
        ("Exact", Some(s), Some(m)) => (path_match::Type::Exact, format!("/{s}/{m}")),
        ("Exact", Some(s), None) => (path_match::Type::Prefix, format!("/{s}/")),
        ("Exact", None, Some(m)) => (
            path_match::Type::Regex,
            format!("^/[^/]+/{}$", regex_escape(m)),
        ),
        ("RegularExpression", s, m) => (
            path_match::Type::Regex,
            format!("^/{}/{}$", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        ),
        (other, _, _) => {
            return Err(format!(
                "method match type {other} is not Exact or RegularExpression"
            ));
        }
    };
    Ok(Some(wp::PathMatch {
        r#type: type_ as i32,
        value,
    }))
}

/// Escapes the characters a regular expression treats specially.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn filters(
    specs: &[FilterSpec],
    at: &str,
    namespace: &str,
    cx: &Context<'_>,
    object: &ObjectKey,
    notes: &mut Notes,
) -> Vec<wp::Filter> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match filter(f, namespace, cx) {
            Ok(kind) => Some(wp::Filter { kind: Some(kind) }),
            Err(FilterError::Unsupported(problem)) => {
                notes.add(
                    object,
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    format!("{at}[{i}]: {problem}; this filter is not applied"),
                );
                None
            }
            Err(FilterError::Backend(reason, problem)) => {
                notes.add(
                    object,
                    "ResolvedRefs",
                    false,
                    reason,
                    format!(
                        "{at}[{i}].requestMirror.backendRef: {problem}; requests are not mirrored"
                    ),
                );
                None
            }
        })
        .collect()
}

enum FilterError {
    Unsupported(String),
    Backend(&'static str, String),
}

fn filter(f: &FilterSpec, namespace: &str, cx: &Context<'_>) -> Result<filter::Kind, FilterError> {
    let missing =
        |field: &str| FilterError::Unsupported(format!("type {} has no {field}", f.type_));
    match f.type_.as_str() {
        "RequestHeaderModifier" => f
            .request_header_modifier
            .as_ref()
            .map(|m| filter::Kind::RequestHeaderModifier(header_modifier(m)))
            .ok_or_else(|| missing("requestHeaderModifier")),
        "ResponseHeaderModifier" => f
            .response_header_modifier
            .as_ref()
            .map(|m| filter::Kind::ResponseHeaderModifier(header_modifier(m)))
            .ok_or_else(|| missing("responseHeaderModifier")),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            Ok(filter::Kind::RequestRedirect(wp::Redirect {
                scheme: r.scheme.clone().unwrap_or_default().to_ascii_lowercase(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r
                    .path
                    .as_ref()
                    .map(path_modifier)
                    .transpose()
                    .map_err(FilterError::Unsupported)?,
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                status_code: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(302),
            }))
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Ok(filter::Kind::UrlRewrite(wp::Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r
                    .path
                    .as_ref()
                    .map(path_modifier)
                    .transpose()
                    .map_err(FilterError::Unsupported)?,
            }))
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let backend = backend(&m.backend_ref, namespace, cx)
                .map_err(|(reason, problem)| FilterError::Backend(reason, problem))?;
            let percent = match (&m.fraction, m.percent) {
                (Some(fraction), _) => {
                    let denominator = fraction.denominator.unwrap_or(100);
                    if denominator <= 0 {
                        return Err(FilterError::Unsupported(format!(
                            "requestMirror.fraction has denominator {denominator}"
                        )));
                    }
                    f64::from(fraction.numerator) * 100.0 / f64::from(denominator)
                }
                (None, Some(percent)) => f64::from(percent),
                (None, None) => 100.0,
            };
            Ok(filter::Kind::RequestMirror(wp::Mirror {
                backend: Some(backend),
                percent: percent.clamp(0.0, 100.0),
            }))
        }
        other => Err(FilterError::Unsupported(format!(
            "filter type {other} is not supported by the waypoint"
        ))),
    }
}

fn header_modifier(m: &HeaderModifierSpec) -> wp::HeaderModifier {
    let headers = |list: &[super::view::NameValue]| {
        list.iter()
            .map(|h| wp::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    wp::HeaderModifier {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &PathModifierSpec) -> Result<wp::PathModifier, String> {
    let (type_, value) = match p.type_.as_str() {
        "ReplaceFullPath" => (path_modifier::Type::Full, p.replace_full_path.clone()),
        "ReplacePrefixMatch" => (path_modifier::Type::Prefix, p.replace_prefix_match.clone()),
        other => {
            return Err(format!(
                "path modifier type {other} is not ReplaceFullPath or ReplacePrefixMatch"
            ));
        }
    };
    Ok(wp::PathModifier {
        r#type: type_ as i32,
        value: value.unwrap_or_default(),
    })
}

/// A backendRef as a Service port, or the ResolvedRefs reason and problem.
fn backend(
    b: &BackendRefSpec,
    namespace: &str,
    cx: &Context<'_>,
) -> Result<wp::Backend, (&'static str, String)> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    let group = b.group.as_deref().unwrap_or("");
    if kind != "Service" || !(group.is_empty() || group == "core") {
        return Err((
            "InvalidKind",
            format!(
                "kind {kind} (group \"{group}\") is not a Service; only Service backends are supported"
            ),
        ));
    }
    let key = NamespacedName::new(
        b.namespace.clone().unwrap_or_else(|| namespace.to_string()),
        &b.name,
    );
    if key.namespace != namespace {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {key} is in another namespace; cross-namespace backends need a ReferenceGrant, which is not supported yet"
            ),
        ));
    }
    let Some(svc) = cx.store.services.get(&key) else {
        return Err(("BackendNotFound", format!("Service {key} does not exist")));
    };
    let Some(port) = b.port else {
        return Err((
            "BackendNotFound",
            format!("the backendRef to Service {key} has no port"),
        ));
    };
    let listed = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| ports.iter().any(|p| p.port == port));
    if !listed {
        return Err((
            "BackendNotFound",
            format!("Service {key} has no port {port}"),
        ));
    }
    Ok(wp::Backend {
        hostname: format!(
            "{}.{}.svc.{}",
            key.name, key.namespace, cx.mesh.cluster_domain
        ),
        namespace: key.namespace,
        name: key.name,
        port: port as u32,
        weight: 1,
        filters: Vec::new(),
    })
}
