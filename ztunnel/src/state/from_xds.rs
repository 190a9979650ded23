//! Workload xDS resources (spec 3.4, 10.1) to the model the config file fills.
//! Pure: each resource converts on its own, and anything ztunnel could not
//! enforce faithfully (bad IP lengths, unknown enum values, an empty string
//! match) is refused with the field that was wrong, so the control plane is
//! told (NACK) and the rest of the batch still applies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use mesh_api::istio::security as xsec;
use mesh_api::istio::workload as xw;
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::Identity;
use prost::Message;
use prost_types::Any;

use crate::config::{
    Action, Authorization, Cidr, Clause, GatewayAddress, GatewayDestination, HealthStatus,
    LoadBalancing, LoadBalancingMode, Locality, Match, PortMapping, Rule, Scope, Service,
    ServiceAccountMatch, StringMatch, TunnelProtocol, Workload, WorkloadType,
};

/// Why a resource was refused: the field (proto names, with indices) and what
/// was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An `istio.workload.Address` is one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum AddressResource {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

/// Decodes and converts an `Address` resource body.
pub fn address_from_any(body: &Any) -> Result<AddressResource, ConvertError> {
    check_type(body, ADDRESS_TYPE_URL)?;
    let address = xw::Address::decode(body.value.as_slice())
        .map_err(|e| err("resource", format!("not a valid Address message: {e}")))?;
    match address.r#type {
        Some(xw::address::Type::Workload(w)) => {
            workload(&w).map(|w| AddressResource::Workload(Box::new(w)))
        }
        Some(xw::address::Type::Service(s)) => {
            service(&s).map(|s| AddressResource::Service(Box::new(s)))
        }
        None => Err(err("type", "an Address must hold a workload or a service")),
    }
}

/// Decodes and converts an `Authorization` resource body.
pub fn authorization_from_any(body: &Any) -> Result<Authorization, ConvertError> {
    check_type(body, AUTHORIZATION_TYPE_URL)?;
    let policy = xsec::Authorization::decode(body.value.as_slice()).map_err(|e| {
        err(
            "resource",
            format!("not a valid Authorization message: {e}"),
        )
    })?;
    authorization(&policy)
}

fn check_type(body: &Any, expected: &str) -> Result<(), ConvertError> {
    if body.type_url != expected {
        return Err(err(
            "resource.type_url",
            format!("{:?} where {expected:?} was subscribed", body.type_url),
        ));
    }
    Ok(())
}

fn required(field: &str, value: &str) -> Result<String, ConvertError> {
    if value.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    Ok(value.to_string())
}

fn enum_value<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, ConvertError> {
    E::try_from(value).map_err(|_| err(field, format!("unknown enum value {value}")))
}

fn ip(field: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    let n = bytes.len();
    mesh_core::xds::ip_from_bytes(bytes).ok_or_else(|| {
        err(
            field,
            format!("{n} bytes is neither an IPv4 (4) nor an IPv6 (16) address"),
        )
    })
}

fn port(field: &str, value: u32, zero_ok: bool) -> Result<u16, ConvertError> {
    match u16::try_from(value) {
        Ok(0) if !zero_ok => Err(err(field, "port 0")),
        Ok(p) => Ok(p),
        Err(_) => Err(err(field, format!("{value} is not a port"))),
    }
}

fn ports(field: &str, list: &[xw::Port]) -> Result<Vec<PortMapping>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            enum_value::<xw::AppProtocol>(&format!("{field}[{i}].app_protocol"), p.app_protocol)?;
            Ok(PortMapping {
                service_port: port(&format!("{field}[{i}].service_port"), p.service_port, false)?,
                target_port: port(&format!("{field}[{i}].target_port"), p.target_port, true)?,
            })
        })
        .collect()
}

