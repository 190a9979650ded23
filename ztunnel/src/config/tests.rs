use super::*;

const MINIMAL: &str = "
proxy:
  workload: default/server
  certificates:
    ca: {cert: root.pem, key: root.key}
workloads:
- name: server
  namespace: default
  serviceAccount: server
  addresses: [10.0.0.2, 'fd00::2']
  services:
    default/echo.default.svc.cluster.local:
    - {servicePort: 80, targetPort: 9000}
services:
- name: echo
  namespace: default
  addresses: [10.96.0.1]
  ports: [{servicePort: 80, targetPort: 9000}]
authorizationPolicies:
- name: deny-probe
  namespace: default
  action: DENY
  rules:
  - clauses:
    - matches:
      - principals: ['cluster.local/ns/default/sa/probe', {prefix: 'cluster.local/ns/test/'}]
        sourceIps: [10.0.0.0/8, 192.168.1.1]
        destinationPorts: [9000]
";

#[test]
fn parses_a_full_file_and_fills_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.proxy.workload.as_ref().unwrap().namespace, "default");
    assert_eq!(c.workloads[0].uid, "Kubernetes//Pod/default/server");
    assert_eq!(c.services[0].hostname, "echo.default.svc.cluster.local");
    assert_eq!(c.proxy.packet_mark, Some(0x539));
    assert_eq!(c.drain_deadline(), Duration::from_secs(5));
    assert_eq!(c.proxy.listeners.inbound.port(), 15008);
    let m = &c.authorization_policies[0].rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals[0],
        StringMatch::Exact("cluster.local/ns/default/sa/probe".into())
    );
    assert_eq!(
        m.principals[1],
        StringMatch::Prefix("cluster.local/ns/test/".into())
    );
    assert_eq!(m.source_ips[1].0.to_string(), "192.168.1.1/32");
}

/// Each bad input names the field (path) and, where YAML can tell, the line.
#[test]
fn errors_name_the_field_and_line() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad ip",
            "addresses: [10.0.0.2, 'fd00::2']",
            &["workloads[0].addresses[0]", "line 10"],
        ),
        (
            "unknown field",
            "serviceAccount: server",
            &["unknown field `serviceAcount`", "line 9"],
        ),
        (
            "bad cidr",
            "sourceIps: [10.0.0.0/8, 192.168.1.1]",
            &[
                "matches[0].sourceIps[1]: \"192.168.1\" is not an IP address or CIDR",
                "line 27",
            ],
        ),
        (
            "bad enum",
            "action: DENY",
            &["authorizationPolicies[0].action", "unknown variant `DENNY`"],
        ),
        (
            "bad workload ref",
            "workload: default/server",
            &[
                "proxy.workload: workload \"server\" is not <namespace>/<name>",
                "line 3",
            ],
        ),
        (
            "bad duration",
            "ca: {cert: root.pem, key: root.key}",
            &[
                "proxy.certificates.ca.ttl: duration \"3 weeks\": unknown unit",
                "line 5",
            ],
        ),
        (
            "bad port",
            "servicePort: 80, targetPort: 9000}]\nauthorizationPolicies",
            &["services[0].ports[0].servicePort", "line 18"],
        ),
        (
            "bad string match",
            "{prefix: 'cluster.local/ns/test/'}",
            &["exactly one of exact, prefix, suffix, presence"],
        ),
    ];
    let replacements: &[(&str, &str)] = &[
        (
            "addresses: [10.0.0.2, 'fd00::2']",
            "addresses: [10.0.0.300, 'fd00::2']",
        ),
        ("serviceAccount: server", "serviceAcount: server"),
        (
            "sourceIps: [10.0.0.0/8, 192.168.1.1]",
            "sourceIps: [10.0.0.0/8, 192.168.1]",
        ),
        ("action: DENY", "action: DENNY"),
        ("workload: default/server", "workload: server"),
        (
            "ca: {cert: root.pem, key: root.key}",
            "ca: {cert: root.pem, key: root.key, ttl: 3 weeks}",
        ),
        (
            "servicePort: 80, targetPort: 9000}]\nauthorizationPolicies",
            "servicePort: 80000, targetPort: 9000}]\nauthorizationPolicies",
        ),
        (
            "{prefix: 'cluster.local/ns/test/'}",
            "{prefix: 'a', exact: 'b'}",
        ),
    ];
    for ((what, _, wants), (from, to)) in cases.iter().zip(replacements) {
        assert!(MINIMAL.contains(from), "{what}: fixture lacks {from:?}");
        let text = MINIMAL.replacen(from, to, 1);
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(!err.starts_with(':'), "{what}: {err:?}");
        for want in *wants {
            assert!(err.contains(want), "{what}: {err:?} lacks {want:?}");
        }
    }
}

