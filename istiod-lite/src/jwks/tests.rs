//! Key sets fetched from a real local HTTP server: the fetcher's outcomes
//! (a key set, a discovery, an error status, a slow, oversized or invalid
//! answer), and the resolver following the store, retrying with back-off,
//! refreshing, and feeding translation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::fetch::{FetchError, Fetcher};
use super::resolver::{ResolverConfig, run};
use super::*;
use crate::model::{Kind, Object};

const KEYS: &str = r#"{"keys":[{"e":"AQAB","kid":"k1","kty":"RSA","n":"AQAB"}]}"#;
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves key sets and misbehaviours by path; counts requests per path.
struct KeyServer {
    addr: SocketAddr,
    hits: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start() -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let flaky = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, flaky) = (counted.clone(), flaky.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let ok = |body: String| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let response = match path.as_str() {
                        "/keys" => ok(KEYS.to_string()),
                        "/.well-known/openid-configuration" => ok(json!({
                            "issuer": format!("http://{addr}"),
                            "jwks_uri": format!("http://{addr}/keys"),
                        })
                        .to_string()),
                        "/not-a-key-set" => ok("{\"kty\": \"RSA\"}".to_string()),
                        "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                        }
                        "/flaky" => ok(KEYS.to_string()),
                        "/slow" => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        "/big" => {
                            // No length declared: the cap must stop the read.
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                                .await;
                            let chunk = vec![b' '; 64 * 1024];
                            for _ in 0..40 {
                                if stream.write_all(&chunk).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        KeyServer { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(
        Arc::new(fetch::client_config(rustls::RootCertStore::empty())),
        fetch::DEFAULT_MAX_BYTES,
    )
}

#[tokio::test]
async fn the_fetcher_reads_key_sets_and_names_what_went_wrong() {
    let server = KeyServer::start().await;
    let f = fetcher();
    let short = Duration::from_millis(300);
    let uri = |p: &str| JwksSource::Uri(server.url(p));

    let (from, jwks) = f.key_set(&uri("/keys"), PATIENCE).await.unwrap();
    assert_eq!(
        (from.as_str(), jwks.as_str()),
        (server.url("/keys").as_str(), KEYS)
    );

    // Discovery: the issuer's document names the key set.
    let issuer = format!("http://{}/", server.addr);
    let (from, jwks) = f
        .key_set(&JwksSource::Discovery(issuer), PATIENCE)
        .await
        .unwrap();
    assert_eq!((from, jwks.as_str()), (server.url("/keys"), KEYS));

    let err = f.key_set(&uri("/missing"), PATIENCE).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    let err = f.key_set(&uri("/slow"), short).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    let err = f.key_set(&uri("/big"), PATIENCE).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} sent more than 1048576 bytes", server.url("/big"))
    );
    let err = f
        .key_set(&uri("/not-a-key-set"), PATIENCE)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a JSON Web Key Set: not an object with a \"keys\" array",
            server.url("/not-a-key-set")
        )
    );
    let err = f
        .key_set(&JwksSource::Uri("ftp://x/keys".into()), short)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::BadUri(_)), "{err}");
    // Nothing listens there: refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = format!("http://{}/keys", closed.local_addr().unwrap());
    drop(closed);
    let err = f
        .key_set(&JwksSource::Uri(gone), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
}

/// A store with one RequestAuthentication on a waypoint Gateway per rule.
fn store_with(rules: &[serde_json::Value]) -> Arc<Store> {
    let mut store = Store::default();
    for (i, rule) in rules.iter().enumerate() {
        store.upsert(
            Object::from_value(
                Kind::RequestAuthentication,
                json!({"metadata": {"name": format!("ra{i}"), "namespace": "shop"},
                       "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
                                "jwtRules": [rule]}}),
            )
            .unwrap(),
        );
    }
    Arc::new(store)
}

#[test]
fn wanted_sources_come_from_targeted_valid_rules_only() {
    let mut store = (*store_with(&[
        json!({"issuer": "a", "jwksUri": "http://a/keys", "timeout": "2s"}),
        json!({"issuer": "b", "jwksUri": "http://a/keys", "timeout": "9s"}),
        json!({"issuer": "https://c.example"}),
        json!({"issuer": "d", "jwks": "{\"keys\":[]}"}),
        json!({"jwksUri": "http://no-issuer/keys"}),
        json!({"issuer": "e", "jwks": "{}", "jwksUri": "http://both/keys"}),
    ]))
    .clone();
    store.upsert(
        Object::from_value(
            Kind::RequestAuthentication,
            json!({"metadata": {"name": "sidecar", "namespace": "shop"},
                   "spec": {"selector": {"matchLabels": {"app": "x"}},
                            "jwtRules": [{"issuer": "s", "jwksUri": "http://sidecar/keys"}]}}),
        )
        .unwrap(),
    );
    let want = wanted(&store);
    assert_eq!(
        want.into_iter().collect::<Vec<_>>(),
        [
            (
                JwksSource::Uri("http://a/keys".into()),
                Duration::from_secs(9)
            ),
            (
                JwksSource::Discovery("https://c.example".into()),
                DEFAULT_TIMEOUT
            ),
        ]
    );
}

#[test]
fn retries_back_off_and_successes_wait_for_the_refresh() {
    let (refresh, base, max) = (
        Duration::from_secs(1200),
        Duration::from_secs(1),
        Duration::from_secs(300),
    );
    let waits: Vec<u64> = [0, 1, 2, 3, 9, 40]
        .into_iter()
        .map(|failures| next_fetch(failures, refresh, base, max).as_secs())
        .collect();
    assert_eq!(waits, [1200, 1, 2, 4, 256, 300]);
}

