//! The ztunnel configs of the L7 benchmark: `ambit-bench`'s HBONE configs plus the
//! backend Service (VIP 10.96.0.10, ports 80 -> 8080 and 50051 -> 50051) and, on the
//! server side, the inbound listener bound to the backend pod's address only, so the
//! waypoint (or Envoy) can hold 15008 on the waypoint pod's address in the same
//! namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::layout::{
    GRPC_PORT, GRPC_SERVICE_PORT, HBONE_PORT, HTTP_PORT, HTTP_SERVICE_PORT, SERVICE_VIP, WAYPOINT,
    WAYPOINT_IP, WAYPOINT_VIP, service_hostname,
};
use crate::ztunnel::config::{
    self, CaFiles, Listeners, NAMESPACE, NamespacedHostname, PortMap, SERVER, Service, Side,
    TunnelProtocol, WaypointRef, ZtunnelConfig,
};

/// The backend Service's ports.
pub fn service_ports() -> Vec<PortMap> {
    vec![
        PortMap {
            service_port: HTTP_SERVICE_PORT,
            target_port: HTTP_PORT,
        },
        PortMap {
            service_port: GRPC_SERVICE_PORT,
            target_port: GRPC_PORT,
        },
    ]
}

/// The config of the ztunnel serving `side` on the mesh paths; with `waypoint`, the
/// backend Service is bound to the waypoint at 10.1.1.3.
pub fn ztunnel_config(
    side: Side,
    ca: &CaFiles,
    client_ip: IpAddr,
    server_ip: IpAddr,
    waypoint: bool,
) -> ZtunnelConfig {
    let mut cfg = config::ztunnel_config(side, ca, client_ip, server_ip, TunnelProtocol::Hbone);
    if side == Side::Server {
        cfg.proxy.listeners = Some(Listeners {
            inbound: Some(format!("{server_ip}:{HBONE_PORT}")),
        });
    }
    for workload in &mut cfg.workloads {
        if workload.name == SERVER {
            workload.services = BTreeMap::from([(
                format!("{NAMESPACE}/{}", service_hostname(SERVER)),
                service_ports(),
            )]);
        }
    }
    cfg.services = vec![Service {
        name: SERVER.to_string(),
        namespace: NAMESPACE.to_string(),
        addresses: vec![SERVICE_VIP],
        ports: service_ports(),
        waypoint: None,
    }];
    if waypoint {
        bind_to_waypoint(&mut cfg);
    }
    cfg
}

/// Adds the waypoint pod (10.1.1.3, service account `waypoint`) and its Service
/// (VIP 10.96.0.20, port 15008), and binds the backend Service to it, as istiod-lite
/// would for `istio.io/use-waypoint: waypoint`.
fn bind_to_waypoint(cfg: &mut ZtunnelConfig) {
    let hbone = vec![PortMap {
        service_port: HBONE_PORT,
        target_port: HBONE_PORT,
    }];
    let mut pod = cfg.workloads[0].clone();
    pod.name = WAYPOINT.to_string();
    pod.service_account = WAYPOINT.to_string();
    pod.addresses = vec![WAYPOINT_IP];
    pod.tunnel_protocol = TunnelProtocol::Hbone;
    pod.services = BTreeMap::from([(
        format!("{NAMESPACE}/{}", service_hostname(WAYPOINT)),
        hbone.clone(),
    )]);
    cfg.workloads.push(pod);
    cfg.services.push(Service {
        name: WAYPOINT.to_string(),
        namespace: NAMESPACE.to_string(),
        addresses: vec![WAYPOINT_VIP],
        ports: hbone,
        waypoint: None,
    });
    cfg.services[0].waypoint = Some(WaypointRef {
        hostname: NamespacedHostname {
            namespace: NAMESPACE.to_string(),
            hostname: service_hostname(WAYPOINT),
        },
        hbone_mtls_port: HBONE_PORT,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    #[test]
    fn service_and_inbound_listener() {
        let ca = CaFiles {
            cert: "/w/root.pem".into(),
            key: "/w/root.key".into(),
        };
        let (c, s) = ("10.1.1.1".parse().unwrap(), "10.1.1.2".parse().unwrap());
        let server: Value = serde_yaml::from_str(
            &ztunnel_config(Side::Server, &ca, c, s, false)
                .to_yaml()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            server["proxy"]["listeners"]["inbound"].as_str(),
            Some("10.1.1.2:15008")
        );
        assert_eq!(server["services"][0]["name"].as_str(), Some("server"));
        assert_eq!(
            server["services"][0]["addresses"][0].as_str(),
            Some("10.96.0.10")
        );
        assert_eq!(
            server["services"][0]["ports"][1]["targetPort"].as_u64(),
            Some(50051)
        );
        let endpoint = &server["workloads"][1];
        assert_eq!(endpoint["tunnelProtocol"].as_str(), Some("HBONE"));
        assert_eq!(
            endpoint["services"]["bench/server.bench.svc.cluster.local"][0]["targetPort"].as_u64(),
            Some(8080)
        );
        // The client side keeps ztunnel's default listeners.
        let client: Value = serde_yaml::from_str(
            &ztunnel_config(Side::Client, &ca, c, s, false)
                .to_yaml()
                .unwrap(),
        )
        .unwrap();
        assert!(client["proxy"].get("listeners").is_none());
        assert!(client["workloads"][0].get("services").is_none());
        assert!(client["services"][0].get("waypoint").is_none());
    }

    #[test]
    fn waypoint_binding() {
        let ca = CaFiles {
            cert: "/w/root.pem".into(),
            key: "/w/root.key".into(),
        };
        let (c, s) = ("10.1.1.1".parse().unwrap(), "10.1.1.2".parse().unwrap());
        let v: Value = serde_yaml::from_str(
            &ztunnel_config(Side::Client, &ca, c, s, true)
                .to_yaml()
                .unwrap(),
        )
        .unwrap();
        let wp = &v["services"][0]["waypoint"];
        assert_eq!(wp["hostname"]["namespace"].as_str(), Some("bench"));
        assert_eq!(
            wp["hostname"]["hostname"].as_str(),
            Some("waypoint.bench.svc.cluster.local")
        );
        assert_eq!(wp["hboneMtlsPort"].as_u64(), Some(15008));
        assert_eq!(v["services"][1]["name"].as_str(), Some("waypoint"));
        assert_eq!(
            v["services"][1]["ports"][0]["servicePort"].as_u64(),
            Some(15008)
        );
        let pod = &v["workloads"][2];
        assert_eq!(pod["serviceAccount"].as_str(), Some("waypoint"));
        assert_eq!(pod["addresses"][0].as_str(), Some("10.1.1.3"));
        assert_eq!(
            pod["services"]["bench/waypoint.bench.svc.cluster.local"][0]["targetPort"].as_u64(),
            Some(15008)
        );
    }
}
