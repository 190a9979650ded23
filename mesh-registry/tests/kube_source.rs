//! The Kubernetes source against an in-process API server speaking the real
//! list/watch protocol, through kube-rs's own client.

use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use mesh_core::readiness::Readiness;
use mesh_registry::Registry;
use mesh_registry::kube::metrics::FailureLabels;
use mesh_registry::kube::resources::api_resource;
use mesh_registry::kube::{
    BackoffPolicy, KubeSource, KubeSourceError, KubeSourceOptions, client_from_config,
};
use mesh_registry::model::{Kind, NamespacedName, Object, ObjectCondition, ObjectKey};
use mesh_testkit::eventually::eventually;
use mesh_testkit::fake_apiserver::{FakeApiServer, ResourceType};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(10);

/// Quick retries, so a 404 or a 410 is retried within milliseconds.
const FAST_BACKOFF: BackoffPolicy = BackoffPolicy::Exponential {
    initial: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

fn resource_type(kind: Kind) -> ResourceType {
    let resource = api_resource(kind);
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    ResourceType {
        prefix,
        plural: resource.plural,
        api_version: resource.api_version,
        kind: resource.kind,
        namespaced: kind.namespaced(),
    }
}

fn collection(kind: Kind) -> String {
    resource_type(kind).collection()
}

async fn server_with(installed: &[Kind]) -> FakeApiServer {
    FakeApiServer::start(installed.iter().map(|&kind| resource_type(kind))).await
}

fn watch(server: &FakeApiServer) -> (Registry, KubeSource) {
    watch_with(server, None)
}

fn watch_with(server: &FakeApiServer, readiness: Option<Readiness>) -> (Registry, KubeSource) {
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = client_from_config(config).unwrap();
    let registry = Registry::new();
    let source = KubeSource::start(
        client,
        registry.clone(),
        KubeSourceOptions {
            backoff: FAST_BACKOFF,
            readiness,
            ..KubeSourceOptions::default()
        },
    );
    (registry, source)
}

async fn synced(source: &KubeSource) {
    tokio::time::timeout(PATIENCE, source.wait_synced())
        .await
        .unwrap_or_else(|_| panic!("not synced; synced kinds: {:?}", source.synced_kinds()));
}

fn pod(namespace: &str, name: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"version": version}},
           "spec": {"containers": [{"name": "app"}]}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn policy(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": namespace, "generation": 1},
           "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}})
}

fn pod_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::Pod,
        name: NamespacedName::new(namespace, name),
    }
}

fn delete_pod(server: &FakeApiServer, namespace: &str, name: &str) {
    assert!(server.delete("v1", "Pod", namespace, name));
}

/// Waits until the pod watcher has its watch open (it opens it after the
/// initial list, so `synced` alone does not say so).
async fn pods_watched(server: &FakeApiServer) -> Result<()> {
    let pods = collection(Kind::Pod);
    eventually("pod watch open", PATIENCE, || async {
        ensure!(server.open_watches(&pods) == 1);
        Ok(())
    })
    .await
}

/// The `version` label of a pod in the registry, or None if absent.
fn pod_version(registry: &Registry, namespace: &str, name: &str) -> Option<String> {
    match registry.snapshot().get(&pod_key(namespace, name))? {
        Object::Pod(pod) => pod.metadata.labels.as_ref()?.get("version").cloned(),
        other => panic!("not a pod: {other:?}"),
    }
}