#[test]
fn key_sets_are_objects_with_a_keys_array_of_objects() {
    assert_eq!(key_set(" {\"keys\" : [] } ").unwrap(), EMPTY_KEY_SET);
    assert_eq!(key_set("{\"keys\": {}}"), Err(KeySetError::NoKeys));
    assert_eq!(key_set("[]"), Err(KeySetError::NoKeys));
    assert_eq!(
        key_set("{\"keys\": [{}, 1]}"),
        Err(KeySetError::KeyNotObject(1))
    );
    assert!(matches!(key_set("{"), Err(KeySetError::NotJson(_))));
}

#[tokio::test]
async fn the_resolver_fetches_retries_refreshes_forgets_and_feeds_translation() {
    let server = KeyServer::start().await;
    let issuer = format!("http://{}", server.addr);
    let store = store_with(&[
        json!({"issuer": "good", "jwksUri": server.url("/keys")}),
        json!({"issuer": "flaky", "jwksUri": server.url("/flaky")}),
        json!({"issuer": "broken", "jwksUri": server.url("/missing")}),
        json!({"issuer": "slow", "jwksUri": server.url("/slow"), "timeout": "200ms"}),
        json!({"issuer": issuer}),
    ]);
    let (store_tx, store_rx) = watch::channel(store.clone());
    let (keys_tx, mut keys) = watch::channel(Arc::new(JwksCache::default()));
    let (trigger, drain) = mesh_core::drain::channel();
    let config = ResolverConfig {
        refresh: Duration::from_millis(300),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
    };
    let task = tokio::spawn(run(store_rx, fetcher(), config, keys_tx, drain));

    let fetched = |uri: &str| JwksEntry::Fetched {
        uri: uri.to_string(),
        jwks: KEYS.to_string(),
    };
    let settled = {
        let want = [
            (
                JwksSource::Uri(server.url("/keys")),
                fetched(&server.url("/keys")),
            ),
            (
                JwksSource::Uri(server.url("/flaky")),
                fetched(&server.url("/flaky")),
            ),
            (
                JwksSource::Discovery(issuer.clone()),
                fetched(&server.url("/keys")),
            ),
        ];
        tokio::time::timeout(
            PATIENCE,
            keys.wait_for(|c| {
                want.iter().all(|(s, e)| c.entries.get(s) == Some(e))
                    && matches!(
                        c.entries.get(&JwksSource::Uri(server.url("/missing"))),
                        Some(JwksEntry::Failed(_))
                    )
                    && matches!(
                        c.entries.get(&JwksSource::Uri(server.url("/slow"))),
                        Some(JwksEntry::Failed(_))
                    )
            }),
        )
        .await
        .expect("every source fetched or failed in time")
        .unwrap()
        .clone()
    };
    assert_eq!(settled.entries.len(), 5);
    let JwksEntry::Failed(why) = &settled.entries[&JwksSource::Uri(server.url("/missing"))] else {
        unreachable!()
    };
    assert_eq!(
        why,
        &format!("{} answered HTTP 404", server.url("/missing"))
    );
    let JwksEntry::Failed(why) = &settled.entries[&JwksSource::Uri(server.url("/slow"))] else {
        unreachable!()
    };
    assert!(why.contains("did not answer within 200ms"), "{why}");
    // The flaky source succeeded on its third try, after back-off.
    assert!(server.hits("/flaky") >= 3);

    // Translation of the same store with this cache: keys inline, the
    // failed ones empty with a condition.
    let mut translator = crate::translate::Translator::new(crate::translate::MeshConfig::default());
    translator.set_keys(&settled);
    let mut with_gateway = (*store).clone();
    with_gateway.upsert(
        Object::from_value(
            Kind::Gateway,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "waypoint", "namespace": "shop"},
                   "spec": {"gatewayClassName": "istio-waypoint", "listeners": []}}),
        )
        .unwrap(),
    );
    translator.update(&Arc::new(with_gateway));
    let rules: BTreeMap<String, String> = translator.translation().waypoints["shop/waypoint"]
        .authentications
        .iter()
        .flat_map(|a| &a.rules)
        .map(|r| (r.issuer.clone(), r.jwks.clone()))
        .collect();
    assert_eq!(rules["good"], KEYS);
    assert_eq!(rules["flaky"], KEYS);
    assert_eq!(rules[&issuer], KEYS);
    assert_eq!(rules["broken"], EMPTY_KEY_SET);
    assert_eq!(rules["slow"], EMPTY_KEY_SET);
    assert!(
        translator
            .translation()
            .conditions
            .iter()
            .any(|c| c.reason == "JwksFetchFailed" && c.message.contains("answered HTTP 404"))
    );

    // Refreshed after the period, without a change to the store.
    let before = server.hits("/keys");
    let refreshed = tokio::time::timeout(PATIENCE, async {
        while server.hits("/keys") < before + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refreshed.is_ok(),
        "no refresh: {} hits",
        server.hits("/keys")
    );

    // A source no longer referenced is forgotten.
    store_tx
        .send(store_with(&[
            json!({"issuer": "good", "jwksUri": server.url("/keys")}),
        ]))
        .unwrap();
    let only_good = tokio::time::timeout(PATIENCE, keys.wait_for(|c| c.entries.len() == 1))
        .await
        .expect("the cache follows the store")
        .unwrap()
        .clone();
    assert!(
        only_good
            .entries
            .contains_key(&JwksSource::Uri(server.url("/keys")))
    );

    trigger.drain(Duration::from_secs(1)).await;
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the resolver ends on drain")
        .unwrap();
}
