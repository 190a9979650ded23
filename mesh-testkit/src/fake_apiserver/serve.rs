//! The HTTP side of the fake API server: paths, list pages, watch streams,
//! status patches, and the API server's error shapes.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{ApiState, Body, OpenWatch, RecordedPatch, event_line, gone_status};

struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/{name}/status` is a Namespace's own status.
        ["namespaces", _, "status"] => (None, rest.to_vec()),
        ["namespaces", namespace, plural, more @ ..] => {
            (Some(namespace.to_string()), [&[*plural][..], more].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, status) = match rest.as_slice() {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return None,
    };
    Some(Target {
        collection: format!("{prefix}/{plural}"),
        namespace,
        name,
        status,
    })
}

pub(super) async fn handle(request: Request<Incoming>, state: &Mutex<ApiState>) -> Response<Body> {
    let Some(target) = parse_path(request.uri().path()) else {
        return status_response(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let method = request.method().clone();
    if method == Method::PATCH {
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let path = request.uri().path().to_string();
        let Ok(body) = request.into_body().collect().await else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
        };
        let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.patches.push(RecordedPatch {
            path,
            content_type: content_type.clone(),
            body: body.clone(),
        });
        return patch(&mut state, &target, &content_type, &body);
    }
    if method != Method::GET {
        return status_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "");
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if target.name.is_none() && !watching {
        *state
            .list_calls
            .entry(target.collection.clone())
            .or_default() += 1;
    }
    let Some(collection) = state.collections.get(&target.collection) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource {}",
                target.collection
            ),
        );
    };
    if target.namespace.is_some() && !collection.resource.namespaced {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "not a namespaced resource",
        );
    }
    match (&target.name, watching) {
        (Some(name), _) => {
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            match collection.objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                ),
            }
        }
        (None, false) => {
            let page = match Page::from_query(&query, state.revision) {
                Ok(page) => page,
                Err(message) => {
                    return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message);
                }
            };
            if page.revision < state.history_floor {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "the continue token is too old; restart the list",
                );
            }
            let mut items: Vec<(&(String, String), &Value)> = collection
                .objects
                .iter()
                .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|want| want == ns))
                .filter(|(key, _)| page.after.as_ref().is_none_or(|after| *key > after))
                .take(page.limit.saturating_add(1))
                .collect();
            let mut metadata = json!({"resourceVersion": page.revision.to_string()});
            if items.len() > page.limit {
                items.truncate(page.limit);
                let ((ns, name), _) = items[items.len() - 1];
                metadata["continue"] = format!("{}:{ns}/{name}", page.revision).into();
            }
            let items: Vec<&Value> = items.into_iter().map(|(_, object)| object).collect();
            let list = json!({
                "apiVersion": collection.resource.api_version,
                "kind": format!("{}List", collection.resource.kind),
                "metadata": metadata,
                "items": items,
            });
            json_response(StatusCode::OK, &list)
        }
        (None, true) => {
            let version = query.get("resourceVersion").cloned().unwrap_or_default();
            watch(&mut state, target, version)
        }
    }
}

/// One page of a list: `limit` and `continue` (our token: the revision of
/// the first page, then the last key served).
struct Page {
    limit: usize,
    revision: u64,
    after: Option<(String, String)>,
}

impl Page {
    fn from_query(query: &HashMap<String, String>, revision: u64) -> Result<Page, String> {
        let limit = match query.get("limit") {
            Some(limit) => limit
                .parse::<usize>()
                .map_err(|_| format!("bad limit {limit:?}"))?,
            None => 0,
        };
        let limit = if limit == 0 { usize::MAX - 1 } else { limit };
        let Some(token) = query.get("continue").filter(|t| !t.is_empty()) else {
            return Ok(Page {
                limit,
                revision,
                after: None,
            });
        };
        let bad = || format!("bad continue token {token:?}");
        let (revision, key) = token.split_once(':').ok_or_else(bad)?;
        let (namespace, name) = key.split_once('/').ok_or_else(bad)?;
        Ok(Page {
            limit,
            revision: revision.parse().map_err(|_| bad())?,
            after: Some((namespace.to_string(), name.to_string())),
        })
    }
}

fn watch(state: &mut ApiState, target: Target, version: String) -> Response<Body> {
    state
        .watch_versions
        .entry(target.collection.clone())
        .or_default()
        .push(version.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let from = match version.as_str() {
        "" | "0" => Some(state.revision),
        v => v.parse::<u64>().ok().filter(|v| *v >= state.history_floor),
    };
    let body = StreamBody::new(UnboundedReceiverStream::new(rx)).boxed();
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap();
    let Some(from) = from else {
        // The API server's answer to a too-old version: 200, one ERROR event, end.
        let _ = tx.send(Ok(Frame::data(event_line("ERROR", &gone_status()))));
        return response;
    };
    let collection = &state.collections[&target.collection];
    for entry in collection.history.iter().filter(|e| e.revision > from) {
        if target
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == entry.namespace)
        {
            let _ = tx.send(Ok(Frame::data(entry.line.clone())));
        }
    }
    state.watches.push(OpenWatch {
        collection: target.collection,
        namespace: target.namespace,
        tx,
    });
    response
}

fn patch(
    state: &mut ApiState,
    target: &Target,
    content_type: &str,
    body: &Value,
) -> Response<Body> {
    let server_side_apply = content_type.starts_with("application/apply-patch+yaml");
    if content_type != "application/merge-patch+json" && !server_side_apply {
        return status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            content_type,
        );
    }
    let (Some(collection), Some(name)) = (state.collections.get(&target.collection), &target.name)
    else {
        return status_response(StatusCode::NOT_FOUND, "NotFound", "no such resource");
    };
    let key = (target.namespace.clone().unwrap_or_default(), name.clone());
    let existing = collection.objects.get(&key).cloned();
    // Server-side apply creates a missing object. Field ownership is not
    // modelled: the applied configuration is merged over what is stored.
    let existing = match existing {
        None if server_side_apply && !target.status => {
            let mut created = json!({"metadata": {
                "name": name,
                "uid": format!("uid-{}-{}", key.0, key.1),
            }});
            if let Some(namespace) = &target.namespace {
                created["metadata"]["namespace"] = json!(namespace);
            }
            Some(created)
        }
        other => other,
    };
    let Some(mut object) = existing else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{name} not found"),
        );
    };
    let body = if target.status {
        // The status subresource ignores everything but status.
        json!({"status": body.get("status").cloned().unwrap_or(Value::Null)})
    } else {
        body.clone()
    };
    merge_patch(&mut object, &body);
    state.apply(object.clone());
    let stored = state.collections[&target.collection].objects[&key].clone();
    json_response(StatusCode::OK, &stored)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap()))
        .map_err(|never| match never {})
        .boxed();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_namespaces_objects_and_status() {
        let t = parse_path("/api/v1/pods").unwrap();
        assert_eq!(
            (t.collection.as_str(), t.namespace, t.name),
            ("/api/v1/pods", None, None)
        );
        let t = parse_path("/api/v1/namespaces/ns1/pods/p/status").unwrap();
        assert_eq!(t.collection, "/api/v1/pods");
        assert_eq!(
            (t.namespace.as_deref(), t.name.as_deref(), t.status),
            (Some("ns1"), Some("p"), true)
        );
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!(
            (t.collection.as_str(), t.namespace),
            ("/api/v1/namespaces", None)
        );
        let t = parse_path("/api/v1/namespaces/ns1").unwrap();
        assert_eq!(
            (t.collection.as_str(), t.name.as_deref()),
            ("/api/v1/namespaces", Some("ns1"))
        );
        let t =
            parse_path("/apis/security.istio.io/v1/namespaces/a/authorizationpolicies").unwrap();
        assert_eq!(
            t.collection,
            "/apis/security.istio.io/v1/authorizationpolicies"
        );
        assert_eq!(t.namespace.as_deref(), Some("a"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            url_pairs("continue=7%3Ans1%2Fp-9&limit=500&x=a+b"),
            [
                ("continue".to_string(), "7:ns1/p-9".to_string()),
                ("limit".to_string(), "500".to_string()),
                ("x".to_string(), "a b".to_string()),
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn merge_patch_replaces_lists_and_removes_nulls() {
        let mut object = json!({"a": 1, "status": {"conditions": [1, 2], "x": 1}});
        merge_patch(
            &mut object,
            &json!({"a": null, "status": {"conditions": [3]}}),
        );
        assert_eq!(object, json!({"status": {"conditions": [3], "x": 1}}));
    }
}
