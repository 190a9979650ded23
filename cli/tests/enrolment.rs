//! Enrolment on the local cluster with the whole mesh (root; needs the node
//! agent and the in-pod ztunnel binaries): running pods move into and out of
//! the mesh by label without restarting, node agent and ztunnel restarts keep
//! pods captured, opt-out pods stay out, and a new pod's first connection is
//! already mTLS. Every test ends with `ambit down` and checks nothing is left.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::cluster::mesh::{AGENT_ADMIN, ZTUNNEL_ADMIN};
use ambit::cluster::network::netns_path;
use ambit::cluster::{Cluster, journal::Journal, mesh, probe, process};
use ambit::label::{self, LabelChange, Target};
use anyhow::{Context, Result, bail};
use common::{Setup, down_and_check, exec_in, mesh_setup, recorded_process};
use mesh_core::netns::Netns;
use mesh_testkit::eventually;
use serde_json::Value;

mod common;

const MODE: &str = "istio.io/dataplane-mode";
const SERVICE: &str = "10.96.0.10:80";
const ZTUNNEL_METRICS: &str = "127.0.0.1:15020";
const PATIENCE: Duration = Duration::from_secs(30);

fn nodes(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        format!(", labels: {{{MODE}: ambient}}")
    } else {
        String::new()
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}{labels}}}\n")
}

fn pod(ns: &str, name: &str, node: &str, command: &[&str], labels: &[(&str, &str)]) -> String {
    let command: Vec<String> = command.iter().map(|c| format!("'{c}'")).collect();
    let labels: Vec<String> = [("app", name)]
        .iter()
        .chain(labels)
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, command: [{}]}}]}}\n",
        labels.join(", "),
        command.join(", ")
    )
}

/// The `server` pod (echo on 8080) in `ns` on `node`, behind `SERVICE`.
fn server(ns: &str, node: &str) -> String {
    format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: {ns}}}\nspec: {{clusterIP: 10.96.0.10, selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
        pod(
            ns,
            "server",
            node,
            &["ambit", "app", "server", "--port", "8080"],
            &[]
        )
    )
}

/// A pod calling `SERVICE` every 100 ms.
fn client(ns: &str, node: &str) -> String {
    pod(
        ns,
        "client",
        node,
        &[
            "ambit", "app", "client", "--target", SERVICE, "--every", "100ms",
        ],
        &[],
    )
}

fn principal(ns: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/default")
}

fn up(setup: &Setup) -> Result<Cluster> {
    Cluster::up(&setup.dir, &setup.options).context("ambit up")
}

fn set_namespace_mode(setup: &Setup, ns: &str, mode: Option<&str>) -> Result<()> {
    let change = match mode {
        Some(value) => LabelChange::Set {
            key: MODE.into(),
            value: value.into(),
        },
        None => LabelChange::Remove { key: MODE.into() },
    };
    label::label(&setup.dir, &Target::Namespace(ns.into()), &[change])?;
    Ok(())
}

fn node_netns(cluster: &Cluster, node: &str) -> Result<String> {
    Ok(cluster
        .plan()
        .node(node)
        .context("no such node")?
        .netns
        .clone())
}

/// From the runner's current plan, so pods added since `up` are found.
fn pod_netns(cluster: &Cluster, pod: &str) -> Result<String> {
    let plan = Cluster::open(&cluster.plan().state_dir)?;
    Ok(plan
        .plan()
        .pods
        .iter()
        .find(|p| p.key() == pod)
        .context("no such pod in the plan")?
        .netns
        .clone())
}

fn get(netns: &str, addr: &str, path: &str) -> Result<String> {
    let (code, body) = probe::get(netns, addr.parse()?, path, Duration::from_secs(2))?;
    if code != 200 {
        bail!("GET {path}: {code} {body}");
    }
    Ok(body)
}

