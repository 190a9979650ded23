//! In-pod redirection (spec 6.1, the REDIRECT variant without DNS capture):
//! the rule text is generated here by pure functions, and `apply` runs it
//! inside a pod's network namespace with one `iptables-restore --noflush`
//! per address family, plus the policy route that returns ztunnel's
//! spoofed-source replies.
//!
//! Idempotence comes from the plan: our chains are declared (which flushes
//! and refills them in the same transaction) and the jumps from the built-in
//! chains are added only when `iptables-save` does not already show them.
//! Removal deletes exactly those jumps, then flushes and deletes our chains.

pub mod apply;
pub mod probe;
pub mod saved;

use std::fmt::Write;

pub use saved::Saved;

/// Chains of ours in the pod netns.
pub const PRERT: &str = "ISTIO_PRERT";
pub const OUTPUT: &str = "ISTIO_OUTPUT";
/// Connmark / route mark and its mask.
pub const ROUTE_MARK: &str = "0x111/0xfff";
/// Route table of the `local` route for marked packets.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the `ip rule` selecting that table.
pub const RULE_PREF: u32 = 32764;
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const INBOUND_HBONE_PORT: u16 = 15008;

/// IPv4 or IPv6: which tool, loopback and probe source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    pub fn save_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source kubelet probes are rewritten to on the host (spec 6.2).
    fn probe_source(self) -> &'static str {
        match self {
            Family::V4 => "169.254.7.127",
            Family::V6 => "fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
        }
    }

    pub fn any_route(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }

    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// What varies between pods and nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleOptions {
    /// ztunnel's packet mark (`PACKET_MARK`), 1337 by default.
    pub mark: u32,
    /// `ambient.istio.io/bypass-inbound-capture`: no inbound redirect.
    pub bypass_inbound: bool,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            mark: 0x539,
            bypass_inbound: false,
        }
    }
}

/// One jump from a built-in chain into ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// The jumps, in the spec's order.
pub const JUMPS: [Jump; 4] = [
    Jump {
        table: "mangle",
        from: "PREROUTING",
        to: PRERT,
    },
    Jump {
        table: "mangle",
        from: "OUTPUT",
        to: OUTPUT,
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        to: OUTPUT,
    },
    Jump {
        table: "nat",
        from: "PREROUTING",
        to: PRERT,
    },
];