/// Waits until the registry's pods are exactly `expected` (namespace, name, version).
async fn pods_become(registry: &Registry, expected: &[(&str, &str, &str)]) -> Result<()> {
    eventually("registry pods", PATIENCE, || async {
        let snapshot = registry.snapshot();
        let actual: Vec<(String, String, String)> = snapshot
            .pods
            .iter()
            .map(|(name, pod)| {
                let version = pod.metadata.labels.as_ref().and_then(|l| l.get("version"));
                (
                    name.namespace.clone(),
                    name.name.clone(),
                    version.cloned().unwrap_or_default(),
                )
            })
            .collect();
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(ns, n, v)| (ns.to_string(), n.to_string(), v.to_string()))
            .collect();
        ensure!(actual == expected, "pods are {actual:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_initial_list_fills_the_registry() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(namespace("ns1"));
    server.apply(pod("ns1", "a", "v1"));
    server.apply(pod("ns2", "b", "v1"));
    server.apply(policy("ns1", "deny"));
    let (registry, source) = watch(&server);
    synced(&source).await;
    assert!(source.synced());
    let counts = registry.snapshot().counts();
    assert_eq!(counts[&Kind::Namespace], 1);
    assert_eq!(counts[&Kind::Pod], 2);
    assert_eq!(counts[&Kind::AuthorizationPolicy], 1);
    assert_eq!(pod_version(&registry, "ns2", "b").as_deref(), Some("v1"));
    for &kind in Kind::ALL {
        assert_eq!(server.list_calls(&collection(kind)), 1, "{kind}");
    }
    Ok(())
}

#[tokio::test]
async fn added_modified_and_deleted_reach_the_registry_through_the_watch() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(pod("ns1", "a", "v1"));
    let (registry, source) = watch(&server);
    synced(&source).await;

    server.apply(pod("ns1", "b", "v1"));
    pods_become(&registry, &[("ns1", "a", "v1"), ("ns1", "b", "v1")]).await?;
    server.apply(pod("ns1", "a", "v2"));
    pods_become(&registry, &[("ns1", "a", "v2"), ("ns1", "b", "v1")]).await?;
    delete_pod(&server, "ns1", "b");
    pods_become(&registry, &[("ns1", "a", "v2")]).await?;

    assert_eq!(
        server.list_calls(&collection(Kind::Pod)),
        1,
        "no re-list needed"
    );
    Ok(())
}

#[tokio::test]
async fn a_bookmark_is_accepted_and_the_next_watch_resumes_from_it() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    let (registry, source) = watch(&server);
    synced(&source).await;
    let pods = collection(Kind::Pod);
    pods_watched(&server).await?;

    // Other kinds move the revision on; only a bookmark tells the pod watch.
    server.apply(namespace("elsewhere"));
    let bookmarked = server.with_state(|state| {
        state.send_bookmarks();
        // Ends the streams cleanly, as the server's watch timeout does.
        state.close_watches();
        state.revision()
    });
    eventually(
        "the pod watch resumed from the bookmark",
        PATIENCE,
        || async {
            let versions = server.watch_versions(&pods);
            ensure!(versions.len() >= 2, "watch requests: {versions:?}");
            ensure!(
                versions[1] == bookmarked.to_string(),
                "watch requests: {versions:?}"
            );
            Ok(())
        },
    )
    .await?;
    server.apply(pod("ns1", "after", "v1"));
    pods_become(&registry, &[("ns1", "after", "v1")]).await?;
    assert_eq!(server.list_calls(&pods), 1, "a bookmark spares a re-list");
    Ok(())
}

#[tokio::test]
async fn gone_after_an_outage_relists_and_removes_what_was_deleted_meanwhile() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(pod("ns1", "a", "v1"));
    server.apply(pod("ns1", "b", "v1"));
    let (registry, source) = watch(&server);
    synced(&source).await;
    pods_become(&registry, &[("ns1", "a", "v1"), ("ns1", "b", "v1")]).await?;
    pods_watched(&server).await?;

    server.outage(|state| {
        state.delete("v1", "Pod", "ns1", "b");
        state.apply(pod("ns1", "c", "v1"));
        state.expire_history();
    });
    pods_become(&registry, &[("ns1", "a", "v1"), ("ns1", "c", "v1")]).await?;
    assert_eq!(server.list_calls(&collection(Kind::Pod)), 2, "one re-list");
    Ok(())
}

#[tokio::test]
async fn a_gone_event_on_an_open_watch_leads_to_a_relist() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(pod("ns1", "a", "v1"));
    let (registry, source) = watch(&server);
    synced(&source).await;
    let pods = collection(Kind::Pod);
    pods_watched(&server).await?;

    server.with_state(|state| {
        state.send_gone();
        state.expire_history();
        state.delete("v1", "Pod", "ns1", "a");
    });
    pods_become(&registry, &[]).await?;
    assert_eq!(server.list_calls(&pods), 2);
    server.apply(pod("ns1", "later", "v1"));
    pods_become(&registry, &[("ns1", "later", "v1")]).await?;
    Ok(())
}