/// Connections the node's ztunnel accepted for its pods (reporter
/// `destination`) from `source_principal` (`unknown` for plaintext) under
/// `policy` (`mutual_tls` or `unknown`).
fn inbound_connections(metrics: &str, source_principal: &str, policy: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{source_principal}\""))
                && l.contains(&format!("connection_security_policy=\"{policy}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn mtls_from(cluster: &Cluster, node: &str, ns: &str) -> Result<u64> {
    let metrics = get(&node_netns(cluster, node)?, ZTUNNEL_METRICS, "/metrics")?;
    Ok(inbound_connections(&metrics, &principal(ns), "mutual_tls"))
}

fn plaintext_in(cluster: &Cluster, node: &str) -> Result<u64> {
    let metrics = get(&node_netns(cluster, node)?, ZTUNNEL_METRICS, "/metrics")?;
    Ok(inbound_connections(&metrics, "unknown", "unknown"))
}

/// The node agent's `/debug/pods` entry for `ns/name`.
fn agent_entry(cluster: &Cluster, node: &str, pod: &str) -> Result<Value> {
    let body = get(&node_netns(cluster, node)?, AGENT_ADMIN, "/debug/pods")?;
    let json: Value = serde_json::from_str(&body)?;
    let (ns, name) = pod.split_once('/').context("ns/name")?;
    json["pods"]
        .as_array()
        .context("no pods array")?
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
        .cloned()
        .with_context(|| format!("the agent does not know {pod}: {body}"))
}

/// The pod's proxy state in the node ztunnel's `workloadState`, if any.
fn ztunnel_state(cluster: &Cluster, node: &str, pod: &str) -> Result<Option<String>> {
    let body = get(&node_netns(cluster, node)?, ZTUNNEL_ADMIN, "/config_dump")?;
    let json: Value = serde_json::from_str(&body)?;
    let (ns, name) = pod.split_once('/').context("ns/name")?;
    Ok(json["workloadState"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["namespace"] == ns && w["name"] == name)
        .and_then(|w| w["state"].as_str().map(str::to_string)))
}

/// Waits until the agent reports `pod` enrolled and ztunnel runs its proxy.
async fn wait_enrolled(cluster: &Cluster, node: &str, pod: &str) -> Result<()> {
    eventually(&format!("{pod} enrolled"), PATIENCE, || async move {
        let entry = agent_entry(cluster, node, pod)?;
        let state = ztunnel_state(cluster, node, pod)?;
        if entry["enrolled"] == true && state.as_deref() == Some("Up") {
            Ok(())
        } else {
            bail!("agent: {entry}; ztunnel: {state:?}")
        }
    })
    .await
}

/// The in-pod redirection the netns holds: every iptables line naming an
/// ISTIO chain (with its table) and the fwmark `ip rule`.
fn redirection(netns: &str) -> Result<Vec<String>> {
    let save = exec_in(netns, &["iptables-save"])?;
    let mut table = "";
    let mut lines = Vec::new();
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if line.contains("ISTIO") {
            lines.push(format!("{table} {line}"));
        }
    }
    let rules = exec_in(netns, &["ip", "rule", "show", "pref", "32764"])?;
    lines.extend(rules.lines().map(|l| format!("rule {l}")));
    Ok(lines)
}

/// Whether the pod's rules are all there, each exactly once.
fn assert_captured_once(netns: &str) -> Result<Vec<String>> {
    let rules = redirection(netns)?;
    let mut unique = rules.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != rules.len() {
        bail!("duplicated rules in {netns}: {rules:#?}");
    }
    for needle in [
        "nat -A OUTPUT -j ISTIO_OUTPUT",
        "nat -A PREROUTING -j ISTIO_PRERT",
        "mangle -A OUTPUT -j ISTIO_OUTPUT",
        "mangle -A PREROUTING -j ISTIO_PRERT",
        "--to-ports 15001",
        "--to-ports 15006",
        "rule ",
    ] {
        if !rules.iter().any(|l| l.contains(needle)) {
            bail!("{netns} lacks {needle:?}: {rules:#?}");
        }
    }
    Ok(rules)
}