/// The rules of our chains, per table, as `iptables-restore` lines
/// (`-A CHAIN ...`).
pub fn chain_rules(family: Family, options: &RuleOptions) -> Vec<(&'static str, Vec<String>)> {
    let mark = format!("0x{:x}/0xfff", options.mark);
    let lo = family.loopback();
    let probe = family.probe_source();
    let mangle = vec![
        format!("-A {PRERT} -m mark --mark {mark} -j CONNMARK --set-xmark {ROUTE_MARK}"),
        format!(
            "-A {OUTPUT} -m connmark --mark {ROUTE_MARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
    ];
    // The REDIRECTs match SYNs only. A netns without NAT rules has no
    // connection tracking, so the first packet of a connection opened before
    // enrolment is tracked as new once the rules arrive; redirected to a
    // ztunnel that never saw its handshake it would be reset. New
    // connections are unaffected: NAT only ever sees their first packet, the
    // SYN.
    let mut nat = Vec::new();
    if !options.bypass_inbound {
        nat.push(format!("-A {PRERT} -s {probe} -p tcp -j ACCEPT"));
        nat.push(format!(
            "-A {PRERT} ! -d {lo} -p tcp --syn ! --dport {INBOUND_HBONE_PORT} -m mark ! --mark {mark} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"
        ));
    }
    nat.push(format!("-A {OUTPUT} -d {probe} -p tcp -j ACCEPT"));
    nat.push(format!(
        "-A {OUTPUT} -p tcp -m mark --mark {ROUTE_MARK} -j ACCEPT"
    ));
    nat.push(format!("-A {OUTPUT} ! -d {lo} -o lo -j ACCEPT"));
    nat.push(format!(
        "-A {OUTPUT} ! -d {lo} -p tcp --syn -m mark ! --mark {mark} -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
    vec![("mangle", mangle), ("nat", nat)]
}

/// The `iptables-restore --noflush` input that installs (or refreshes) the
/// rule set, given what `iptables-save` shows in the netns now.
pub fn install_script(family: Family, options: &RuleOptions, current: &Saved) -> String {
    let mut out = String::new();
    for (table, rules) in chain_rules(family, options) {
        let _ = writeln!(out, "*{table}");
        // Declaring a chain that exists flushes it: the refill below is the
        // whole content afterwards, in the same transaction.
        for chain in [PRERT, OUTPUT] {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for jump in JUMPS.iter().filter(|j| j.table == table) {
            if !current.has_jump(jump) {
                let _ = writeln!(out, "-A {} -j {}", jump.from, jump.to);
            }
        }
        for rule in rules {
            let _ = writeln!(out, "{rule}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// The input that stops redirecting new connections and nothing else: the
/// jumps into our `nat` chains go, the chains themselves stay. A REDIRECT
/// rule is what keeps connection tracking on in the netns (the kernel turns
/// it off with the last rule that needs it), and with it the address
/// translation of connections redirected earlier: while the rule exists,
/// ztunnel's packets on those connections still reach the app as coming
/// from the address the app dialled. The `mangle` rules and the policy route
/// stay too: they carry the app's replies on connections ztunnel made into
/// the pod back to ztunnel. `removal_script` takes the rest once ztunnel has
/// closed the pod's connections. `None` when no jump is there.
pub fn stop_script(current: &Saved) -> Option<String> {
    let jumps: Vec<_> = JUMPS
        .iter()
        .filter(|j| j.table == "nat" && current.has_jump(j))
        .collect();
    if jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in jumps {
        for _ in 0..current.jump_count(jump) {
            let _ = writeln!(out, "-D {} -j {}", jump.from, jump.to);
        }
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// The input that removes exactly our jumps and chains; `None` when there
/// is nothing of ours to remove.
pub fn removal_script(current: &Saved) -> Option<String> {
    let mut out = String::new();
    for table in ["mangle", "nat"] {
        let jumps: Vec<_> = JUMPS
            .iter()
            .filter(|j| j.table == table && current.has_jump(j))
            .collect();
        let chains: Vec<_> = [PRERT, OUTPUT]
            .into_iter()
            .filter(|c| current.has_chain(table, c))
            .collect();
        if jumps.is_empty() && chains.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        // A jump may have been added twice by hand; delete each copy.
        for jump in jumps {
            for _ in 0..current.jump_count(jump) {
                let _ = writeln!(out, "-D {} -j {}", jump.from, jump.to);
            }
        }
        for chain in &chains {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in &chains {
            let _ = writeln!(out, "-X {chain}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    (!out.is_empty()).then_some(out)
}

/// Whether the netns holds our rule set as installed: every jump once, our
/// chains with exactly the expected number of rules (a light check for CNI
/// CHECK: `iptables-save` normalizes rule text, so counts are compared).
pub fn is_installed(family: Family, options: &RuleOptions, current: &Saved) -> bool {
    JUMPS.iter().all(|j| current.jump_count(j) == 1)
        && chain_rules(family, options).iter().all(|(table, rules)| {
            [PRERT, OUTPUT].iter().all(|chain| {
                let want = rules
                    .iter()
                    .filter(|r| r.starts_with(&format!("-A {chain} ")))
                    .count();
                current.has_chain(table, chain) && current.rule_count(table, chain) == want
            })
        })
}

/// Whether anything of ours is present.
pub fn any_installed(current: &Saved) -> bool {
    JUMPS.iter().any(|j| current.has_jump(j))
        || ["mangle", "nat"]
            .iter()
            .any(|t| current.has_chain(t, PRERT) || current.has_chain(t, OUTPUT))
}

#[cfg(test)]
mod tests;
