//! L4 authorization (spec section 10): a pure decision from the state, the
//! destination workload and the connection's attributes.
//!
//! Order: PeerAuthentication STRICT refuses plaintext; then any matching DENY
//! refuses; then, if any ALLOW applies, one must match. AUDIT policies are
//! recorded and never change the outcome; dry-run policies are only reported.
//! L7-only fields can never widen access: an ALLOW match that carries them
//! never matches, and a DENY match ignores them and enforces the rest (so an
//! L7-only DENY match denies at L4).

use std::net::{IpAddr, SocketAddr};

use mesh_core::Identity;

use crate::config::{
    Action, Authorization, Cidr, Match, MtlsMode, PeerAuthentication, ROOT_NAMESPACE, Scope,
    ServiceAccountMatch, StringMatch,
};
use crate::state::{State, WorkloadEntry};

/// What authorization knows of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub source_ip: IpAddr,
    /// The peer's TLS identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    /// The delivered pod address after service-port translation.
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Why, in words fit for an access log.
    pub reason: String,
    /// The policy that decided, if one did.
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
    /// Dry-run policies and whether they would have denied.
    pub dry_run: Vec<(String, bool)>,
}

impl Decision {
    fn allow(reason: impl Into<String>, policy: Option<String>) -> Self {
        Decision {
            allowed: true,
            reason: reason.into(),
            policy,
            audited: Vec::new(),
            dry_run: Vec::new(),
        }
    }
    fn deny(reason: impl Into<String>, policy: Option<String>) -> Self {
        Decision {
            allowed: false,
            ..Decision::allow(reason, policy)
        }
    }
}

pub fn decide(state: &State, destination: &WorkloadEntry, conn: &Connection<'_>) -> Decision {
    if conn.source.is_none()
        && let Some((pa, MtlsMode::Strict)) = effective_mtls(
            state.peer_authentications(),
            destination,
            conn.destination.port(),
        )
    {
        return Decision::deny(
            format!(
                "PeerAuthentication {}/{} requires mTLS (STRICT): plaintext refused",
                pa.namespace, pa.name
            ),
            Some(format!("{}/{}", pa.namespace, pa.name)),
        );
    }

    let applicable = applicable_policies(state, destination);
    let mut audited = Vec::new();
    let mut dry_run = Vec::new();
    let mut deny: Option<&Authorization> = None;
    let mut allows = 0usize;
    let mut allowed_by: Option<&Authorization> = None;
    for p in &applicable {
        let matched = policy_matches(p, conn);
        if p.dry_run {
            let would_deny = match p.action {
                Action::Deny => matched,
                Action::Allow => !matched,
                Action::Audit => false,
            };
            dry_run.push((p.key(), would_deny));
            continue;
        }
        match p.action {
            Action::Audit if matched => audited.push(p.key()),
            Action::Audit => {}
            Action::Deny if matched && deny.is_none() => deny = Some(p),
            Action::Deny => {}
            Action::Allow => {
                allows += 1;
                if matched && allowed_by.is_none() {
                    allowed_by = Some(p);
                }
            }
        }
    }
    let mut d = if let Some(p) = deny {
        Decision::deny(format!("denied by DENY policy {}", p.key()), Some(p.key()))
    } else if allows == 0 {
        Decision::allow("no ALLOW policy applies", None)
    } else if let Some(p) = allowed_by {
        Decision::allow(format!("allowed by {}", p.key()), Some(p.key()))
    } else {
        Decision::deny(format!("no ALLOW policy matched ({allows} apply)"), None)
    };
    d.audited = audited;
    d.dry_run = dry_run;
    d
}

/// Policies for a destination: its namespace's, global ones, and those its
/// record names (selector-scoped). Unknown keys are skipped. Sorted by key so
/// the deciding policy is stable.
pub fn applicable_policies<'s>(
    state: &'s State,
    destination: &WorkloadEntry,
) -> Vec<&'s Authorization> {
    let mut out: Vec<&Authorization> = state
        .policies()
        .filter(|p| match p.scope {
            Scope::Global => true,
            Scope::Namespace => p.namespace == destination.spec.namespace,
            Scope::WorkloadSelector => false,
        })
        .map(|p| p.as_ref())
        .collect();
    for key in &destination.spec.authorization_policies {
        if let Some(p) = state.policy(key)
            && p.scope == Scope::WorkloadSelector
        {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.key());
    out.dedup_by_key(|p| p.key());
    out
}