#[tokio::test]
async fn lists_larger_than_a_page_are_applied_whole_on_start_and_relist() -> Result<()> {
    // The watcher asks for pages of 500.
    let server = server_with(Kind::ALL).await;
    for i in 0..1100 {
        server.apply(pod("ns1", &format!("p{i:04}"), "v1"));
    }
    let (registry, source) = watch(&server);
    synced(&source).await;
    assert_eq!(registry.snapshot().pods.len(), 1100);
    let pods = collection(Kind::Pod);
    assert_eq!(server.list_calls(&pods), 3);
    pods_watched(&server).await?;

    server.outage(|state| {
        for i in 0..100 {
            state.delete("v1", "Pod", "ns1", &format!("p{i:04}"));
        }
        state.expire_history();
    });
    eventually("the re-list removed the deleted pods", PATIENCE, || async {
        let count = registry.snapshot().pods.len();
        ensure!(count == 1000, "{count} pods");
        Ok(())
    })
    .await?;
    assert_eq!(
        server.list_calls(&pods),
        3 + 2,
        "1100 then 1000 pods in pages of 500"
    );
    assert_eq!(source.metrics().lists_of(Kind::Pod), 2);
    Ok(())
}

#[tokio::test]
async fn namespaced_lists_hold_only_their_namespace() -> Result<()> {
    // The watchers list cluster-wide; the namespaced path is the same
    // protocol, checked here with kube's typed client.
    let server = server_with(Kind::ALL).await;
    server.apply(pod("ns1", "a", "v1"));
    server.apply(pod("ns2", "b", "v1"));
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = client_from_config(config)?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "ns2");
    let list = pods.list(&Default::default()).await?;
    let names: Vec<_> = list.items.iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, [Some("b".to_string())]);
    assert!(list.metadata.resource_version.is_some());
    Ok(())
}

#[tokio::test]
async fn a_dropped_watch_reconnects_and_misses_nothing() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(pod("ns1", "a", "v1"));
    server.apply(pod("ns1", "b", "v1"));
    let (registry, source) = watch(&server);
    synced(&source).await;
    pods_become(&registry, &[("ns1", "a", "v1"), ("ns1", "b", "v1")]).await?;
    pods_watched(&server).await?;

    server.outage(|state| {
        state.delete("v1", "Pod", "ns1", "a");
        state.apply(pod("ns1", "b", "v2"));
        state.apply(pod("ns1", "c", "v1"));
    });
    pods_become(&registry, &[("ns1", "b", "v2"), ("ns1", "c", "v1")]).await?;
    let pods = collection(Kind::Pod);
    assert_eq!(
        server.list_calls(&pods),
        1,
        "resumed from history, no re-list"
    );
    assert!(server.watch_versions(&pods).len() >= 2);
    Ok(())
}

#[tokio::test]
async fn a_missing_crd_blocks_neither_the_other_kinds_nor_readiness() -> Result<()> {
    let installed: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|&kind| kind != Kind::ServiceEntry)
        .collect();
    let server = server_with(&installed).await;
    server.apply(pod("ns1", "a", "v1"));
    let readiness = Readiness::new();
    let (registry, source) = watch_with(&server, Some(readiness.clone()));
    assert_eq!(readiness.pending().len(), Kind::ALL.len());

    eventually("every installed kind synced", PATIENCE, || async {
        let synced = source.synced_kinds();
        ensure!(
            installed.iter().all(|kind| synced.contains(kind)),
            "{synced:?}"
        );
        Ok(())
    })
    .await?;
    pods_become(&registry, &[("ns1", "a", "v1")]).await?;
    // A kind the server does not serve has no objects: it counts as synced,
    // so a cluster without the optional CRDs still becomes ready.
    let entries = collection(Kind::ServiceEntry);
    eventually("the missing kind is retried", PATIENCE, || async {
        ensure!(server.list_calls(&entries) >= 3);
        Ok(())
    })
    .await?;
    assert!(source.synced());
    assert!(readiness.is_ready(), "{:?}", readiness.pending());

    // Installing the CRD later is picked up by the retries.
    server.with_state(|state| {
        state.install(resource_type(Kind::ServiceEntry));
        state.apply(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                           "metadata": {"name": "ext", "namespace": "ns1"},
                           "spec": {"hosts": ["example.com"]}}),
        );
    });
    eventually("the late CRD's object arrives", PATIENCE, || async {
        ensure!(registry.snapshot().service_entries.len() == 1);
        Ok(())
    })
    .await?;
    assert!(readiness.is_ready());
    let failures = source
        .metrics()
        .watch_failures
        .get_or_create(&FailureLabels {
            kind: "ServiceEntry".to_string(),
            reason: "not_installed".to_string(),
        })
        .get();
    assert!(failures >= 3, "{failures} failures counted");
    Ok(())
}

