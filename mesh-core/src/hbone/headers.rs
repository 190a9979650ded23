//! HBONE request headers (spec 2.3): the CONNECT authority, `forwarded`,
//! `baggage` and `traceparent`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::HboneError;

/// Parses a CONNECT authority strictly as `ip:port` or `[v6]:port`.
pub fn parse_authority(authority: &str) -> Result<SocketAddr, HboneError> {
    let bad = |why: &'static str| HboneError::BadAuthority {
        authority: authority.chars().take(256).collect(),
        why,
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| bad("not an ip:port or [ipv6]:port"))?;
    if addr.port() == 0 {
        return Err(bad("port 0"));
    }
    if let SocketAddr::V6(v6) = addr
        && (v6.scope_id() != 0 || v6.flowinfo() != 0)
    {
        return Err(bad("zone ids are not allowed"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(bad("unspecified or multicast address"));
    }
    Ok(addr)
}

/// Formats an address as a CONNECT authority.
pub fn authority(addr: SocketAddr) -> String {
    addr.to_string()
}

/// `forwarded: for="<client ip:port>"[;host=<service FQDN>]`.
pub fn forwarded(client: SocketAddr, service_host: Option<&str>) -> String {
    let mut s = format!("for=\"{client}\"");
    if let Some(h) = service_host.filter(|h| !h.is_empty()) {
        let _ = write!(s, ";host={h}");
    }
    s
}

/// Source or destination workload attributes carried in `baggage`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    /// deployment, cronjob, pod or job
    pub workload_type: String,
    pub workload_name: String,
    pub service_name: String,
    pub service_version: String,
    pub region: String,
    pub zone: String,
}

impl Baggage {
    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: &str| {
            if !v.is_empty() {
                parts.push(format!("{k}={v}"));
            }
        };
        push("k8s.cluster.name", &self.cluster);
        push("k8s.namespace.name", &self.namespace);
        if !self.workload_type.is_empty() {
            push(
                &format!("k8s.{}.name", self.workload_type),
                &self.workload_name,
            );
        }
        push("service.name", &self.service_name);
        push("service.version", &self.service_version);
        push("cloud.region", &self.region);
        push("cloud.availability_zone", &self.zone);
        parts.join(",")
    }

    /// Lenient: unknown keys and malformed members are ignored, since baggage
    /// only feeds telemetry.
    pub fn decode(header: &str) -> Baggage {
        let mut b = Baggage::default();
        for member in header.split(',') {
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().to_string());
            match k {
                "k8s.cluster.name" => b.cluster = v,
                "k8s.namespace.name" => b.namespace = v,
                "service.name" => b.service_name = v,
                "service.version" => b.service_version = v,
                "cloud.region" => b.region = v,
                "cloud.availability_zone" => b.zone = v,
                _ => {
                    if let Some(t) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name"))
                        && matches!(t, "deployment" | "cronjob" | "pod" | "job")
                    {
                        b.workload_type = t.to_string();
                        b.workload_name = v;
                    }
                }
            }
        }
        b
    }
}

/// A fresh W3C `traceparent` for one proxied connection.
pub fn traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// The `for` and `host` parameters of a `forwarded` header (RFC 7239).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded<'a> {
    /// `for=` as `ip:port`, when it carries a port.
    pub for_addr: Option<SocketAddr>,
    /// `for=` as an address, with or without a port.
    pub for_ip: Option<IpAddr>,
    pub host: Option<&'a str>,
}

impl<'a> Forwarded<'a> {
    /// Parses the first element of a `forwarded` header; unknown or malformed
    /// parameters are ignored (the header is advisory: identity comes from mTLS).
    pub fn parse(header: &'a str) -> Self {
        let mut f = Forwarded::default();
        let first = header.split(',').next().unwrap_or("");
        for pair in first.split(';') {
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"');
            if k.trim().eq_ignore_ascii_case("for") {
                if let Ok(a) = val.parse::<SocketAddr>() {
                    f.for_addr = Some(a);
                    f.for_ip = Some(a.ip());
                } else if let Ok(ip) = val.trim_start_matches('[').trim_end_matches(']').parse() {
                    f.for_ip = Some(ip);
                }
            } else if k.trim().eq_ignore_ascii_case("host") && !val.is_empty() {
                f.host = Some(val);
            }
        }
        f
    }
}

/// The client IP of a `forwarded` header's `for=` element, if parsable.
pub fn forwarded_for(header: &str) -> Option<IpAddr> {
    Forwarded::parse(header).for_ip
}

/// The service host of a `forwarded` header's `host=` element.
pub fn forwarded_host(header: &str) -> Option<&str> {
    Forwarded::parse(header).host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_accepts_ip_port_forms_only() {
        assert_eq!(
            parse_authority("10.0.0.1:80").unwrap(),
            "10.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_authority("[fd00::2]:9000").unwrap(),
            "[fd00::2]:9000".parse().unwrap()
        );
        for bad in [
            "not-an-address",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:70000",
            "fd00::2:9000",
            "[fe80::1%2]:80",
            "0.0.0.0:80",
            "host.example:80",
            "",
            "10.0.0.1:80 ",
        ] {
            let err = parse_authority(bad).unwrap_err().to_string();
            assert!(err.contains("authority"), "{bad}: {err}");
        }
    }

    #[test]
    fn forwarded_gives_the_client_and_the_host_of_the_first_element() {
        let f = Forwarded::parse(r#"for="10.0.0.5:41234";host=echo.default.svc.cluster.local"#);
        assert_eq!(f.for_addr, Some("10.0.0.5:41234".parse().unwrap()));
        assert_eq!(f.host, Some("echo.default.svc.cluster.local"));
        let f = Forwarded::parse(r#"for="[fd00::5]:80""#);
        assert_eq!(f.for_ip, Some("fd00::5".parse().unwrap()));
        let f = Forwarded::parse("for=10.0.0.7, for=10.0.0.8");
        assert_eq!(f.for_ip, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(Forwarded::parse("garbage;;=="), Forwarded::default());
    }

    #[test]
    fn forwarded_and_baggage_round_trip() {
        let f = forwarded(
            "10.0.0.1:43210".parse().unwrap(),
            Some("reviews.default.svc.cluster.local"),
        );
        assert_eq!(
            f,
            "for=\"10.0.0.1:43210\";host=reviews.default.svc.cluster.local"
        );
        assert_eq!(forwarded_for(&f), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            forwarded_host(&f),
            Some("reviews.default.svc.cluster.local")
        );
        let b = Baggage {
            cluster: "Kubernetes".into(),
            namespace: "default".into(),
            workload_type: "deployment".into(),
            workload_name: "reviews-v1".into(),
            service_name: "reviews".into(),
            service_version: "v1".into(),
            ..Default::default()
        };
        let enc = b.encode();
        assert_eq!(
            enc,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=reviews-v1,service.name=reviews,service.version=v1"
        );
        assert_eq!(Baggage::decode(&enc), b);
        assert_eq!(
            Baggage::decode("garbage,,=x,k8s.evil.name=1"),
            Baggage::default()
        );
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
        assert_ne!(traceparent(), t);
    }
}