fn pod_pid(cluster: &Cluster, pod: &str) -> Result<u32> {
    cluster
        .pod_states()
        .into_iter()
        .find(|s| s.pod == pod)
        .and_then(|s| s.pid)
        .with_context(|| format!("{pod} has no pid"))
}

fn pod_log(setup: &Setup, pod: &str) -> Result<String> {
    let file = format!("{}.log", pod.replace('/', "."));
    Ok(std::fs::read_to_string(
        setup.options.state_dir().join("pods").join(file),
    )?)
}

/// Lines of the client's log from `from` on that report a failed attempt.
fn failures_since(setup: &Setup, pod: &str, from: usize) -> Result<Vec<String>> {
    Ok(pod_log(setup, pod)?
        .lines()
        .skip(from)
        .filter(|l| l.starts_with("failed"))
        .map(str::to_string)
        .collect())
}

/// Polls `check` every 20 ms (finer than `eventually`'s back-off, as the
/// time it first holds is the figure measured) for at most `patience`.
fn time_until(patience: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let last = check();
        if matches!(last, Ok(true)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > patience {
            bail!("not true after {patience:?}: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to the recorded process `name`, waiting until it is gone.
async fn kill_recorded(cluster: &Cluster, name: &str) -> Result<()> {
    let (pid, start) = recorded_process(&cluster.plan().state_dir, name)?;
    assert!(process::is_running(pid, start), "{name} is not running");
    process::kill(pid);
    eventually(&format!("{name} is gone"), PATIENCE, || async move {
        if process::is_running(pid, start) {
            bail!("still running")
        }
        Ok(())
    })
    .await
}

/// Opens a TCP connection from inside the pod's network namespace, as its
/// app would.
fn connect_from_pod(netns: &str, target: SocketAddr) -> Result<std::net::TcpStream> {
    let home = Netns::current()?;
    let pod = Netns::open(&netns_path(netns))?;
    let stream = pod.run(&home, || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn exchange(stream: &mut std::net::TcpStream, line: &str) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    writeln!(stream, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut reply)?;
    if reply.is_empty() {
        bail!("the connection closed");
    }
    Ok(reply.trim_end().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn labelling_a_namespace_moves_its_running_pods_into_the_mesh_and_out() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1", "node-2"])),
        (
            "namespaces.yaml",
            format!(
                "{}---\n{}",
                namespace("client", false),
                namespace("server", true)
            ),
        ),
        ("server.yaml", server("server", "node-2")),
        ("client.yaml", client("client", "node-1")),
    ])?;
    let cluster = up(&setup)?;
    let pid = pod_pid(&cluster, "client/client")?;
    let client_netns = pod_netns(&cluster, "client/client")?;
    wait_enrolled(&cluster, "node-2", "server/server").await?;
    eventually("plaintext calls reach the server", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            if plaintext_in(&cluster, "node-2")? > 0 {
                Ok(())
            } else {
                bail!("none yet")
            }
        }
    })
    .await?;
    assert_eq!(mtls_from(&cluster, "node-2", "client")?, 0);
    assert!(redirection(&client_netns)?.is_empty());

    let log_mark = pod_log(&setup, "client/client")?.lines().count();
    set_namespace_mode(&setup, "client", Some("ambient"))?;
    let took = time_until(Duration::from_secs(10), || {
        Ok(mtls_from(&cluster, "node-2", "client")? > 0)
    })?;
    println!("label to first mTLS connection: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "enrolment took {took:?}");
    wait_enrolled(&cluster, "node-1", "client/client").await?;
    assert_captured_once(&client_netns)?;
    assert_eq!(
        pod_pid(&cluster, "client/client")?,
        pid,
        "the pod restarted"
    );
    let failures = failures_since(&setup, "client/client", log_mark)?;
    assert!(
        failures.is_empty(),
        "calls failed while enrolling: {failures:?}"
    );

    set_namespace_mode(&setup, "client", None)?;
    eventually("the client is out of the mesh", PATIENCE, || {
        let (cluster, netns) = (cluster.clone(), client_netns.clone());
        async move {
            let entry = agent_entry(&cluster, "node-1", "client/client")?;
            let rules = redirection(&netns)?;
            let state = ztunnel_state(&cluster, "node-1", "client/client")?;
            if entry["enrolled"] == false && rules.is_empty() && state.is_none() {
                Ok(())
            } else {
                bail!("agent: {entry}; rules: {rules:?}; ztunnel: {state:?}")
            }
        }
    })
    .await?;
    let mtls = mtls_from(&cluster, "node-2", "client")?;
    let plain = plaintext_in(&cluster, "node-2")?;
    eventually("calls are plaintext again", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            let now = plaintext_in(&cluster, "node-2")?;
            if now >= plain + 3 {
                Ok(())
            } else {
                bail!("{} plaintext calls since", now - plain)
            }
        }
    })
    .await?;
    assert_eq!(mtls_from(&cluster, "node-2", "client")?, mtls);
    assert_eq!(
        pod_pid(&cluster, "client/client")?,
        pid,
        "the pod restarted"
    );
    down_and_check(&setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_opened_before_enrolment_keeps_working_after_it() -> Result<()> {
    // Client and server both enrol with their namespace: the connection
    // meets the new rules on both ends.
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1"])),
        ("namespaces.yaml", namespace("demo", false)),
        ("server.yaml", server("demo", "node-1")),
        ("client.yaml", client("demo", "node-1")),
    ])?;
    let cluster = up(&setup)?;
    let client_netns = pod_netns(&cluster, "demo/client")?;
    let server_ip = cluster.pod_ip("demo/server").context("server IP")?;
    let mut long_lived = connect_from_pod(&client_netns, SocketAddr::from((server_ip, 8080)))?;
    let reply = exchange(&mut long_lived, "before")?;
    assert!(reply.starts_with("server got \"before\""), "{reply}");

    set_namespace_mode(&setup, "demo", Some("ambient"))?;
    for pod in ["demo/client", "demo/server"] {
        wait_enrolled(&cluster, "node-1", pod).await?;
    }
    eventually("new connections are mTLS", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            if mtls_from(&cluster, "node-1", "demo")? >= 3 {
                Ok(())
            } else {
                bail!("not yet")
            }
        }
    })
    .await?;
    for i in 0..3 {
        let reply = exchange(&mut long_lived, &format!("after {i}"))
            .context("the connection opened before enrolment")?;
        assert!(
            reply.starts_with(&format!("server got \"after {i}\"")),
            "{reply}"
        );
    }
    drop(long_lived);
    down_and_check(&setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_agent_leaves_pods_captured_and_enrols_new_pods_on_return() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1"])),
        ("namespaces.yaml", namespace("demo", true)),
        ("server.yaml", server("demo", "node-1")),
        ("client.yaml", client("demo", "node-1")),
    ])?;
    let cluster = up(&setup)?;
    let plan = cluster.plan().clone();
    let pods = ["demo/server", "demo/client"];
    let mut before = Vec::new();
    for pod in pods {
        wait_enrolled(&cluster, "node-1", pod).await?;
        before.push(assert_captured_once(&pod_netns(&cluster, pod)?)?);
    }

    kill_recorded(&cluster, "node-agent node-1").await?;
    let mtls = mtls_from(&cluster, "node-1", "demo")?;
    eventually("calls go over mTLS with the agent down", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            if mtls_from(&cluster, "node-1", "demo")? >= mtls + 3 {
                Ok(())
            } else {
                bail!("not yet")
            }
        }
    })
    .await?;
    std::fs::write(
        setup.dir.join("late.yaml"),
        pod(
            "demo",
            "late",
            "node-1",
            &["ambit", "app", "server", "--port", "9000"],
            &[],
        ),
    )?;
    eventually("the new pod waits for the agent", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            let states = cluster.pod_states();
            let late = states
                .iter()
                .find(|s| s.pod == "demo/late")
                .context("not seen yet")?;
            match &late.last_error {
                Some(_) if late.ip.is_none() => Ok(()),
                other => bail!("{:?}: {other:?}", late.phase),
            }
        }
    })
    .await?;

    mesh::start_node_agent(
        &plan,
        &plan.nodes[0],
        &setup.options.binaries,
        &Journal::new(&plan.state_dir),
    )?;
    wait_enrolled(&cluster, "node-1", "demo/late").await?;
    eventually("the new pod runs", PATIENCE, || {
        let cluster = cluster.clone();
        async move { cluster.pod_ip("demo/late").context("not running") }
    })
    .await?;
    for (pod, before) in pods.iter().zip(&before) {
        wait_enrolled(&cluster, "node-1", pod).await?;
        let after = assert_captured_once(&pod_netns(&cluster, pod)?)?;
        assert_eq!(&after, before, "{pod}'s rules changed");
    }
    assert_captured_once(&pod_netns(&cluster, "demo/late")?)?;
    down_and_check(&setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_ztunnel_takes_every_pod_back_and_enrols_pods_made_while_down() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1"])),
        ("namespaces.yaml", namespace("demo", true)),
        ("server.yaml", server("demo", "node-1")),
        ("client.yaml", client("demo", "node-1")),
    ])?;
    let cluster = up(&setup)?;
    let plan = cluster.plan().clone();
    for pod in ["demo/server", "demo/client"] {
        wait_enrolled(&cluster, "node-1", pod).await?;
    }
    kill_recorded(&cluster, "ztunnel node-1").await?;
    std::fs::write(
        setup.dir.join("late.yaml"),
        pod(
            "demo",
            "late",
            "node-1",
            &[
                "ambit", "app", "client", "--target", SERVICE, "--every", "100ms",
            ],
            &[],
        ),
    )?;
    eventually("the new pod waits for ztunnel", PATIENCE, || {
        let cluster = cluster.clone();
        async move {
            let states = cluster.pod_states();
            let late = states
                .iter()
                .find(|s| s.pod == "demo/late")
                .context("not seen yet")?;
            // Known to the agent: its CNI ADD arrived and waits for ztunnel.
            let entry = agent_entry(&cluster, "node-1", "demo/late")?;
            if late.pid.is_none() {
                Ok(())
            } else {
                bail!("it runs without ztunnel: {late:?}; agent: {entry}")
            }
        }
    })
    .await?;

    let client_mark = pod_log(&setup, "demo/client")?.lines().count();
    mesh::start_ztunnel(
        &plan.nodes[0],
        &setup.options.binaries,
        &Journal::new(&plan.state_dir),
    )?;
    for pod in ["demo/server", "demo/client", "demo/late"] {
        wait_enrolled(&cluster, "node-1", pod).await?;
    }
    eventually("the new pod runs", PATIENCE, || {
        let cluster = cluster.clone();
        async move { cluster.pod_ip("demo/late").context("not running") }
    })
    .await?;
    eventually("calls of both clients go over mTLS again", PATIENCE, || {
        let setup = &setup;
        let cluster = cluster.clone();
        async move {
            let ok = |pod, from| -> Result<usize> {
                Ok(pod_log(setup, pod)?
                    .lines()
                    .skip(from)
                    .filter(|l| l.starts_with("ok"))
                    .count())
            };
            let (late, client) = (ok("demo/late", 0)?, ok("demo/client", client_mark)?);
            let mtls = mtls_from(&cluster, "node-1", "demo")?;
            if late >= 3 && client >= 3 && mtls >= 6 {
                Ok(())
            } else {
                bail!("ok calls: {late} of the new pod, {client} of the old; {mtls} mTLS")
            }
        }
    })
    .await?;
    let failures = failures_since(&setup, "demo/late", 0)?;
    assert!(
        failures.is_empty(),
        "the new pod's calls failed: {failures:?}"
    );
    down_and_check(&setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_opting_out_stays_out_of_an_ambient_namespace() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1"])),
        ("namespaces.yaml", namespace("demo", true)),
        ("server.yaml", server("demo", "node-1")),
        (
            "client.yaml",
            pod(
                "demo",
                "client",
                "node-1",
                &[
                    "ambit", "app", "client", "--target", SERVICE, "--every", "100ms",
                ],
                &[(MODE, "none")],
            ),
        ),
    ])?;
    let cluster = up(&setup)?;
    wait_enrolled(&cluster, "node-1", "demo/server").await?;
    eventually(
        "plaintext calls reach the server's ztunnel",
        PATIENCE,
        || {
            let cluster = cluster.clone();
            async move {
                if plaintext_in(&cluster, "node-1")? >= 3 {
                    Ok(())
                } else {
                    bail!("not yet")
                }
            }
        },
    )
    .await?;
    let entry = agent_entry(&cluster, "node-1", "demo/client")?;
    assert_eq!(entry["enrolled"], false, "{entry}");
    assert_eq!(ztunnel_state(&cluster, "node-1", "demo/client")?, None);
    let rules = redirection(&pod_netns(&cluster, "demo/client")?)?;
    assert!(rules.is_empty(), "{rules:?}");
    assert_eq!(mtls_from(&cluster, "node-1", "demo")?, 0);
    down_and_check(&setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_pods_first_connection_goes_over_mtls() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1", "node-2"])),
        ("namespaces.yaml", namespace("demo", true)),
        ("server.yaml", server("demo", "node-2")),
        (
            "strict.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n".into(),
        ),
    ])?;
    let cluster = up(&setup)?;
    wait_enrolled(&cluster, "node-2", "demo/server").await?;
    // Plaintext is refused: a call from outside the mesh (node-1 itself)
    // fails.
    let server_ip = cluster.pod_ip("demo/server").context("server IP")?;
    let target = format!("{server_ip}:8080");
    let out = exec_in(
        &node_netns(&cluster, "node-1")?,
        &[
            env!("CARGO_BIN_EXE_ambit"),
            "app",
            "client",
            "--target",
            &target,
            "--count",
            "1",
        ],
    )?;
    assert!(out.starts_with("failed"), "{out}");
    std::fs::write(
        setup.dir.join("first.yaml"),
        pod(
            "demo",
            "first",
            "node-1",
            &[
                "ambit", "app", "client", "--target", SERVICE, "--count", "1",
            ],
            &[],
        ),
    )?;
    let log = eventually("the new pod made its call", PATIENCE, || async {
        let log = pod_log(&setup, "demo/first").unwrap_or_default();
        if log.lines().count() >= 1 {
            Ok(log)
        } else {
            bail!("no call yet")
        }
    })
    .await?;
    assert!(
        log.starts_with(&format!("ok {SERVICE} server got")),
        "{log}"
    );
    assert_eq!(mtls_from(&cluster, "node-2", "demo")?, 1);
    down_and_check(&setup)
}

