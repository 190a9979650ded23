//! veth pairs between namespaces, and [`TwoHosts`]: a client and a server namespace
//! joined by one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::names;
use crate::netns::Netns;

/// How long [`link`] waits for the link and its IPv6 addresses to become usable.
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

/// The interface names of a veth pair made by [`veth_pair`]; each name is unique to
/// the process and call and at most 15 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end in namespace `a`.
    pub a_if: String,
    /// The end in namespace `b`.
    pub b_if: String,
}

/// Joins `a` and `b` with a veth pair: one end in each namespace, with the given
/// addresses, MTU 1500, up. Returns once both ends have carrier and no IPv6 address is
/// tentative (IPv6 addresses are added with `nodad` and duplicate address detection is
/// off on both ends, so this is quick).
pub fn link(a: &Netns, a_addrs: &[IpNet], b: &Netns, b_addrs: &[IpNet]) -> Result<()> {
    veth_pair(a, a_addrs, b, b_addrs).map(|_| ())
}

/// [`link`], returning the names of the two ends (for rules limited to an interface).
pub fn veth_pair(a: &Netns, a_addrs: &[IpNet], b: &Netns, b_addrs: &[IpNet]) -> Result<VethPair> {
    let (a_if, b_if) = names::veth_names();
    // Created directly in the two namespaces, so the names never exist outside them.
    crate::netns::run_cmd(std::process::Command::new("ip").args([
        "link",
        "add",
        &a_if,
        "mtu",
        "1500",
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "mtu",
        "1500",
        "netns",
        b.name(),
    ]))
    .with_context(|| {
        format!(
            "creating veth pair {a_if}/{b_if} for {} and {}",
            a.name(),
            b.name()
        )
    })?;
    let pair = VethPair { a_if, b_if };
    let configured = configure_end(a, &pair.a_if, a_addrs)
        .and_then(|()| configure_end(b, &pair.b_if, b_addrs))
        .and_then(|()| wait_usable(a, &pair.a_if, a_addrs))
        .and_then(|()| wait_usable(b, &pair.b_if, b_addrs));
    if let Err(e) = configured {
        // Deleting one end deletes the pair.
        let _ = a.ip(&["link", "del", "dev", &pair.a_if]);
        return Err(e.context(format!("setting up veth pair {}/{}", pair.a_if, pair.b_if)));
    }
    Ok(pair)
}

/// Turns off IPv6 duplicate address detection on `ifname` (so the link-local address
/// is usable at once too), adds the addresses and brings the link up.
fn configure_end(ns: &Netns, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    let sysctl = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    // /proc/sys/net shows the namespace of the thread that reads or writes it.
    ns.try_run(|| std::fs::write(&sysctl, "0"))?
        .with_context(|| format!("writing 0 to {sysctl} in {}", ns.name()))?;
    for addr in addrs {
        let cidr = addr.to_string();
        let mut args = vec!["addr", "add", &cidr, "dev", ifname];
        if addr.addr().is_ipv6() {
            args.push("nodad");
        }
        ns.ip(&args)?;
    }
    ns.ip(&["link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// Waits (bounded) until `ifname` has carrier, carries every address in `addrs` and
/// has no tentative IPv6 address.
fn wait_usable(ns: &Netns, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let mut pause = Duration::from_millis(1);
    loop {
        let link = ns.ip(&["-o", "link", "show", "dev", ifname])?;
        let v4 = ns.ip(&["-o", "-4", "addr", "show", "dev", ifname])?;
        let v6 = ns.ip(&["-o", "-6", "addr", "show", "dev", ifname])?;
        let has_all = addrs.iter().all(|a| {
            let shown = format!(" {a} ");
            if a.addr().is_ipv4() {
                v4.contains(&shown)
            } else {
                v6.contains(&shown)
            }
        });
        if link.contains("LOWER_UP") && has_all && !v6.contains("tentative") {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "{ifname} in {} not usable after {SETTLE_PATIENCE:?} \
                 (want carrier, {addrs:?}, nothing tentative):\n{link}{v4}{v6}",
                ns.name()
            );
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Two namespaces, `client` and `server`, joined by one veth pair with 10.1.1.1/24 and
/// fd00:a::1/64 on the client end and 10.1.1.2/24 and fd00:a::2/64 on the server end.
///
/// Every `TwoHosts` uses the same addresses: each lives in its own namespaces.
#[derive(Debug)]
pub struct TwoHosts {
    /// The client side.
    pub client: Netns,
    /// The server side.
    pub server: Netns,
    /// 10.1.1.1
    pub client_v4: IpAddr,
    /// 10.1.1.2
    pub server_v4: IpAddr,
    /// fd00:a::1
    pub client_v6: IpAddr,
    /// fd00:a::2
    pub server_v6: IpAddr,
    /// The veth end in `client`.
    pub client_if: String,
    /// The veth end in `server`.
    pub server_if: String,
}

impl TwoHosts {
    /// Creates both namespaces (names ending in `<tag>-c` and `<tag>-s`, shortened) and
    /// links them; addresses are usable when this returns.
    pub fn new(tag: &str) -> Result<TwoHosts> {
        let client_v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1));
        let server_v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 1, 2));
        let client_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 1));
        let server_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 2));
        let short: String = tag.chars().take(10).collect();
        let client = Netns::new(&format!("{short}-c"))?;
        let server = Netns::new(&format!("{short}-s"))?;
        let net = |addr, prefix| IpNet::new(addr, prefix).expect("valid prefix length");
        let pair = veth_pair(
            &client,
            &[net(client_v4, 24), net(client_v6, 64)],
            &server,
            &[net(server_v4, 24), net(server_v6, 64)],
        )?;
        Ok(TwoHosts {
            client,
            server,
            client_v4,
            server_v4,
            client_v6,
            server_v6,
            client_if: pair.a_if,
            server_if: pair.b_if,
        })
    }
}