#[test]
fn semantic_errors_name_the_field() {
    let dup = MINIMAL.replace(
        "services:\n- name: echo",
        "- name: server\n  namespace: default\n  addresses: [10.0.0.3]\nservices:\n- name: echo",
    );
    let err = Config::parse(&dup).unwrap_err().to_string();
    assert!(
        err.contains("workloads[1].uid") && err.contains("used by another workload"),
        "{err}"
    );

    let bad_sa = MINIMAL.replace("serviceAccount: server", "serviceAccount: 'a/b'");
    let err = Config::parse(&bad_sa).unwrap_err().to_string();
    assert!(err.contains("workloads[0].serviceAccount"), "{err}");

    let no_certs = MINIMAL.replace(
        "    ca: {cert: root.pem, key: root.key}\n",
        "    roots: []\n",
    );
    let err = Config::parse(&no_certs).unwrap_err().to_string();
    assert!(err.contains("proxy.certificates"), "{err}");
}

#[test]
fn load_resolves_paths_from_the_file_directory_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(
        c.proxy.certificates.ca.unwrap().cert,
        dir.path().join("root.pem")
    );
    std::fs::write(&path, "proxy: [").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("ztunnel.yaml"), "{err}");
    let err = Config::load(&dir.path().join("missing.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.yaml"), "{err}");
}

/// Found by fuzzing: an accepted config must survive a YAML round trip
/// unchanged (string matches were written as YAML tags that did not parse).
#[test]
fn accepted_configs_round_trip_through_yaml() {
    let text = MINIMAL.replace(
        "{prefix: 'cluster.local/ns/test/'}",
        "{prefix: 'cluster.local/ns/test/'}, '*', '*/sa/x', {presence: {}}, {suffix: y}",
    );
    let first = Config::parse(&text).unwrap();
    let yaml = serde_yaml::to_string(&first).unwrap();
    let second = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(serde_yaml::to_string(&second).unwrap(), yaml);
    let m = &second.authorization_policies[0].rules[0].clauses[0].matches[0];
    assert_eq!(m.principals[2], StringMatch::Presence);
    assert_eq!(m.principals[3], StringMatch::Suffix("/sa/x".into()));
    assert_eq!(m.principals[4], StringMatch::Presence);
}

/// Found by fuzzing: u64::MAX seconds parsed, and its serialization panicked on reparse.
#[test]
fn bare_second_counts_are_bounded() {
    let text = MINIMAL.replace(
        "  certificates:\n",
        "  drainDeadline: 18446744073709551615\n  certificates:\n",
    );
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("proxy.drainDeadline") && err.contains("out of range"),
        "{err}"
    );
}

#[test]
fn a_control_plane_ca_is_parsed_with_defaults_and_bad_settings_are_named() {
    let cp = "controlPlane: {address: 'https://istiod.istio-system.svc:15012', rootCert: ca.pem, tokenFile: token, impersonate: true}";
    let text = MINIMAL.replacen("ca: {cert: root.pem, key: root.key}", cp, 1);
    let c = Config::parse(&text).unwrap();
    let got = c.proxy.certificates.control_plane.as_ref().unwrap();
    assert_eq!(got.ttl.0, Duration::from_secs(24 * 3600));
    assert!(got.impersonate);
    assert_eq!(got.token_file.as_deref(), Some(Path::new("token")));
    assert_eq!(got.cluster_id, None);

    // Each case is the whole `certificates:` value.
    let cases = [
        (
            "{controlPlane: {address: 'http://istiod:15012', rootCert: ca.pem}}",
            "proxy.certificates.controlPlane.address",
        ),
        (
            "{controlPlane: {address: 'https://istiod:15012', rootCert: ca.pem, token: a, tokenFile: b}}",
            "proxy.certificates.controlPlane.token",
        ),
        (
            "{controlPlane: {address: 'https://istiod:15012', rootCert: ca.pem, ttl: 10s}}",
            "proxy.certificates.controlPlane.ttl",
        ),
        (
            "{controlPlane: {address: 'https://istiod:15012'}}",
            "rootCert",
        ),
        (
            "{ca: {cert: root.pem, key: root.key}, controlPlane: {address: 'https://istiod:15012', rootCert: ca.pem}}",
            "exactly one of",
        ),
    ];
    for (certs, want) in cases {
        let from = "certificates:\n    ca: {cert: root.pem, key: root.key}";
        assert!(MINIMAL.contains(from));
        let text = MINIMAL.replacen(from, &format!("certificates: {certs}"), 1);
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{certs}: {err}");
    }
}