/// Spec 3.4/3.5: empty trust domain and service account take Istio's
/// defaults, an empty cluster id is `Kubernetes`.
pub fn workload(w: &xw::Workload) -> Result<Workload, ConvertError> {
    let uid = required("uid", &w.uid)?;
    let name = required("name", &w.name)?;
    let namespace = required("namespace", &w.namespace)?;
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&format!("addresses[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let tunnel_protocol = match enum_value("tunnel_protocol", w.tunnel_protocol)? {
        xw::TunnelProtocol::None => TunnelProtocol::None,
        xw::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
        xw::TunnelProtocol::LegacyIstioMtls => {
            return Err(err(
                "tunnel_protocol",
                "LEGACY_ISTIO_MTLS is not supported by ztunnel",
            ));
        }
    };
    let trust_domain = or_default(&w.trust_domain, mesh_core::identity::DEFAULT_TRUST_DOMAIN);
    let service_account = or_default(
        &w.service_account,
        mesh_core::identity::DEFAULT_SERVICE_ACCOUNT,
    );
    Identity::for_workload(&trust_domain, &namespace, &service_account)
        .map_err(|e| err("service_account", e.to_string()))?;
    let workload_type = match enum_value("workload_type", w.workload_type)? {
        xw::WorkloadType::Deployment => WorkloadType::Deployment,
        xw::WorkloadType::Cronjob => WorkloadType::Cronjob,
        xw::WorkloadType::Pod => WorkloadType::Pod,
        xw::WorkloadType::Job => WorkloadType::Job,
    };
    let status = match enum_value("status", w.status)? {
        xw::WorkloadStatus::Healthy => HealthStatus::Healthy,
        xw::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    enum_value::<xw::NetworkMode>("network_mode", w.network_mode)?;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        let field = format!("services[{key:?}]");
        match key.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
            _ => return Err(err(field, "the key is not <namespace>/<hostname>")),
        }
        services.insert(key.clone(), ports(&format!("{field}.ports"), &list.ports)?);
    }
    let locality = w.locality.as_ref().map(|l| Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    });
    Ok(Workload {
        uid,
        name,
        namespace,
        addresses,
        service_account,
        trust_domain,
        node: w.node.clone(),
        tunnel_protocol,
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_name: w.workload_name.clone(),
        workload_type,
        cluster_id: or_default(&w.cluster_id, "Kubernetes"),
        status,
        services,
        authorization_policies: w.authorization_policies.clone(),
        labels: BTreeMap::new(),
        capacity: w.capacity,
        locality: locality.unwrap_or_default(),
        waypoint: w
            .waypoint
            .as_ref()
            .map(|g| gateway_address("waypoint", g))
            .transpose()?,
    })
}