#[tokio::test]
async fn an_invalid_object_is_counted_and_skipped() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(policy("ns1", "good"));
    let (registry, source) = watch(&server);
    synced(&source).await;
    let mut bad = policy("ns1", "bad");
    bad["spec"]["rules"] = json!([{"to": [{"operation": {"ports": 80}}]}]);
    server.apply(bad);
    server.apply(pod("ns1", "a", "v1"));
    pods_become(&registry, &[("ns1", "a", "v1")]).await?;
    eventually("the bad policy is rejected", PATIENCE, || async {
        ensure!(source.rejected_objects() == 1);
        Ok(())
    })
    .await?;
    assert_eq!(registry.snapshot().authorization_policies.len(), 1);
    Ok(())
}

#[tokio::test]
async fn status_conditions_are_merge_patched_on_the_status_subresource() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(policy("ns1", "deny"));
    server.apply(namespace("ns1"));
    let (_registry, source) = watch(&server);
    synced(&source).await;
    let key = ObjectKey {
        kind: Kind::AuthorizationPolicy,
        name: NamespacedName::new("ns1", "deny"),
    };
    let conditions = [ObjectCondition {
        object: key.clone(),
        type_: "PartiallyEnforced".to_string(),
        status: true,
        reason: "UnsupportedValue".to_string(),
        message: "HTTP-only fields are enforced as deny-all at L4".to_string(),
    }];
    source.write_status(&conditions).await?;

    let patches = server.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].path,
        "/apis/security.istio.io/v1/namespaces/ns1/authorizationpolicies/deny/status"
    );
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    let written = &patches[0].body["status"]["conditions"][0];
    assert_eq!(written["type"], "PartiallyEnforced");
    assert_eq!(written["status"], "True");
    assert_eq!(written["reason"], "UnsupportedValue");
    assert_eq!(written["observedGeneration"], 1);
    let stored = server
        .object(&collection(Kind::AuthorizationPolicy), "ns1", "deny")
        .ok_or_else(|| anyhow!("policy gone"))?;
    assert_eq!(
        stored["status"]["conditions"][0]["type"],
        "PartiallyEnforced"
    );
    assert_eq!(stored["spec"]["action"], "DENY", "the spec is untouched");

    // Unchanged conditions are not written again.
    source.write_status(&conditions).await?;
    assert_eq!(server.patches().len(), 1);

    // Cluster-scoped kinds are patched at their cluster path.
    let ns_condition = ObjectCondition {
        object: ObjectKey {
            kind: Kind::Namespace,
            name: NamespacedName::cluster("ns1"),
        },
        ..conditions[0].clone()
    };
    source.write_status(&[ns_condition]).await?;
    assert_eq!(server.patches()[1].path, "/api/v1/namespaces/ns1/status");
    let stored = server
        .object(&collection(Kind::Namespace), "", "ns1")
        .ok_or_else(|| anyhow!("namespace gone"))?;
    assert_eq!(stored["status"]["conditions"][0]["status"], "True");

    // A missing object is an error naming it.
    let mut missing = conditions[0].clone();
    missing.object.name.name = "absent".to_string();
    let err = source.write_status(&[missing]).await.unwrap_err();
    assert!(matches!(
        err,
        KubeSourceError::StatusWrite { failed: 1, .. }
    ));
    assert!(err.to_string().contains("ns1/absent"), "{err}");
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_every_watcher_within_its_deadline() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    let (_registry, source) = watch(&server);
    synced(&source).await;
    let pods = collection(Kind::Pod);
    pods_watched(&server).await?;
    let started = tokio::time::Instant::now();
    source.shutdown(Duration::from_secs(2)).await?;
    assert!(started.elapsed() < Duration::from_secs(2));
    eventually("watch connections closed", PATIENCE, || async {
        ensure!(server.open_watches(&pods) == 0);
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn dropping_the_source_stops_its_watchers() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    let (_registry, source) = watch(&server);
    synced(&source).await;
    let pods = collection(Kind::Pod);
    pods_watched(&server).await?;
    drop(source);
    eventually("watch connections closed", PATIENCE, || async {
        ensure!(server.open_watches(&pods) == 0);
        Ok(())
    })
    .await?;
    Ok(())
}

/// The kinds a waypoint's L7 configuration comes from: HTTPRoute and
/// GRPCRoute (gateway.networking.k8s.io/v1) with Service parents, and
/// AuthorizationPolicy with targetRefs, read as written.
#[tokio::test]
async fn routes_and_target_ref_policies_are_read() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop",
                     "annotations": {"waypoint.ambit.dev/retry-attempts": "2"}},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "web-v2", "port": 80, "weight": 10}],
                            "timeouts": {"request": "2s"}}]}}),
    );
    server.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
                 "rules": [{"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}]}]}}),
    );
    server.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "l7", "namespace": "shop"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
                 "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}));
    let (registry, source) = watch(&server);
    synced(&source).await;
    let store = registry.snapshot();
    let route = &store.http_routes[&NamespacedName::new("shop", "web")];
    let parent = &route.spec.parent_refs.as_ref().unwrap()[0];
    assert_eq!(
        (parent.kind.as_deref(), parent.port),
        (Some("Service"), Some(80))
    );
    let rule = &route.spec.rules.as_ref().unwrap()[0];
    assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(10));
    assert_eq!(
        rule.timeouts.as_ref().unwrap().request.as_deref(),
        Some("2s")
    );
    assert_eq!(
        route.metadata.annotations.as_ref().unwrap()["waypoint.ambit.dev/retry-attempts"],
        "2"
    );
    let grpc = &store.grpc_routes[&NamespacedName::new("shop", "api")];
    let method = grpc.spec.rules.as_ref().unwrap()[0]
        .matches
        .as_ref()
        .unwrap()[0]
        .method
        .as_ref()
        .unwrap();
    assert_eq!(method.service.as_deref(), Some("pkg.Svc"));
    let policy = &store.authorization_policies[&NamespacedName::new("shop", "l7")];
    assert_eq!(policy.spec.target_refs[0].kind, "Gateway");
    assert_eq!(policy.spec.target_refs[0].name, "waypoint");
    Ok(())
}