const XDS: &str = "
proxy:
  workload: default/server
  certificates:
    ca: {cert: root.pem, key: root.key}
  xds:
    address: https://istiod.istio-system.svc:15012
    rootCert: xds-root.pem
    token: s3cret
    nodeName: node-a
    headers: {X-Tenant: blue}
";

#[test]
fn the_xds_section_parses_and_hides_the_token() {
    let c = Config::parse(XDS).unwrap();
    let x = c.proxy.xds.as_ref().unwrap();
    assert_eq!(x.cluster_id, "Kubernetes");
    assert_eq!(x.pod_namespace, "istio-system");
    assert_eq!(x.headers["X-Tenant"], "blue");
    let dumped = serde_json::to_string(&c.proxy).unwrap();
    assert!(!dumped.contains("s3cret"), "{dumped}");
    assert!(dumped.contains("<redacted>"), "{dumped}");
}

#[test]
fn bad_xds_settings_name_the_field() {
    let cases = [
        (
            XDS.replace("https://istiod", "http://istiod"),
            "proxy.xds.address",
        ),
        (
            XDS.replace("token: s3cret", "token: s3cret\n    tokenFile: /t"),
            "proxy.xds.token: set token or tokenFile, not both",
        ),
        (
            XDS.replace("X-Tenant: blue", "'bad header': blue"),
            "proxy.xds.headers.bad header",
        ),
        (XDS.replace("rootCert", "rootCerts"), "proxy.xds"),
        (
            format!("{XDS}workloads:\n- {{name: a, namespace: b, addresses: [10.0.0.1]}}\n"),
            "workloads: must be empty when proxy.xds is set",
        ),
    ];
    for (text, expected) in cases {
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{e:?} lacks {expected:?}");
    }
}

const INPOD: &str = "
proxy:
  inpod: {socket: /run/zds.sock}
  certificates:
    controlPlane:
      address: https://istiod.istio-system.svc:15012
      rootCert: root.pem
      impersonate: true
";

#[test]
fn inpod_mode_parses_with_defaults() {
    let c = Config::parse(INPOD).unwrap();
    let inpod = c.proxy.inpod.as_ref().unwrap();
    assert_eq!(inpod.socket, PathBuf::from("/run/zds.sock"));
    assert_eq!(inpod.trust_domain, "cluster.local");
    assert!(inpod.original_source);
    assert_eq!(c.proxy.packet_mark, Some(1337));
    let c =
        Config::parse("proxy:\n  inpod: {}\n  certificates: {ca: {cert: r, key: k}}\n").unwrap();
    assert_eq!(
        c.proxy.inpod.unwrap().socket,
        PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
}

#[test]
fn inpod_settings_that_cannot_serve_pods_name_the_field() {
    let cases = [
        (
            INPOD.replace("  inpod:", "  workload: default/server\n  inpod:"),
            "proxy.workload: must be absent with proxy.inpod",
        ),
        (
            INPOD.replace("impersonate: true", "impersonate: false"),
            "proxy.certificates.controlPlane.impersonate: must be true",
        ),
        (
            INPOD.replace(
                "    controlPlane:\n      address: https://istiod.istio-system.svc:15012\n      rootCert: root.pem\n      impersonate: true",
                "    files: [{cert: c, key: k, roots: r}]",
            ),
            "proxy.certificates.files",
        ),
        (
            format!("{INPOD}  packetMark: null\n"),
            "proxy.packetMark: must be set",
        ),
        (
            format!("{INPOD}  listeners: {{outbound: '[::]:0'}}\n"),
            "proxy.listeners.outbound: port 0",
        ),
        (
            format!("{INPOD}  listeners: {{inbound: '10.0.0.1:15008'}}\n"),
            "proxy.listeners.inbound: 10.0.0.1:15008",
        ),
        (
            INPOD.replace("socket: /run/zds.sock", "socket: ''"),
            "proxy.inpod.socket: must not be empty",
        ),
        (
            INPOD.replace("socket: /run/zds.sock", "trustDomain: 'a/b'"),
            "proxy.inpod.trustDomain",
        ),
        (
            INPOD.replace("  inpod: {socket: /run/zds.sock}\n", ""),
            "proxy.workload: set the workload",
        ),
    ];
    for (text, expected) in cases {
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{e:?} lacks {expected:?}");
    }
}

#[test]
fn an_inpod_config_survives_a_yaml_round_trip() {
    let c = Config::parse(INPOD).unwrap();
    let yaml = serde_yaml::to_string(&c).unwrap();
    let again = Config::parse(&yaml).unwrap();
    assert!(again.proxy.workload.is_none());
    assert_eq!(serde_yaml::to_string(&again).unwrap(), yaml);
}