fn or_default(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

pub fn service(s: &xw::Service) -> Result<Service, ConvertError> {
    let name = required("name", &s.name)?;
    let namespace = required("namespace", &s.namespace)?;
    let hostname = required("hostname", &s.hostname)?;
    let mut addresses = Vec::with_capacity(s.addresses.len());
    for (i, a) in s.addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        let vip = ip(&format!("{field}.address"), &a.address)?;
        let full = if vip.is_ipv4() { 32 } else { 128 };
        if let Some(len) = a.length
            && len != full
        {
            // The model holds host VIPs only; taking a range as one address
            // would misroute the rest of it.
            return Err(err(
                format!("{field}.length"),
                format!("/{len} range VIPs are not supported (only /{full})"),
            ));
        }
        addresses.push(vip);
    }
    let subject_alt_names = s
        .subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, san)| {
            san.parse::<Identity>()
                .map_err(|e| err(format!("subject_alt_names[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut load_balancing = LoadBalancing::default();
    if let Some(lb) = &s.load_balancing {
        for (i, scope) in lb.routing_preference.iter().enumerate() {
            enum_value::<xw::load_balancing::Scope>(
                &format!("load_balancing.routing_preference[{i}]"),
                *scope,
            )?;
        }
        enum_value::<xw::load_balancing::HealthPolicy>(
            "load_balancing.health_policy",
            lb.health_policy,
        )?;
        load_balancing.mode = match enum_value("load_balancing.mode", lb.mode)? {
            xw::load_balancing::Mode::UnspecifiedMode => LoadBalancingMode::UnspecifiedMode,
            xw::load_balancing::Mode::Strict => LoadBalancingMode::Strict,
            xw::load_balancing::Mode::Failover => LoadBalancingMode::Failover,
            xw::load_balancing::Mode::Passthrough => LoadBalancingMode::Passthrough,
        };
    }
    enum_value::<xw::IpFamilies>("ip_families", s.ip_families)?;
    enum_value::<xw::service::Visibility>("visibility", s.visibility)?;
    Ok(Service {
        name,
        namespace,
        hostname,
        addresses,
        ports: ports("ports", &s.ports)?,
        subject_alt_names,
        load_balancing,
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway_address("waypoint", g))
            .transpose()?,
    })
}

/// A waypoint's address. An unresolvable one is refused rather than
/// dropped: dropping it would send the traffic around its L7 policy.
fn gateway_address(field: &str, g: &xw::GatewayAddress) -> Result<GatewayAddress, ConvertError> {
    use xw::gateway_address::Destination;
    let destination = match &g.destination {
        Some(Destination::Hostname(h)) => GatewayDestination::Hostname {
            namespace: required(&format!("{field}.hostname.namespace"), &h.namespace)?,
            hostname: required(&format!("{field}.hostname.hostname"), &h.hostname)?,
        },
        Some(Destination::Address(a)) => GatewayDestination::Address {
            network: a.network.clone(),
            address: ip(&format!("{field}.address.address"), &a.address)?,
        },
        None => return Err(err(field, "sets neither hostname nor address")),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port(
            &format!("{field}.hbone_mtls_port"),
            g.hbone_mtls_port,
            false,
        )?,
    })
}

pub fn authorization(a: &xsec::Authorization) -> Result<Authorization, ConvertError> {
    let name = required("name", &a.name)?;
    let namespace = required("namespace", &a.namespace)?;
    let scope = match enum_value("scope", a.scope)? {
        xsec::Scope::Global => Scope::Global,
        xsec::Scope::Namespace => Scope::Namespace,
        xsec::Scope::WorkloadSelector => Scope::WorkloadSelector,
    };
    let action = match enum_value("action", a.action)? {
        xsec::Action::Allow => Action::Allow,
        xsec::Action::Deny => Action::Deny,
    };
    let mut rules = Vec::with_capacity(a.rules.len());
    for (r, rule) in a.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let matches = clause
                .matches
                .iter()
                .enumerate()
                .map(|(m, x)| match_(&format!("rules[{r}].clauses[{c}].matches[{m}]"), x))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name,
        namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

fn match_(field: &str, m: &xsec::Match) -> Result<Match, ConvertError> {
    let strings = |kind: &str, list: &[xsec::StringMatch]| {
        list.iter()
            .enumerate()
            .map(|(i, s)| string_match(&format!("{field}.{kind}[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()
    };
    let cidrs = |kind: &str, list: &[xsec::Address]| {
        list.iter()
            .enumerate()
            .map(|(i, a)| cidr(&format!("{field}.{kind}[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()
    };
    let port_list = |kind: &str, list: &[u32]| {
        list.iter()
            .enumerate()
            .map(|(i, p)| port(&format!("{field}.{kind}[{i}]"), *p, false))
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |kind: &str, list: &[xsec::ServiceAccountMatch]| {
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                let f = format!("{field}.{kind}[{i}]");
                Ok(ServiceAccountMatch {
                    namespace: required(&format!("{f}.namespace"), &s.namespace)?,
                    service_account: required(&format!("{f}.serviceAccount"), &s.service_account)?,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()
    };
    Ok(Match {
        namespaces: strings("namespaces", &m.namespaces)?,
        not_namespaces: strings("not_namespaces", &m.not_namespaces)?,
        principals: strings("principals", &m.principals)?,
        not_principals: strings("not_principals", &m.not_principals)?,
        source_ips: cidrs("source_ips", &m.source_ips)?,
        not_source_ips: cidrs("not_source_ips", &m.not_source_ips)?,
        destination_ips: cidrs("destination_ips", &m.destination_ips)?,
        not_destination_ips: cidrs("not_destination_ips", &m.not_destination_ips)?,
        destination_ports: port_list("destination_ports", &m.destination_ports)?,
        not_destination_ports: port_list("not_destination_ports", &m.not_destination_ports)?,
        service_accounts: accounts("service_accounts", &m.service_accounts)?,
        not_service_accounts: accounts("not_service_accounts", &m.not_service_accounts)?,
        ..Match::default()
    })
}

/// Dropping an unparsable entry could turn a positive list into no
/// constraint (spec 10.2), so the whole policy is refused instead.
fn string_match(field: &str, s: &xsec::StringMatch) -> Result<StringMatch, ConvertError> {
    use xsec::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(err(field, "sets none of exact, prefix, suffix, presence")),
    }
}

fn cidr(field: &str, a: &xsec::Address) -> Result<Cidr, ConvertError> {
    let addr = ip(&format!("{field}.address"), &a.address)?;
    let net = IpNet::new(addr, a.length as u8)
        .ok()
        .filter(|_| a.length <= 128)
        .ok_or_else(|| {
            err(
                format!("{field}.length"),
                format!("/{} is not a prefix length for {addr}", a.length),
            )
        })?;
    Ok(Cidr(net.trunc()))
}

#[cfg(test)]
mod tests;
