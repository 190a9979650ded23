//! A Service port's protocol, as the waypoint reads it: `appProtocol` first,
//! then Istio's port-name convention (`<protocol>` or `<protocol>-<suffix>`),
//! else detected from the first bytes.

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::ambit::waypoint::v1::{Port, Protocol};

/// The protocol a name stands for; None when it names none the waypoint
/// knows (then the next source decides).
fn named(name: &str) -> Option<Protocol> {
    match name.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" => Some(Protocol::Http1),
        "http2" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        // Encrypted or non-HTTP protocols: the waypoint copies bytes.
        "tcp" | "tls" | "https" | "kubernetes.io/wss" | "mongo" | "mysql" | "redis" => {
            Some(Protocol::Tcp)
        }
        _ => None,
    }
}

pub fn protocol(app_protocol: Option<&str>, port_name: Option<&str>) -> Protocol {
    app_protocol
        .and_then(named)
        .or_else(|| {
            let name = port_name?;
            let prefix = name.split_once('-').map_or(name, |(p, _)| p);
            named(prefix)
        })
        .unwrap_or(Protocol::Detect)
}

pub fn port(p: &ServicePort) -> Port {
    let target_port = match &p.target_port {
        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    Port {
        port: u32::try_from(p.port).unwrap_or(0),
        target_port,
        protocol: protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
        name: p.name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_then_name_prefix_then_detect() {
        let cases = [
            (Some("http"), None, Protocol::Http1),
            (Some("HTTP2"), None, Protocol::Http2),
            (Some("kubernetes.io/h2c"), None, Protocol::Http2),
            (Some("grpc"), Some("tcp-x"), Protocol::Grpc),
            (Some("tcp"), Some("http"), Protocol::Tcp),
            (Some("https"), None, Protocol::Tcp),
            (Some("kubernetes.io/ws"), None, Protocol::Http1),
            // An unknown appProtocol falls back to the name.
            (Some("example.com/custom"), Some("grpc-api"), Protocol::Grpc),
            (None, Some("http"), Protocol::Http1),
            (None, Some("http-web"), Protocol::Http1),
            (None, Some("http2-api"), Protocol::Http2),
            (None, Some("grpc"), Protocol::Grpc),
            (None, Some("tcp-db"), Protocol::Tcp),
            (None, Some("tls-x"), Protocol::Tcp),
            (None, Some("mysql"), Protocol::Tcp),
            // Not a prefix: "httpx" is not "http".
            (None, Some("httpx"), Protocol::Detect),
            (None, Some("web"), Protocol::Detect),
            (None, None, Protocol::Detect),
        ];
        for (app, name, want) in cases {
            assert_eq!(protocol(app, name), want, "{app:?} {name:?}");
        }
    }

    #[test]
    fn target_port_by_number_only() {
        let numbered = port(&ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        });
        assert_eq!(
            numbered,
            Port {
                port: 80,
                target_port: 8080,
                protocol: Protocol::Http1 as i32,
                name: "http".into()
            }
        );
        let named = port(&ServicePort {
            port: 80,
            target_port: Some(IntOrString::String("web".into())),
            ..Default::default()
        });
        assert_eq!(named.target_port, 0);
        assert_eq!(named.protocol, Protocol::Detect as i32);
    }
}
