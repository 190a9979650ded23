//! Kubelet probes on the node side (spec 6.2): locally originated TCP to an
//! enrolled pod's address leaves the node with source 169.254.7.127 (or
//! `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`), which the pod's rules let
//! through to the app instead of capturing it. Forwarded traffic is not
//! rewritten. Where Istio keeps the addresses in an ipset, this keeps one
//! rule per address in `ISTIO_POSTRT`, so no ipset tooling is needed; the
//! chain is rewritten whole, in one transaction, whenever the set changes.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use super::{Family, Saved};

pub const POSTRT: &str = "ISTIO_POSTRT";

/// The `iptables-restore --noflush` input that makes `ISTIO_POSTRT` rewrite
/// probes to exactly `addresses` (of `family`).
pub fn snat_script(family: Family, addresses: &BTreeSet<IpAddr>, current: &Saved) -> String {
    let (source, prefix) = match family {
        Family::V4 => ("169.254.7.127", 32),
        Family::V6 => ("fd16:9254:7127:1337:ffff:ffff:ffff:ffff", 128),
    };
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{POSTRT} - [0:0]");
    let jump = format!("-j {POSTRT}");
    if !current
        .rules("nat", "POSTROUTING")
        .iter()
        .any(|r| r.trim() == jump)
    {
        let _ = writeln!(out, "-A POSTROUTING -j {POSTRT}");
    }
    for address in addresses
        .iter()
        .filter(|a| a.is_ipv6() == (family == Family::V6))
    {
        let _ = writeln!(
            out,
            "-A {POSTRT} -d {address}/{prefix} -p tcp -m owner --socket-exists -j SNAT --to-source {source}"
        );
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_address_of_the_family_and_one_jump() {
        let addresses: BTreeSet<IpAddr> = ["10.1.0.5", "10.1.0.6", "fd00::5"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let script = snat_script(Family::V4, &addresses, &Saved::default());
        assert_eq!(
            script,
            "*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n\
             -A ISTIO_POSTRT -d 10.1.0.5/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127\n\
             -A ISTIO_POSTRT -d 10.1.0.6/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127\n\
             COMMIT\n"
        );
        let v6 = snat_script(Family::V6, &addresses, &Saved::default());
        assert!(v6.contains("-d fd00::5/128 -p tcp -m owner --socket-exists -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff"));
        let present = Saved::parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\nCOMMIT\n",
        );
        let again = snat_script(Family::V4, &BTreeSet::new(), &present);
        assert_eq!(again, "*nat\n:ISTIO_POSTRT - [0:0]\nCOMMIT\n");
    }
}
