//! The redirection rules in a real network namespace: installed, refreshed
//! and removed as `iptables-save` shows them, and a real outbound connection
//! landing on 15001 with its original destination.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use mesh_testkit::Netns;
use node_agent::redirect::Family;
use node_agent::redirect::apply::Redirector;

fn ours(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.contains("ISTIO_")).collect()
}

#[tokio::test]
async fn rules_are_installed_refreshed_and_removed_exactly() -> Result<()> {
    let ns = Netns::new("rules")?;
    // Someone else's rule in a chain we jump from must survive us.
    ns.exec(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT"],
    )?;
    let redirector = Redirector::default();
    let path = ns.path();

    redirector.install(&path, &[Family::V4], false).await?;
    let first = ns.exec("iptables-save", &[])?;
    let rules = ours(&first);
    assert!(rules.contains(&"-A OUTPUT -j ISTIO_OUTPUT"), "{first}");
    assert!(rules.contains(&"-A PREROUTING -j ISTIO_PRERT"), "{first}");
    assert!(first.contains("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"), "{first}");
    assert!(
        first.contains("--dport 15008 --tcp-flags FIN,SYN,RST,ACK SYN -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"),
        "{first}"
    );
    assert!(
        first.contains(
            "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"
        ),
        "{first}"
    );
    // 2 jumps + 2 rules in mangle, 2 jumps + 6 rules in nat, 4 chain declarations.
    assert_eq!(rules.len(), 16, "{first}");
    let rule = ns.ip(&["rule", "show", "pref", "32764"])?;
    assert!(rule.contains("fwmark 0x111/0xfff lookup 100"), "{rule}");
    let route = ns.ip(&["route", "show", "table", "100"])?;
    assert!(route.contains("local default dev lo"), "{route}");
    assert!(redirector.is_installed(&path, &[Family::V4], false).await?);

    // Again: nothing doubles.
    redirector.install(&path, &[Family::V4], false).await?;
    let second = ns.exec("iptables-save", &[])?;
    assert_eq!(ours(&second), rules);
    assert_eq!(
        ns.ip(&["rule", "show", "pref", "32764"])?.lines().count(),
        1
    );

    // A rule added to our chain by hand is replaced by a refresh.
    ns.exec(
        "iptables",
        &["-t", "nat", "-A", "ISTIO_OUTPUT", "-j", "RETURN"],
    )?;
    assert!(!redirector.is_installed(&path, &[Family::V4], false).await?);
    redirector.install(&path, &[Family::V4], false).await?;
    assert_eq!(ours(&ns.exec("iptables-save", &[])?), rules);

    redirector.remove(&path).await?;
    let after = ns.exec("iptables-save", &[])?;
    assert!(ours(&after).is_empty(), "{after}");
    assert!(after.contains("-A OUTPUT -p udp -j ACCEPT"), "{after}");
    assert!(ns.ip(&["rule", "show", "pref", "32764"])?.trim().is_empty());
    assert!(ns.ip(&["route", "show", "table", "100"])?.trim().is_empty());
    // Idempotent.
    redirector.remove(&path).await?;
    assert!(!redirector.any_installed(&path).await?);
    Ok(())
}

#[tokio::test]
async fn an_outbound_connection_reaches_15001_with_its_original_destination() -> Result<()> {
    let ns = Netns::new("redir")?;
    // An interface with a route to the destination (its peer stays in
    // the namespace; nothing answers there).
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
    ns.ip(&["addr", "add", "10.200.0.2/24", "dev", "va"])?;
    ns.ip(&["link", "set", "va", "up"])?;
    ns.ip(&["link", "set", "vb", "up"])?;
    Redirector::default()
        .install(&ns.path(), &[Family::V4], false)
        .await?;
    let listener = ns.tcp_listener("0.0.0.0:15001".parse()?)?;
    let target: SocketAddr = "10.200.0.9:8080".parse()?;
    let connect = ns.tcp_connect(target);
    let accept = tokio::time::timeout(Duration::from_secs(5), listener.accept());
    let (client, accepted) = tokio::join!(connect, accept);
    let _client = client?;
    let (stream, _) = accepted??;
    let original = socket2::SockRef::from(&stream).original_dst_v4()?;
    assert_eq!(original.as_socket(), Some(target));

    // A connection carrying ztunnel's mark is not captured.
    let marked = ns.try_run(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_mark(0x539)?;
        socket.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(socket)
    })??;
    let _ = marked.connect(&target.into());
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "a marked connection was redirected");
    Ok(())
}

#[tokio::test]
async fn ipv6_gets_its_own_rules_and_route() -> Result<()> {
    let ns = Netns::new("rules6")?;
    let redirector = Redirector::default();
    let path = ns.path();
    redirector
        .install(&path, &[Family::V4, Family::V6], false)
        .await?;
    let saved6 = ns.exec("ip6tables-save", &[])?;
    assert!(saved6.contains("-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"), "{saved6}");
    assert!(
        saved6.contains(
            "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT"
        ),
        "{saved6}"
    );
    let rule = ns.ip(&["-6", "rule", "show", "pref", "32764"])?;
    assert!(rule.contains("fwmark 0x111/0xfff lookup 100"), "{rule}");
    let route = ns.ip(&["-6", "route", "show", "table", "100"])?;
    assert!(route.contains("local default dev lo"), "{route}");
    assert!(
        redirector
            .is_installed(&path, &[Family::V4, Family::V6], false)
            .await?
    );

    redirector.remove(&path).await?;
    assert!(ours(&ns.exec("ip6tables-save", &[])?).is_empty());
    assert!(ours(&ns.exec("iptables-save", &[])?).is_empty());
    assert!(
        ns.ip(&["-6", "rule", "show", "pref", "32764"])?
            .trim()
            .is_empty()
    );
    assert!(
        ns.ip(&["-6", "route", "show", "table", "100"])?
            .trim()
            .is_empty()
    );
    Ok(())
}
