//! The directory source against a real temporary directory and a real
//! inotify watcher: what reaches the registry, how fast, and what is kept when
//! a file goes bad.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use mesh_registry::Registry;
use mesh_registry::dir::{DirError, DirSource, DirWatch};
use mesh_registry::model::{Kind, NamespacedName, ObjectCondition, ObjectKey, Store};
use tokio::time::Instant;

/// The promise to users: a saved file is in the store within this.
const LATENCY_BUDGET: Duration = Duration::from_millis(200);
/// For waits that only need to end eventually.
const PATIENCE: Duration = Duration::from_secs(5);

fn namespace(name: &str, version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{version: \"{version}\"}}\n"
    )
}

fn policy(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: ns1\nspec:\n  action: DENY\n"
    )
}

fn namespace_version(store: &Store, name: &str) -> Option<String> {
    store
        .namespaces
        .get(&NamespacedName::cluster(name))
        .and_then(|ns| ns.metadata.labels.as_ref()?.get("version").cloned())
}

async fn start(dir: &Path) -> Result<(Registry, DirSource, DirWatch)> {
    let registry = Registry::new();
    let source = DirSource::new(dir, registry.clone())?;
    let watch = source.spawn()?;
    tokio::time::timeout(PATIENCE, watch.synced()).await??;
    Ok((registry, source, watch))
}

