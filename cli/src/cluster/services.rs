//! Service ClusterIPs for pods outside the mesh, as kube-proxy's iptables
//! mode gives them: in every node namespace, a nat chain `AMBIT-SERVICES`
//! (jumped to from PREROUTING and OUTPUT) DNATs each ClusterIP port to the
//! running pods the Service selects, picked at random. Enrolled pods never
//! get here for mesh traffic: their ztunnel resolves the VIP first. The rule
//! text is pure; applying it replaces the chain in one `iptables-restore`.
//! Named target ports resolve against each pod's named container ports.

use std::io::Write;
use std::net::Ipv4Addr;
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
                let state = states
                    .iter()
                    .find(|s| s.pod == p.key() && s.phase == Phase::Running)?;
                Some((state.ip?, p))
            })
            .collect();
        for port in &service.ports {
            // A named target port resolves per pod; pods without it are
            // not endpoints of this port.
            let targets: Vec<(Ipv4Addr, u16)> = endpoints
                .iter()
                .filter_map(|(ip, pod)| match &port.target {
                    TargetPort::Number(n) => Some((*ip, *n)),
                    TargetPort::Name(name) => pod.ports.get(name).map(|n| (*ip, *n)),
                })
                .collect();
            let protocol = port.protocol.to_ascii_lowercase();
            let count = targets.len();
            for (index, (ip, target)) in targets.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan::{PlanOptions, plan};
    use crate::cluster::spec::ClusterSpec;
    use mesh_registry::dir::parse_file;
    use std::path::Path;

    #[test]
    fn each_cluster_ip_port_picks_among_running_selected_pods() {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIP: 10.96.0.1, selector: {app: s}, ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: web, protocol: UDP}]}\n",
        );
        for (name, app, port) in [
            ("p1", "s", "web"),
            ("p2", "s", "other"),
            ("p3", "s", "web"),
            ("q", "x", "web"),
        ] {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, command: [x], ports: [{{name: {port}, containerPort: 9000}}]}}]}}\n"
            ));
        }
        let parsed = parse_file(Path::new("c.yaml"), &yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let spec = ClusterSpec::from_objects(parsed.objects.into_iter().map(|o| o.object));
        let options = PlanOptions {
            cluster: "t".into(),
            state_dir: "/run/t".into(),
            mesh: false,
        };
        let plan = plan(&spec, &options).unwrap();
        let states: Vec<PodState> = plan
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut state = PodState::pending(p.key(), p.node.clone());
                // p3 is not running yet.
                if p.name != "p3" {
                    state.phase = Phase::Running;
                    state.ip = Some(Ipv4Addr::new(10, 244, 0, 2 + i as u8));
                }
                state
            })
            .collect();
        assert_eq!(
            render_rules(&plan, &states),
            "*nat\n:AMBIT-SERVICES - [0:0]\n\
             -A AMBIT-SERVICES -d 10.96.0.1/32 -p tcp --dport 80 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.244.0.2:8080\n\
             -A AMBIT-SERVICES -d 10.96.0.1/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.0.3:8080\n\
             -A AMBIT-SERVICES -d 10.96.0.1/32 -p udp --dport 81 -j DNAT --to-destination 10.244.0.2:9000\n\
             COMMIT\n"
        );
    }
}
