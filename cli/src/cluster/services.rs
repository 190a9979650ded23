//! Service ClusterIPs for pods outside the mesh, as kube-proxy's iptables
//! mode gives them: in every node namespace, a nat chain `AMBIT-SERVICES`
//! (jumped to from PREROUTING and OUTPUT) DNATs each ClusterIP port to the
//! running pods the Service selects, picked at random. Enrolled pods never
//! get here for mesh traffic: their ztunnel resolves the VIP first. The rule
//! text is pure; applying it replaces the chain in one `iptables-restore`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::plan::{Plan, TargetPort};
use super::pod_status::{Phase, PodState};

pub const CHAIN: &str = "AMBIT-SERVICES";

#[derive(Debug, thiserror::Error)]
pub enum ServiceRuleError {
    #[error("`{command}` in {netns}: {message}")]
    Command {
        command: String,
        netns: String,
        message: String,
    },
}

/// The `iptables-restore --noflush` input for the whole chain.
pub fn render_rules(plan: &Plan, states: &[PodState]) -> String {
    let mut text = format!("*nat\n:{CHAIN} - [0:0]\n");
    for service in &plan.services {
        let Some(vip) = service.cluster_ip else {
            continue;
        };
        if service.selector.is_empty() {
            continue;
        }
        let endpoints: Vec<_> = plan
            .pods
            .iter()
            .filter(|p| p.namespace == service.namespace)
            .filter(|p| {
                service
                    .selector
                    .iter()
                    .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .filter_map(|p| {
                states
                    .iter()
                    .find(|s| s.pod == p.key() && s.phase == Phase::Running)
                    .and_then(|s| s.ip)
            })
            .collect();
        for port in &service.ports {
            let TargetPort::Number(target) = port.target else {
                continue;
            };
            let protocol = port.protocol.to_ascii_lowercase();
            let count = endpoints.len();
            for (index, ip) in endpoints.iter().enumerate() {
                let remaining = count - index;
                let pick = if remaining > 1 {
                    format!(
                        " -m statistic --mode random --probability {:.5}",
                        1.0 / remaining as f64
                    )
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "-A {CHAIN} -d {vip}/32 -p {protocol} --dport {}{pick} -j DNAT --to-destination {ip}:{target}\n",
                    port.port
                ));
            }
        }
    }
    text.push_str("COMMIT\n");
    text
}

/// Replaces the chain in `netns` and makes sure PREROUTING and OUTPUT jump
/// to it.
pub fn apply_rules(netns: &str, rules: &str) -> Result<(), ServiceRuleError> {
    let fail = |command: &str, message: String| ServiceRuleError::Command {
        command: command.into(),
        netns: netns.into(),
        message,
    };
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "iptables-restore",
            "-w",
            "--noflush",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail("iptables-restore", e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| fail("iptables-restore", e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| fail("iptables-restore", e.to_string()))?;
    if !output.status.success() {
        return Err(fail(
            "iptables-restore",
            String::from_utf8_lossy(&output.stderr).trim().into(),
        ));
    }
    for hook in ["PREROUTING", "OUTPUT"] {
        let present = Command::new("ip")
            .args([
                "netns", "exec", netns, "iptables", "-w", "-t", "nat", "-C", hook, "-j", CHAIN,
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            continue;
        }
        let output = Command::new("ip")
            .args([
                "netns", "exec", netns, "iptables", "-w", "-t", "nat", "-I", hook, "-j", CHAIN,
            ])
            .output()
            .map_err(|e| fail("iptables -I", e.to_string()))?;
        if !output.status.success() {
            return Err(fail(
                &format!("iptables -t nat -I {hook} -j {CHAIN}"),
                String::from_utf8_lossy(&output.stderr).trim().into(),
            ));
        }
    }
    Ok(())
}