/// Waits until `done` holds for the registry's contents; returns how long
/// that took, or fails after `patience`.
async fn wait_for(
    registry: &Registry,
    what: &str,
    patience: Duration,
    done: impl Fn(&Store) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + patience;
    let mut updates = registry.subscribe();
    loop {
        let current: Arc<Store> = updates.borrow_and_update().clone();
        if done(&current) {
            return Ok(started.elapsed());
        }
        match tokio::time::timeout_at(deadline, updates.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("{what}: the registry is gone"),
            Err(_) => bail!("{what}: not true after {patience:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scan_reads_nested_files_and_skips_hidden_and_status_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::create_dir_all(dir.path().join("team/a"))?;
    fs::create_dir_all(dir.path().join(".git"))?;
    fs::write(dir.path().join("top.yaml"), namespace("top", "1"))?;
    fs::write(
        dir.path().join("team/a/deep.yml"),
        format!("{}---\n{}", namespace("deep", "1"), policy("deny")),
    )?;
    fs::write(
        dir.path().join(".git/ignored.yaml"),
        namespace("hidden", "1"),
    )?;
    fs::write(dir.path().join("top.status.yaml"), namespace("status", "1"))?;
    fs::write(dir.path().join("notes.txt"), namespace("text", "1"))?;

    let (registry, source, watch) = start(dir.path()).await?;
    let store = registry.snapshot();
    let names: Vec<String> = store.namespaces.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["deep", "top"]);
    assert!(
        store
            .authorization_policies
            .contains_key(&NamespacedName::new("ns1", "deny"))
    );
    assert!(source.errors().is_empty(), "{:?}", source.errors());
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_change_and_delete_reach_the_registry_within_200ms() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (registry, _source, watch) = start(dir.path()).await?;
    let file = dir.path().join("mesh.yaml");

    fs::write(&file, namespace("a", "1"))?;
    let took = wait_for(&registry, "created", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("1")
    })
    .await?;
    assert!(took <= LATENCY_BUDGET, "a new file took {took:?}");

    fs::write(&file, namespace("a", "2"))?;
    let took = wait_for(&registry, "changed", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("2")
    })
    .await?;
    assert!(took <= LATENCY_BUDGET, "a changed file took {took:?}");

    fs::remove_file(&file)?;
    let took = wait_for(&registry, "deleted", PATIENCE, |s| s.namespaces.is_empty()).await?;
    assert!(took <= LATENCY_BUDGET, "a deleted file took {took:?}");

    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_keeps_the_last_good_objects_and_reports_file_and_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("mesh.yaml");
    fs::write(
        &file,
        format!("{}---\n{}", namespace("a", "1"), namespace("b", "1")),
    )?;
    let (registry, source, watch) = start(dir.path()).await?;
    assert_eq!(registry.snapshot().namespaces.len(), 2);

    // `a` changes, `b`'s document breaks: a moves on, b stays as it was.
    let broken = format!(
        "{}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: {{version: [2}}\n",
        namespace("a", "2")
    );
    fs::write(&file, broken)?;
    wait_for(&registry, "a updated", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("2")
    })
    .await?;
    assert_eq!(
        namespace_version(&registry.snapshot(), "b").as_deref(),
        Some("1")
    );
    let errors: Vec<String> = source.errors().iter().map(ToString::to_string).collect();
    let expected = format!(
        "{}:11: invalid YAML",
        source.root().join("mesh.yaml").display()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(&expected), "{errors:?}");

    // A wrong field type names its path.
    fs::write(
        &file,
        format!(
            "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns1}}\nspec:\n  rules:\n  - to:\n    - operation:\n        ports: 80\n",
            namespace("a", "3")
        ),
    )?;
    wait_for(&registry, "a updated again", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("3")
    })
    .await?;
    let errors: Vec<String> = source.errors().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [format!(
            "{}:14: field `spec.rules[0].to[0].operation.ports`: invalid type: integer `80`, expected a sequence",
            source.root().join("mesh.yaml").display()
        )]
    );
    // b is still kept: the file still has an invalid document.
    assert!(namespace_version(&registry.snapshot(), "b").is_some());

    // Fixed: b is really gone now, and so is the error.
    fs::write(&file, namespace("a", "4"))?;
    wait_for(&registry, "b removed", PATIENCE, |s| {
        namespace_version(s, "b").is_none() && namespace_version(s, "a").as_deref() == Some("4")
    })
    .await?;
    assert!(source.errors().is_empty(), "{:?}", source.errors());
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_renamed_into_place_and_out_are_read_and_forgotten() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let outside = tempfile::tempdir_in(dir.path().parent().unwrap_or(dir.path()))?;
    let (registry, _source, watch) = start(dir.path()).await?;
    let file = dir.path().join("mesh.yaml");

    // An editor's save: write a hidden temporary, rename it over the file.
    let temporary = dir.path().join(".mesh.yaml.swp");
    fs::write(&temporary, namespace("a", "1"))?;
    fs::rename(&temporary, &file)?;
    let took = wait_for(&registry, "renamed in", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("1")
    })
    .await?;
    assert!(took <= LATENCY_BUDGET, "a rename took {took:?}");

    fs::write(&temporary, namespace("a", "2"))?;
    fs::rename(&temporary, &file)?;
    wait_for(&registry, "replaced by rename", PATIENCE, |s| {
        namespace_version(s, "a").as_deref() == Some("2")
    })
    .await?;

    // Moved in from outside the watched tree, then out again.
    let elsewhere = outside.path().join("other.yaml");
    fs::write(&elsewhere, namespace("b", "1"))?;
    fs::rename(&elsewhere, dir.path().join("other.yaml"))?;
    wait_for(&registry, "moved in", PATIENCE, |s| {
        namespace_version(s, "b").is_some()
    })
    .await?;
    fs::rename(dir.path().join("other.yaml"), &elsewhere)?;
    wait_for(&registry, "moved out", PATIENCE, |s| {
        namespace_version(s, "b").is_none()
    })
    .await?;
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_directory_with_files_and_its_removal_are_followed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (registry, _source, watch) = start(dir.path()).await?;

    // Created and filled at once: the files may exist before the watch on
    // the new directory does, so the directory itself must be scanned.
    let team = dir.path().join("team/nested");
    fs::create_dir_all(&team)?;
    fs::write(team.join("one.yaml"), namespace("one", "1"))?;
    fs::write(team.join("two.yaml"), namespace("two", "1"))?;
    wait_for(&registry, "nested files", PATIENCE, |s| {
        s.namespaces.len() == 2
    })
    .await?;

    fs::remove_dir_all(dir.path().join("team"))?;
    wait_for(&registry, "directory removed", PATIENCE, |s| {
        s.namespaces.is_empty()
    })
    .await?;
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_object_in_two_files_falls_back_when_the_winner_goes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("a.yaml"), namespace("shared", "from-a"))?;
    fs::write(dir.path().join("b.yaml"), namespace("shared", "from-b"))?;
    let (registry, _source, watch) = start(dir.path()).await?;
    // Files are read in path order: b is read last and wins.
    assert_eq!(
        namespace_version(&registry.snapshot(), "shared").as_deref(),
        Some("from-b")
    );
    fs::remove_file(dir.path().join("b.yaml"))?;
    wait_for(&registry, "fallback to a", PATIENCE, |s| {
        namespace_version(s, "shared").as_deref() == Some("from-a")
    })
    .await?;
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