/// Longest an attempt may take while its namespace leaves the mesh: a call
/// either completes or fails fast (refused, reset); the clients' own timeout
/// is well above it, so a hung attempt shows as a failure that took longer.
const IN_FLIGHT_BOUND: Duration = Duration::from_millis(2000);
const CALLERS: usize = 16;

/// `CALLERS` pods in `ns` on `node`, each calling `target` every 20 ms with a
/// 4 s timeout.
fn callers(ns: &str, node: &str, target: &str) -> String {
    (0..CALLERS)
        .map(|i| {
            pod(
                ns,
                &format!("caller-{i}"),
                node,
                &[
                    "ambit",
                    "app",
                    "client",
                    "--target",
                    target,
                    "--every",
                    "20ms",
                    "--timeout",
                    "4s",
                ],
                &[],
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn caller_names(ns: &str) -> Vec<String> {
    (0..CALLERS).map(|i| format!("{ns}/caller-{i}")).collect()
}

/// Attempts each caller finished since `marks` (log line counts).
fn attempts_since(setup: &Setup, pods: &[String], marks: &[usize]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (pod, &mark) in pods.iter().zip(marks) {
        lines.extend(pod_log(setup, pod)?.lines().skip(mark).map(str::to_string));
    }
    Ok(lines)
}

fn log_marks(setup: &Setup, pods: &[String]) -> Result<Vec<usize>> {
    pods.iter()
        .map(|p| Ok(pod_log(setup, p)?.lines().count()))
        .collect()
}

/// Waits until every caller has finished `n` attempts since `marks`: then
/// every attempt in flight at the time of the marks has ended.
async fn wait_attempts(setup: &Setup, pods: &[String], marks: &[usize], n: usize) -> Result<()> {
    eventually(
        &format!("{n} attempts by every caller"),
        PATIENCE,
        || async {
            for (pod, &mark) in pods.iter().zip(marks) {
                let done = pod_log(setup, pod)?.lines().count() - mark;
                if done < n {
                    bail!("{pod}: {done} attempts");
                }
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_in_flight_when_a_namespace_leaves_the_mesh_never_hang() -> Result<()> {
    let setup = mesh_setup(&[
        ("nodes.yaml", nodes(&["node-1", "node-2"])),
        (
            "namespaces.yaml",
            format!(
                "{}---\n{}",
                namespace("client", true),
                namespace("server", true)
            ),
        ),
        ("server.yaml", server("server", "node-2")),
    ])?;
    let cluster = up(&setup)?;
    wait_enrolled(&cluster, "node-2", "server/server").await?;
    let server_ip = cluster.pod_ip("server/server").context("server IP")?;
    std::fs::write(
        setup.dir.join("callers.yaml"),
        callers("client", "node-1", &format!("{server_ip}:8080")),
    )?;
    let pods = caller_names("client");
    for pod in &pods {
        wait_enrolled(&cluster, "node-1", pod).await?;
    }
    let mut slow = Vec::new();
    for round in 0..2 {
        // Calls go over mTLS before the namespace leaves.
        let before = mtls_from(&cluster, "node-2", "client")?;
        eventually("the callers' calls are mTLS", PATIENCE, || {
            let cluster = cluster.clone();
            async move {
                if mtls_from(&cluster, "node-2", "client")? >= before + CALLERS as u64 {
                    Ok(())
                } else {
                    bail!("not yet")
                }
            }
        })
        .await?;
        let marks = log_marks(&setup, &pods)?;
        set_namespace_mode(&setup, "client", None)?;
        eventually("the callers are out of the mesh", PATIENCE, || async {
            for pod in &pods {
                let entry = agent_entry(&cluster, "node-1", pod)?;
                if entry["enrolled"] != false || ztunnel_state(&cluster, "node-1", pod)?.is_some() {
                    bail!("{pod}: {entry}");
                }
            }
            Ok(())
        })
        .await?;
        // Every attempt in flight at the removal ends before these do.
        let out = log_marks(&setup, &pods)?;
        wait_attempts(&setup, &pods, &out, 5).await?;
        let attempts = attempts_since(&setup, &pods, &marks)?;
        let failed: Vec<&String> = attempts
            .iter()
            .filter(|l| l.starts_with("failed"))
            .collect();
        println!(
            "round {round}: {} attempts across the removal, {} failed: {failed:?}",
            attempts.len(),
            failed.len()
        );
        slow.extend(
            attempts
                .iter()
                .filter(|l| {
                    ambit::app::failed_after(l)
                        .is_some_and(|ms| ms >= IN_FLIGHT_BOUND.as_millis() as u64)
                })
                .cloned(),
        );
        set_namespace_mode(&setup, "client", Some("ambient"))?;
        for pod in &pods {
            wait_enrolled(&cluster, "node-1", pod).await?;
        }
    }
    assert!(
        slow.is_empty(),
        "{} attempts hung past {IN_FLIGHT_BOUND:?} while the namespace left the mesh: {slow:#?}",
        slow.len()
    );
    down_and_check(&setup)
}
