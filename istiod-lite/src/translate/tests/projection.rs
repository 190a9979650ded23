//! A readable, lossless-enough projection of the xDS messages for fixtures:
//! IPs as text, enums by name, ports as `service->target PROTOCOL`, string
//! matches as `exact:x` / `prefix:x` / `suffix:x` / `presence`. Empty and
//! default fields are left out so fixtures list only what matters.

use mesh_api::istio::security::{
    Action, Address as PolicyAddress, Authorization, Match, Scope, StringMatch, string_match,
};
use mesh_api::istio::workload::{
    Address, AppProtocol, GatewayAddress, IpFamilies, NetworkAddress, Port, TunnelProtocol,
    WorkloadStatus, WorkloadType, address, gateway_address,
};
use serde_json::{Map, Value, json};

use crate::model::ObjectCondition;
use crate::translate::ip_from_bytes;

fn ip(raw: &[u8]) -> String {
    ip_from_bytes(raw).map_or_else(|| format!("invalid {raw:?}"), |ip| ip.to_string())
}

fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        map.insert(key.to_string(), value);
    }
}

fn port(p: &Port) -> Value {
    let proto = AppProtocol::try_from(p.app_protocol).map_or("?", |a| a.as_str_name());
    let text = format!("{}->{}", p.service_port, p.target_port);
    Value::String(if proto == "UNKNOWN" {
        text
    } else {
        format!("{text} {proto}")
    })
}

fn network_address(a: &NetworkAddress) -> String {
    let mut s = ip(&a.address);
    if let Some(len) = a.length {
        s = format!("{s}/{len}");
    }
    if !a.network.is_empty() {
        s = format!("{}/{s}", a.network);
    }
    s
}

fn gateway(g: &Option<GatewayAddress>) -> Value {
    let Some(g) = g else { return Value::Null };
    let dest = match &g.destination {
        Some(gateway_address::Destination::Hostname(h)) => {
            format!("hostname {}/{}", h.namespace, h.hostname)
        }
        Some(gateway_address::Destination::Address(a)) => format!("address {}", network_address(a)),
        None => "none".to_string(),
    };
    Value::String(format!("{dest} port {}", g.hbone_mtls_port))
}

pub fn address(a: &Address) -> Value {
    match &a.r#type {
        Some(address::Type::Workload(w)) => {
            let mut m = Map::new();
            put(&mut m, "uid", json!(w.uid));
            put(&mut m, "name", json!(w.name));
            put(&mut m, "namespace", json!(w.namespace));
            put(
                &mut m,
                "addresses",
                json!(w.addresses.iter().map(|a| ip(a)).collect::<Vec<_>>()),
            );
            put(&mut m, "network", json!(w.network));
            put(
                &mut m,
                "tunnel",
                json!(TunnelProtocol::try_from(w.tunnel_protocol).map_or("?", |t| t.as_str_name())),
            );
            put(&mut m, "trustDomain", json!(w.trust_domain));
            put(&mut m, "serviceAccount", json!(w.service_account));
            put(&mut m, "node", json!(w.node));
            if let Some(l) = &w.locality {
                put(
                    &mut m,
                    "locality",
                    json!(format!("{}/{}/{}", l.region, l.zone, l.subzone)),
                );
            }
            put(
                &mut m,
                "canonical",
                json!(format!("{}/{}", w.canonical_name, w.canonical_revision)),
            );
            let kind = WorkloadType::try_from(w.workload_type).map_or("?", |t| t.as_str_name());
            put(
                &mut m,
                "workload",
                json!(format!("{kind} {}", w.workload_name)),
            );
            put(
                &mut m,
                "status",
                json!(WorkloadStatus::try_from(w.status).map_or("?", |s| s.as_str_name())),
            );
            put(&mut m, "clusterId", json!(w.cluster_id));
            put(&mut m, "waypoint", gateway(&w.waypoint));
            let services: Map<String, Value> = w
                .services
                .iter()
                .map(|(k, v)| (k.clone(), Value::Array(v.ports.iter().map(port).collect())))
                .collect();
            if !w.services.is_empty() {
                m.insert("services".into(), Value::Object(services));
            }
            put(
                &mut m,
                "authorizationPolicies",
                json!(w.authorization_policies),
            );
            json!({ "workload": m })
        }
        Some(address::Type::Service(s)) => {
            let mut m = Map::new();
            put(&mut m, "name", json!(s.name));
            put(&mut m, "namespace", json!(s.namespace));
            put(&mut m, "hostname", json!(s.hostname));
            put(
                &mut m,
                "addresses",
                json!(s.addresses.iter().map(network_address).collect::<Vec<_>>()),
            );
            put(
                &mut m,
                "ports",
                Value::Array(s.ports.iter().map(port).collect()),
            );
            put(&mut m, "waypoint", gateway(&s.waypoint));
            if s.ingress_use_waypoint {
                m.insert("ingressUseWaypoint".into(), json!(true));
            }
            let families = IpFamilies::try_from(s.ip_families).map_or("?", |f| f.as_str_name());
            if families != "AUTOMATIC" {
                put(&mut m, "ipFamilies", json!(families));
            }
            json!({ "service": m })
        }
        None => Value::Null,
    }
}