pub fn policy_matches(p: &Authorization, conn: &Connection<'_>) -> bool {
    // Zero rules never match; a rule with zero clauses matches everything.
    p.rules.iter().any(|rule| {
        rule.clauses.iter().all(|clause| {
            clause.matches.is_empty()
                || clause
                    .matches
                    .iter()
                    .any(|m| match_matches(m, p.action, conn))
        })
    })
}

fn match_matches(m: &Match, action: Action, conn: &Connection<'_>) -> bool {
    if !m.l7_fields().is_empty() {
        match action {
            // Cannot check the L7 part, so the ALLOW cannot be shown to hold.
            Action::Allow | Action::Audit => return false,
            // Enforce what can be enforced; with nothing left, deny everything matched.
            Action::Deny if !m.has_l4_fields() => return true,
            Action::Deny => {}
        }
    } else if !m.has_l4_fields() {
        return false;
    }
    let principal = conn.source.map(|i| i.principal()).unwrap_or_default();
    let namespace = conn.source.map(|i| i.namespace()).unwrap_or("");
    let src_ip = conn.source_ip;
    let (dst_ip, dst_port) = (conn.destination.ip(), conn.destination.port());

    let strings = |pos: &[StringMatch], neg: &[StringMatch], v: &str| {
        (pos.is_empty() || pos.iter().any(|s| s.matches(v))) && !neg.iter().any(|s| s.matches(v))
    };
    let cidrs = |pos: &[Cidr], neg: &[Cidr], ip: IpAddr| {
        (pos.is_empty() || pos.iter().any(|c| c.0.contains(&ip)))
            && !neg.iter().any(|c| c.0.contains(&ip))
    };
    let sa = |s: &ServiceAccountMatch| {
        conn.source.is_some_and(|i| {
            i.namespace() == s.namespace && i.service_account() == s.service_account
        })
    };
    // Without a principal (plaintext), positive identity conditions cannot hold.
    let positive_identity_ok = conn.source.is_some()
        || (m.principals.is_empty() && m.namespaces.is_empty() && m.service_accounts.is_empty());
    positive_identity_ok
        && strings(&m.principals, &m.not_principals, &principal)
        && strings(&m.namespaces, &m.not_namespaces, namespace)
        && cidrs(&m.source_ips, &m.not_source_ips, src_ip)
        && cidrs(&m.destination_ips, &m.not_destination_ips, dst_ip)
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&dst_port))
        && !m.not_destination_ports.contains(&dst_port)
        && (m.service_accounts.is_empty() || m.service_accounts.iter().any(sa))
        && !m.not_service_accounts.iter().any(sa)
}

/// The effective mTLS mode for a workload and port: workload-selected
/// policy (port level first) over namespace over mesh; first listed wins.
pub fn effective_mtls<'p>(
    pas: &'p [PeerAuthentication],
    w: &WorkloadEntry,
    port: u16,
) -> Option<(&'p PeerAuthentication, MtlsMode)> {
    let selects = |pa: &PeerAuthentication| {
        pa.selector.as_ref().is_some_and(|s| {
            !s.match_labels.is_empty()
                && s.match_labels
                    .iter()
                    .all(|(k, v)| w.spec.labels.get(k) == Some(v))
        })
    };
    let workload_level = pas
        .iter()
        .filter(|pa| pa.namespace == w.spec.namespace && selects(pa));
    for pa in workload_level {
        if let Some(m) = pa
            .port_level_mtls
            .get(&port)
            .filter(|m| m.mode != MtlsMode::Unset)
        {
            return Some((pa, m.mode));
        }
        if pa.mtls.mode != MtlsMode::Unset {
            return Some((pa, pa.mtls.mode));
        }
    }
    let unselected = |ns: &str| {
        pas.iter()
            .find(|pa| {
                pa.namespace == ns
                    && pa
                        .selector
                        .as_ref()
                        .is_none_or(|s| s.match_labels.is_empty())
            })
            .filter(|pa| pa.mtls.mode != MtlsMode::Unset)
            .map(|pa| (pa, pa.mtls.mode))
    };
    unselected(&w.spec.namespace).or_else(|| unselected(ROOT_NAMESPACE))
}

#[cfg(test)]
mod tests;
