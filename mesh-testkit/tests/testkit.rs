//! Tests of mesh-testkit itself. They need root: they create real namespaces and links.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use mesh_testkit::{EchoServer, Netns, TwoHosts, echo_roundtrip, eventually, require_root, veth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The inode of the network namespace `path` (a `/proc/.../ns/net` or netns handle)
/// refers to.
fn netns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat netns").ino()
}

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn netns_is_created_and_removed_on_drop() {
    require_root();
    let ns = Netns::new("life").unwrap();
    let name = ns.name().to_owned();
    assert!(
        name.starts_with(&format!("amb-{}-", std::process::id())),
        "{name}"
    );
    assert!(name.ends_with("-life"), "{name}");
    assert!(ns.path().exists());
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&name))
            .unwrap()
    );
    // Fresh namespace: only loopback, and it is up.
    let links = ns.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let path = ns.path();
    drop(ns);
    assert!(!path.exists(), "{} still exists after drop", path.display());
}

#[test]
fn netns_is_removed_when_the_test_body_panics() {
    require_root();
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic").unwrap();
        *seen.lock().unwrap() = Some(ns.path());
        panic!("test body fails");
    });
    assert!(result.is_err());
    let path = seen.into_inner().unwrap().expect("namespace was created");
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn namespaces_can_be_created_in_parallel() {
    require_root();
    let names: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let ns = Netns::new(&format!("par{i}")).unwrap();
                    assert!(ns.path().exists());
                    ns.name().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn exec_runs_in_the_namespace_and_errors_carry_stderr() {
    require_root();
    let ns = Netns::new("exec").unwrap();
    let own = ns.exec("readlink", &["/proc/self/ns/net"]).unwrap();
    assert_eq!(own.trim(), format!("net:[{}]", netns_inode(&ns.path())));

    let err = ns
        .exec(
            "sh",
            &["-c", "echo to-stdout; echo boom-marker >&2; exit 3"],
        )
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("boom-marker"), "{msg}");
    assert!(msg.contains("sh -c"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
}

#[test]
fn run_enters_the_namespace_and_propagates_panics() {
    require_root();
    let ns = Netns::new("run").unwrap();
    let inside = ns.run(|| netns_inode(Path::new("/proc/thread-self/ns/net")));
    assert_eq!(inside, netns_inode(&ns.path()));
    assert_ne!(inside, netns_inode(Path::new("/proc/thread-self/ns/net")));

    let borrowed = String::from("borrowed");
    assert_eq!(ns.run(|| borrowed.len()), 8);

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inside the namespace"))
    }));
    let payload = panicked.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"inside the namespace")
    );
}