/// RequestAuthentication (security.istio.io/v1) is watched like the other
/// Istio kinds, and its conditions go to its status subresource.
#[tokio::test]
async fn request_authentications_are_read_and_their_status_written() -> Result<()> {
    let server = server_with(Kind::ALL).await;
    server.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/keys",
                               "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                               "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}]}}));
    let (registry, source) = watch(&server);
    synced(&source).await;
    let store = registry.snapshot();
    let ra = &store.request_authentications[&NamespacedName::new("shop", "jwt")];
    assert_eq!(ra.spec.target_refs[0].name, "web");
    assert_eq!(ra.spec.jwt_rules[0].jwks_uri, "https://issuer.example/keys");
    assert_eq!(ra.spec.jwt_rules[0].from_headers[0].prefix, "Bearer ");

    let conditions = [ObjectCondition {
        object: ObjectKey {
            kind: Kind::RequestAuthentication,
            name: NamespacedName::new("shop", "jwt"),
        },
        type_: "Accepted".to_string(),
        status: false,
        reason: "TargetNotFound".to_string(),
        message: "targetRefs[0] names Service shop/web, which does not exist".to_string(),
    }];
    source.write_status(&conditions).await?;
    let patches = server.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].path,
        "/apis/security.istio.io/v1/namespaces/shop/requestauthentications/jwt/status"
    );
    assert_eq!(
        patches[0].body["status"]["conditions"][0]["reason"],
        "TargetNotFound"
    );
    Ok(())
}