fn condition(name: &str, status: bool) -> ObjectCondition {
    ObjectCondition {
        object: ObjectKey {
            kind: Kind::AuthorizationPolicy,
            name: NamespacedName::new("ns1", name),
        },
        type_: "PartiallyEnforced".into(),
        status,
        reason: "L7RulesAtL4".into(),
        message: "HTTP rules cannot be enforced by ztunnel".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_files_are_written_beside_sources_and_their_conditions_not_read_back() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("policies"))?;
    fs::write(
        dir.path().join("policies/deny.yaml"),
        format!("{}---\n{}", policy("deny"), policy("other")),
    )?;
    let (registry, source, watch) = start(dir.path()).await?;
    let status_file = dir.path().join("policies/deny.status.yaml");

    source.write_status(&[condition("deny", true), condition("unknown", true)])?;
    let text = fs::read_to_string(&status_file)?;
    assert!(text.starts_with("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\n  namespace: ns1\nstatus:\n  conditions:\n  - lastTransitionTime: "), "{text}");
    assert!(
        text.contains("    reason: L7RulesAtL4\n    status: 'True'\n    type: PartiallyEnforced\n"),
        "{text}"
    );
    assert!(
        !text.contains("other") && !text.contains("unknown"),
        "{text}"
    );
    let written_at = fs::metadata(&status_file)?.modified()?;

    // The same status again leaves the file alone.
    source.write_status(&[condition("deny", true), condition("unknown", true)])?;
    assert_eq!(fs::read_to_string(&status_file)?, text);
    assert_eq!(fs::metadata(&status_file)?.modified()?, written_at);

    // Events are delivered in order: once a later source change is in, the
    // status file's events have been handled too. Only Pod documents of a
    // status file are read; had this one been read as a source, its
    // document (no `spec`) would be reported as an error.
    fs::write(dir.path().join("marker.yaml"), namespace("marker", "1"))?;
    wait_for(&registry, "marker", PATIENCE, |s| {
        namespace_version(s, "marker").is_some()
    })
    .await?;
    assert!(source.errors().is_empty(), "{:?}", source.errors());
    assert_eq!(registry.snapshot().authorization_policies.len(), 2);

    // No conditions left: the status file goes.
    source.write_status(&[])?;
    assert!(!status_file.exists());
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_written_by_a_runner_reaches_the_pod_within_200ms_and_leaves_with_its_file()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("pods.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps}\nspec: {nodeName: n1, containers: [{name: c}]}\n",
    )?;
    let (registry, source, watch) = start(dir.path()).await?;
    let pod_ip = |s: &Store| {
        s.pods
            .get(&NamespacedName::new("apps", "web"))
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
    };
    assert_eq!(pod_ip(&registry.snapshot()), None);

    // Written as the runner does: a hidden temporary file renamed into place.
    let status = dir.path().join("runner.status.yaml");
    let temporary = dir.path().join(".runner.status.yaml.tmp");
    fs::write(
        &temporary,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps, uid: u-1}\nstatus: {phase: Running, podIP: 10.244.0.2}\n",
    )?;
    fs::rename(&temporary, &status)?;
    let took = wait_for(&registry, "pod IP", PATIENCE, |s| {
        pod_ip(s).as_deref() == Some("10.244.0.2")
    })
    .await?;
    assert!(took < LATENCY_BUDGET, "took {took:?}");
    let snapshot = registry.snapshot();
    let web = &snapshot.pods[&NamespacedName::new("apps", "web")];
    assert_eq!(web.metadata.uid.as_deref(), Some("u-1"));
    assert_eq!(web.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));

    fs::remove_file(&status)?;
    wait_for(&registry, "pod IP gone", PATIENCE, |s| pod_ip(s).is_none()).await?;
    assert!(source.errors().is_empty(), "{:?}", source.errors());
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_file_left_by_an_earlier_run_is_removed_when_it_has_nothing_to_say() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("deny.yaml"), policy("deny"))?;
    fs::write(dir.path().join("deny.status.yaml"), "---\nstale: true\n")?;
    let (_registry, source, watch) = start(dir.path()).await?;
    source.write_status(&[])?;
    assert!(!dir.path().join("deny.status.yaml").exists());
    watch.shutdown(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_watcher_within_its_deadline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_registry, _source, watch) = start(dir.path()).await?;
    // A change in flight: the debounce window or a read is running.
    fs::write(dir.path().join("mesh.yaml"), namespace("a", "1"))?;
    let started = Instant::now();
    watch.shutdown(Duration::from_secs(1)).await?;
    assert!(started.elapsed() < Duration::from_secs(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_watch_ends_the_task_and_releases_the_registry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (registry, source, watch) = start(dir.path()).await?;
    let mut updates = registry.subscribe();
    drop(registry);
    drop(source);
    drop(watch);
    // The task held the last other handle on the registry: once it has
    // ended, the channel reports that its sender is gone.
    tokio::time::timeout(PATIENCE, async { while updates.changed().await.is_ok() {} }).await?;
    Ok(())
}

#[test]
fn a_missing_directory_or_a_file_is_refused_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope");
    let err = DirSource::new(&missing, Registry::new()).unwrap_err();
    assert!(matches!(err, DirError::Open { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    let file = dir.path().join("file.yaml");
    fs::write(&file, "")?;
    let err = DirSource::new(&file, Registry::new()).unwrap_err();
    assert!(matches!(err, DirError::NotADirectory(_)), "{err}");
    assert!(
        err.to_string().contains("file.yaml: not a directory"),
        "{err}"
    );
    Ok(())
}