#[tokio::test]
async fn child_guard_kills_on_drop() {
    require_root();
    let ns = Netns::new("kill").unwrap();
    let child = ns.spawn("sleep", &["1000"]).unwrap();
    let pid = child.pid();
    assert!(child.is_running());
    assert!(pid_exists(pid));
    // `ip netns exec` execs the program in place: once it has, the pid is `sleep`, in
    // the namespace.
    eventually("the child is sleep", Duration::from_secs(5), || async {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        if comm.trim() != "sleep" {
            bail!("comm is {comm:?}");
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        netns_inode(&ns.path())
    );
    drop(child);
    assert!(
        !pid_exists(pid),
        "pid {pid} still exists after the guard's drop"
    );
}

#[tokio::test]
async fn child_guard_kills_grandchildren() {
    require_root();
    let ns = Netns::new("group").unwrap();
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.path().display());
    let child = ns.spawn("sh", &["-c", &script]).unwrap();
    let grandchild: u32 = eventually(
        "the grandchild wrote its pid",
        Duration::from_secs(5),
        || async {
            let text = std::fs::read_to_string(pidfile.path())?;
            if !text.ends_with('\n') {
                bail!("pid file is {text:?}");
            }
            Ok(text.trim().parse()?)
        },
    )
    .await
    .unwrap();
    assert!(pid_exists(grandchild));
    drop(child);
    // The grandchild is not our child: it is dead once it is a zombie (init reaps it in
    // its own time) or gone.
    eventually("the grandchild is dead", Duration::from_secs(5), || async {
        match std::fs::read_to_string(format!("/proc/{grandchild}/stat")) {
            Ok(stat) if !stat.rsplit(") ").next().unwrap_or("").starts_with('Z') => {
                bail!("still alive: {stat}")
            }
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
}

#[test]
fn netns_drop_kills_children_whose_guard_outlives_it() {
    require_root();
    let ns = Netns::new("order").unwrap();
    let child = ns.spawn("sleep", &["1000"]).unwrap();
    let path = ns.path();
    drop(ns);
    assert!(!child.is_running());
    assert!(!pid_exists(child.pid()));
    assert!(!path.exists());
}

#[test]
fn sigterm_and_wait_timeout() {
    require_root();
    let ns = Netns::new("term").unwrap();
    let child = ns.spawn("sleep", &["1000"]).unwrap();
    assert_eq!(child.wait_timeout(Duration::from_millis(20)).unwrap(), None);
    child.sigterm().unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("sleep exits on SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!child.is_running());
    // Signalling an exited child is a no-op, not an error.
    child.sigterm().unwrap();
}

#[test]
fn spawn_with_passes_env_and_captures_output() {
    require_root();
    let ns = Netns::new("env").unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = ns
        .spawn_with(
            "sh",
            &["-c", "echo \"value=$AMBIT_TESTKIT_VAR\"; echo err-line >&2"],
            &[("AMBIT_TESTKIT_VAR", "forty two")],
            Some(out.path()),
        )
        .unwrap();
    let status = child.wait_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(out.path()).unwrap();
    assert!(text.contains("value=forty two"), "{text:?}");
    assert!(text.contains("err-line"), "{text:?}");
}

#[tokio::test]
async fn two_hosts_echo_over_ipv4_and_ipv6() {
    require_root();
    let hosts = TwoHosts::new("echo").unwrap();
    assert!(hosts.client_if.len() <= 15 && hosts.server_if.len() <= 15);
    for (client_ip, server_ip) in [
        (hosts.client_v4, hosts.server_v4),
        (hosts.client_v6, hosts.server_v6),
    ] {
        let listener = hosts
            .server
            .tcp_listener(SocketAddr::new(server_ip, 0))
            .unwrap();
        let echo = EchoServer::start(listener);
        assert_eq!(echo.addr.ip(), server_ip);

        let mut stream = hosts.client.tcp_connect(echo.addr).await.unwrap();
        // The connection went over the veth pair, from the client's address.
        assert_eq!(stream.local_addr().unwrap().ip(), client_ip);
        echo_roundtrip(&mut stream, b"hello through the veth")
            .await
            .unwrap();
        // Larger than the socket buffers: needs concurrent write and read.
        let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        echo_roundtrip(&mut stream, &big).await.unwrap();
        assert_eq!(echo.accepted(), 1);

        // Half-close: the server echoes what is in flight, then half-closes in turn.
        stream.write_all(b"last words").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"last words");
        let expected = (22 + big.len() + 10) as u64;
        eventually("all bytes are counted", Duration::from_secs(5), || async {
            match echo.bytes_echoed() {
                n if n == expected => Ok(()),
                n => bail!("{n} of {expected} bytes"),
            }
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn namespaces_are_isolated() {
    require_root();
    let hosts = TwoHosts::new("iso").unwrap();
    // A listener on the server's loopback is not reachable from the client.
    let listener = hosts
        .server
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let echo = EchoServer::start(listener);
    let err = hosts.client.tcp_connect(echo.addr).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(&echo.addr.to_string()),
        "{err:#}"
    );
    assert_eq!(echo.accepted(), 0);
}

#[test]
fn several_links_between_the_same_namespaces() {
    require_root();
    let a = Netns::new("la").unwrap();
    let b = Netns::new("lb").unwrap();
    let first = veth::veth_pair(
        &a,
        &["10.2.1.1/24".parse().unwrap()],
        &b,
        &["10.2.1.2/24".parse().unwrap()],
    )
    .unwrap();
    veth::link(
        &a,
        &[
            "10.2.2.1/24".parse().unwrap(),
            "fd00:b::1/64".parse().unwrap(),
        ],
        &b,
        &[
            "10.2.2.2/24".parse().unwrap(),
            "fd00:b::2/64".parse().unwrap(),
        ],
    )
    .unwrap();
    let links = a.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 3, "{links}");
    assert!(links.contains(&format!("{}@", first.a_if)), "{links}");
    assert!(links.contains("mtu 1500"), "{links}");
    let v6 = b.ip(&["-6", "addr"]).unwrap();
    assert!(
        v6.contains("fd00:b::2/64") && !v6.contains("tentative"),
        "{v6}"
    );
    // Reachable over both links, from sockets made with `run` (no runtime needed).
    for (from, to) in [("10.2.1.1", "10.2.1.2"), ("fd00:b::1", "fd00:b::2")] {
        let to: std::net::IpAddr = to.parse().unwrap();
        let listener = b
            .run(|| std::net::TcpListener::bind(SocketAddr::new(to, 0)))
            .unwrap();
        let target = listener.local_addr().unwrap();
        let stream = a
            .run(|| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .unwrap();
        assert_eq!(stream.local_addr().unwrap().ip().to_string(), from);
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
    }
}

#[tokio::test]
async fn eventually_retries_until_ok_and_reports_the_last_error() {
    let attempts = AtomicU32::new(0);
    let value = eventually("third time lucky", Duration::from_secs(5), || async {
        match attempts.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => bail!("not yet"),
            n => Ok(n),
        }
    })
    .await
    .unwrap();
    assert_eq!(value, 2);

    let err = eventually("the sky is green", Duration::from_millis(50), || async {
        Err::<(), _>(anyhow::anyhow!("it is blue"))
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the sky is green: not true after 50ms: it is blue"
    );

    // A hanging attempt does not hang the caller.
    let err = eventually("hangs", Duration::from_millis(50), || {
        std::future::pending::<Result<()>>()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with("hangs: not true after 50ms"),
        "{err}"
    );
}

#[tokio::test]
async fn echo_roundtrip_detects_a_mismatch() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A server that answers with the wrong bytes.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"abX").await.unwrap();
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = echo_roundtrip(&mut stream, b"abc").await.unwrap_err();
    assert!(err.to_string().contains("byte 2 differs"), "{err}");
    server.await.unwrap();
}

#[test]
fn require_root_passes_as_root() {
    // These tests run as root; without it this panics, which is the point.
    require_root();
}

#[tokio::test]
async fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Netns>();
    send_sync::<TwoHosts>();
    send_sync::<mesh_testkit::ChildGuard>();
    send_sync::<EchoServer>();
    require_root();
    // `tcp_connect` futures can be spawned.
    let hosts = std::sync::Arc::new(TwoHosts::new("send").unwrap());
    let echo = EchoServer::start(
        hosts
            .server
            .tcp_listener(SocketAddr::new(hosts.server_v4, 0))
            .unwrap(),
    );
    let addr = echo.addr;
    let task = tokio::spawn({
        let hosts = hosts.clone();
        async move {
            let mut stream = hosts.client.tcp_connect(addr).await?;
            echo_roundtrip(&mut stream, b"spawned").await
        }
    });
    task.await.unwrap().unwrap();
}