fn string_matches(list: &[StringMatch]) -> Value {
    json!(
        list.iter()
            .map(|s| match &s.match_type {
                Some(string_match::MatchType::Exact(x)) => format!("exact:{x}"),
                Some(string_match::MatchType::Prefix(x)) => format!("prefix:{x}"),
                Some(string_match::MatchType::Suffix(x)) => format!("suffix:{x}"),
                Some(string_match::MatchType::Presence(())) => "presence".to_string(),
                None => "none".to_string(),
            })
            .collect::<Vec<_>>()
    )
}

fn cidrs(list: &[PolicyAddress]) -> Value {
    json!(
        list.iter()
            .map(|a| format!("{}/{}", ip(&a.address), a.length))
            .collect::<Vec<_>>()
    )
}

fn matcher(m: &Match) -> Value {
    let mut o = Map::new();
    put(&mut o, "namespaces", string_matches(&m.namespaces));
    put(&mut o, "notNamespaces", string_matches(&m.not_namespaces));
    put(&mut o, "principals", string_matches(&m.principals));
    put(&mut o, "notPrincipals", string_matches(&m.not_principals));
    put(&mut o, "sourceIps", cidrs(&m.source_ips));
    put(&mut o, "notSourceIps", cidrs(&m.not_source_ips));
    put(&mut o, "destinationIps", cidrs(&m.destination_ips));
    put(&mut o, "notDestinationIps", cidrs(&m.not_destination_ips));
    put(&mut o, "destinationPorts", json!(m.destination_ports));
    put(
        &mut o,
        "notDestinationPorts",
        json!(m.not_destination_ports),
    );
    let sas = |l: &[mesh_api::istio::security::ServiceAccountMatch]| {
        json!(
            l.iter()
                .map(|s| format!("{}/{}", s.namespace, s.service_account))
                .collect::<Vec<_>>()
        )
    };
    put(&mut o, "serviceAccounts", sas(&m.service_accounts));
    put(&mut o, "notServiceAccounts", sas(&m.not_service_accounts));
    Value::Object(o)
}

pub fn authorization(a: &Authorization) -> Value {
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| json!({ "clauses": r.clauses.iter().map(|c| c.matches.iter().map(matcher).collect::<Vec<_>>()).collect::<Vec<_>>() }))
        .collect();
    json!({
        "name": a.name,
        "namespace": a.namespace,
        "scope": Scope::try_from(a.scope).map_or("?", |s| s.as_str_name()),
        "action": Action::try_from(a.action).map_or("?", |s| s.as_str_name()),
        "rules": rules,
    })
}

/// `Kind ns/name Type=True Reason: message`.
pub fn condition(c: &ObjectCondition) -> String {
    let status = if c.status { "True" } else { "False" };
    format!(
        "{} {}={status} {}: {}",
        c.object, c.type_, c.reason, c.message
    )
}
