//! Writes the seed corpora of the fuzz targets (`corpus/<target>/seed-*`).
//!
//! Run from `fuzz/`: `cargo run --bin seeds` (any toolchain), or without
//! building the dependencies: `rustc --edition 2024 -O seeds/main.rs -o
//! target/seeds && target/seeds`. HTTP/2 frames
//! are encoded by hand (9-byte frame header, HPACK literals without indexing,
//! no Huffman) so the seeds do not depend on an HTTP/2 implementation.

use std::fs;
use std::path::Path;

// Frame types (RFC 9113 section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 0x00, 7, s.len()); // H = 0: no Huffman
    out.extend_from_slice(s.as_bytes());
}

/// Static table indexes (RFC 7541 appendix A) of the pseudo-headers used here.
fn static_name(name: &str) -> Option<usize> {
    Some(match name {
        ":authority" => 1,
        ":method" => 2,
        ":path" => 4,
        ":scheme" => 6,
        _ => return None,
    })
}

/// A header block of literals without indexing (RFC 7541 section 6.2.2).
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        match static_name(name) {
            Some(i) => hpack_int(&mut out, 0x00, 4, i),
            None => {
                out.push(0x00);
                hpack_str(&mut out, name);
            }
        }
        hpack_str(&mut out, value);
    }
    out
}

fn headers(stream: u32, flags: u8, h: &[(&str, &str)]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, stream, &header_block(h))
}

fn connect(stream: u32, authority: &str) -> Vec<u8> {
    headers(
        stream,
        0,
        &[(":method", "CONNECT"), (":authority", authority)],
    )
}

fn settings() -> Vec<u8> {
    // ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 4 MiB, MAX_FRAME_SIZE = 16384.
    let mut p = Vec::new();
    for (id, v) in [(0x2u16, 0u32), (0x4, 4 << 20), (0x5, 16384)] {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    frame(DATA, flags, stream, bytes)
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn hbone_connect_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let connect_full = headers(
        1,
        0,
        &[
            (":method", "CONNECT"),
            (":authority", "[fd00::2]:9000"),
            (
                "forwarded",
                "for=\"10.0.0.9:43210\";host=echo.default.svc.cluster.local",
            ),
            (
                "baggage",
                "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1",
            ),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            ),
        ],
    );
    let split_block = header_block(&[(":method", "CONNECT"), (":authority", "10.0.0.1:80")]);
    let (first, rest) = split_block.split_at(5);
    let mut padded = vec![4u8]; // pad length
    padded.extend_from_slice(b"hello");
    padded.extend_from_slice(&[0; 4]);
    let mut goaway = Vec::new();
    goaway.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
    vec![
        ("settings", settings()),
        ("connect", cat(&[settings(), connect(1, "10.0.0.1:80")])),
        (
            "connect_data",
            cat(&[
                settings(),
                settings_ack(),
                connect(1, "10.0.0.1:80"),
                data(1, 0, b"hello"),
                window_update(0, 1 << 16),
                window_update(1, 1 << 16),
                data(1, END_STREAM, b""),
            ]),
        ),
        (
            "connect_refused",
            cat(&[settings(), connect(1, "10.0.0.1:81"), data(1, 0, b"x")]),
        ),
        (
            "connect_dropped",
            cat(&[
                settings(),
                connect(1, "10.0.0.1:82"),
                data(1, END_STREAM, b"x"),
            ]),
        ),
        (
            "connect_v6_headers",
            cat(&[settings(), connect_full, data(1, 0, b"ping")]),
        ),
        (
            "connect_bad_authority",
            cat(&[
                settings(),
                connect(1, "echo.default:80"),
                connect(3, "10.0.0.1:0"),
            ]),
        ),
        (
            "get",
            cat(&[
                settings(),
                headers(
                    1,
                    END_STREAM,
                    &[
                        (":method", "GET"),
                        (":scheme", "http"),
                        (":path", "/"),
                        (":authority", "10.0.0.1:80"),
                    ],
                ),
            ]),
        ),
        (
            "continuation",
            cat(&[
                settings(),
                frame(HEADERS, 0, 1, first),
                frame(CONTINUATION, END_HEADERS, 1, rest),
                data(1, PADDED, &padded),
            ]),
        ),
        (
            "multi_stream",
            cat(&[
                settings(),
                connect(1, "10.0.0.1:80"),
                connect(3, "10.0.0.2:8080"),
                connect(5, "10.0.0.3:443"),
                data(1, 0, b"one"),
                data(3, 0, b"three"),
                frame(RST_STREAM, 0, 3, &0x8u32.to_be_bytes()), // CANCEL
                data(5, END_STREAM, b"five"),
                frame(PRIORITY, 0, 7, &[0, 0, 0, 1, 16]),
            ]),
        ),
        (
            "control",
            cat(&[
                settings(),
                frame(PING, 0, 0, b"12345678"),
                window_update(0, 1),
                frame(GOAWAY, 0, 0, &goaway),
            ]),
        ),
        (
            "data_without_headers",
            cat(&[settings(), data(1, 0, b"orphan")]),
        ),
    ]
}

/// The MINIMAL config of ztunnel's own tests, plus variants around it.
fn ztunnel_config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tests = include_str!("../../ztunnel/src/config/tests.rs");
    let start = tests
        .find("const MINIMAL: &str = \"")
        .expect("MINIMAL in tests.rs")
        + "const MINIMAL: &str = \"".len();
    let len = tests[start..].find("\";").expect("end of MINIMAL");
    let minimal = &tests[start..start + len];
    assert!(!minimal.contains('\\'), "MINIMAL has escapes; unescape it");

    let mut seeds: Vec<(&'static str, String)> = vec![("minimal", minimal.to_string())];
    let replacements: &[(&str, &str, &str)] = &[
        (
            "bad_ip",
            "addresses: [10.0.0.2, 'fd00::2']",
            "addresses: [10.0.0.300, 'fd00::2']",
        ),
        (
            "bad_cidr",
            "sourceIps: [10.0.0.0/8, 192.168.1.1]",
            "sourceIps: [10.0.0.0/8, 192.168.1]",
        ),
        ("bad_enum", "action: DENY", "action: DENNY"),
        (
            "bad_workload_ref",
            "workload: default/server",
            "workload: server",
        ),
        (
            "ttl",
            "ca: {cert: root.pem, key: root.key}",
            "ca: {cert: root.pem, key: root.key, ttl: 12h}",
        ),
        (
            "string_matches",
            "{prefix: 'cluster.local/ns/test/'}",
            "{suffix: '/sa/probe'}, {presence: {}}, '*', '*/sa/x', 'cluster.local/*'",
        ),
        (
            "files",
            "    ca: {cert: root.pem, key: root.key}\n",
            "    files:\n    - {cert: a.pem, key: a.key, roots: r.pem}\n    roots: [extra.pem]\n",
        ),
    ];
    for (name, from, to) in replacements {
        assert!(minimal.contains(from), "{name}: MINIMAL lacks {from:?}");
        seeds.push((name, minimal.replacen(from, to, 1)));
    }
    seeds.push((
        "full",
        format!(
            "{}{}",
            minimal.replace(
                "  certificates:\n",
                "  packetMark: null\n  drainDeadline: 1500ms\n  clusterId: east\n  workerThreads: 2\n  connectTimeout: 3s\n  listeners:\n    outbound: 127.0.0.1:0\n    inbound: '[::]:15008'\n    admin: 127.0.0.1:15000\n  certificates:\n",
            ),
            "\
- name: global-allow
  namespace: istio-system
  scope: GLOBAL
  action: ALLOW
  dryRun: true
  rules:
  - clauses:
    - matches:
      - namespaces: ['default']
        notPrincipals: ['*']
        destinationIps: ['fd00::/64']
        notDestinationPorts: [22]
        serviceAccounts: [{namespace: default, serviceAccount: client}]
        methods: [GET]
        paths: ['/admin*']
peerAuthentications:
- name: strict
  namespace: istio-system
  mtls: {mode: STRICT}
- name: permissive-port
  namespace: default
  selector: {matchLabels: {app: echo}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {9000: {mode: DISABLE}}
"
        ),
    ));
    seeds.push((
        "workload_fields",
        minimal.replace(
            "  serviceAccount: server\n",
            "  serviceAccount: server\n  trustDomain: example.org\n  node: node-1\n  tunnelProtocol: NONE\n  workloadType: pod\n  status: UNHEALTHY\n  capacity: 2\n  labels: {app: echo}\n  locality: {region: r1, zone: z1}\n  authorizationPolicies: [default/deny-probe]\n",
        )
        .replace(
            "  ports: [{servicePort: 80, targetPort: 9000}]\n",
            "  ports: [{servicePort: 80, targetPort: 9000}]\n  subjectAltNames: ['spiffe://cluster.local/ns/default/sa/server']\n  loadBalancing: {mode: FAILOVER}\n",
        ),
    ));
    seeds
        .into_iter()
        .map(|(n, s)| (n, s.into_bytes()))
        .collect()
}

fn hbone_authority_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("v4", "10.0.0.1:80"),
        ("v6", "[fd00::2]:9000"),
        ("v6_zone", "[fe80::1%2]:80"),
        ("v4_mapped", "[::ffff:10.0.0.1]:15008"),
        ("port0", "10.0.0.1:0"),
        ("host", "reviews.default.svc.cluster.local:9080"),
        (
            "baggage",
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=reviews-v1,service.name=reviews,service.version=v1,cloud.region=r,cloud.availability_zone=z",
        ),
        ("forwarded", "for=\"10.0.0.1:43210\";host=reviews.default.svc.cluster.local"),
        ("forwarded_v6", "for=\"[fd00::1]:80\";host=\"x\""),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .collect()
}

// Protobuf by hand (length-delimited fields and varints), for `ca_request`.
fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn pb_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    pb_varint(out, u64::from(field << 3 | 2));
    pb_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `IstioCertificateRequest`: csr (1), validity_duration (3), and a
/// metadata Struct (4) whose fields map (1) holds `key` -> string_value (3).
fn ca_request(csr: &str, ttl: i64, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    if !csr.is_empty() {
        pb_bytes(&mut out, 1, csr.as_bytes());
    }
    if ttl != 0 {
        pb_varint(&mut out, 3 << 3);
        pb_varint(&mut out, ttl as u64);
    }
    if !metadata.is_empty() {
        let mut st = Vec::new();
        for (key, value) in metadata {
            let mut val = Vec::new();
            pb_bytes(&mut val, 3, value.as_bytes());
            let mut entry = Vec::new();
            pb_bytes(&mut entry, 1, key.as_bytes());
            pb_bytes(&mut entry, 2, &val);
            pb_bytes(&mut st, 1, &entry);
        }
        pb_bytes(&mut out, 4, &st);
    }
    out
}

/// The first byte is the mode: even swaps in a valid CSR for the pod on the
/// caller's node, odd keeps the CSR given.
fn ca_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with_mode = |mode: u8, body: Vec<u8>| {
        let mut v = vec![mode];
        v.extend(body);
        v
    };
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let vault = "spiffe://cluster.local/ns/bank/sa/vault";
    let garbage_csr =
        "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n";
    vec![
        ("own-csr-san", with_mode(0, ca_request("", 86400, &[]))),
        (
            "impersonate-on-node",
            with_mode(0, ca_request("", 3600, &[("ImpersonatedIdentity", cart)])),
        ),
        (
            "impersonate-off-node",
            with_mode(0, ca_request("", 3600, &[("ImpersonatedIdentity", vault)])),
        ),
        (
            "other-trust-domain",
            with_mode(
                0,
                ca_request(
                    "",
                    60,
                    &[("ImpersonatedIdentity", "spiffe://elsewhere/ns/shop/sa/cart")],
                ),
            ),
        ),
        (
            "not-spiffe",
            with_mode(
                0,
                ca_request("", 60, &[("ImpersonatedIdentity", "https://x/ns/a/sa/b")]),
            ),
        ),
        ("negative-ttl", with_mode(0, ca_request("", -1, &[]))),
        (
            "garbage-csr",
            with_mode(
                1,
                ca_request(garbage_csr, 600, &[("ImpersonatedIdentity", cart)]),
            ),
        ),
        ("empty", with_mode(0, Vec::new())),
    ]
}

/// Directory-source files: valid multi-document files and one of each refusal.
fn registry_yaml_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        (
            "multi",
            "# mesh\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns1\n  labels: {istio.io/dataplane-mode: ambient}\n---\n\
apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: ns1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns1, labels: {app: echo}}\nspec:\n  serviceAccountName: sa\n  nodeName: n1\n  containers: [{name: c, image: echo}]\nstatus: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: echo}\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, targetPort: 9000}]\n---\n\
apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n...\n",
        ),
        (
            "istio",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: ns1}\nspec:\n  action: DENY\n  selector: {matchLabels: {app: echo}}\n  rules:\n  - from: [{source: {namespaces: [x], principals: ['cluster.local/ns/a/sa/b']}}]\n    to: [{operation: {ports: ['80'], methods: [GET], paths: ['/admin*']}}]\n    when: [{key: source.ip, values: [10.0.0.0/8]}]\n---\n\
apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: ns1}\nspec:\n  mtls: {mode: STRICT}\n  portLevelMtls: {9000: {mode: DISABLE}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [example.com]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n  location: MESH_EXTERNAL\n",
        ),
        (
            "gateway",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: ns1, labels: {istio.io/waypoint-for: service}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns1}\nspec:\n  parentRefs: [{group: '', kind: Service, name: echo}]\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
        ),
        (
            "list",
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}\n- {apiVersion: v1, kind: Namespace, metadata: {}}\n- 3\n",
        ),
        (
            "marker_line",
            "--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n--- # c\n--- !!map {kind: Pod}\n",
        ),
        (
            "refusals",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: [x}\n---\n- a\n---\nmetadata: {name: a}\n---\nkind: pod\napiVersion: v1\n---\n\
kind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{to: [{operation: {ports: 80}}]}]}\n",
        ),
        (
            "anchors",
            "base: &b {apiVersion: v1, kind: Namespace}\n---\n<<: &m {apiVersion: v1, kind: Namespace}\nmetadata: {name: merged}\n---\na: &x [*x]\n",
        ),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .collect()
}

/// Request sequences for `xds_requests`: each request a 2-byte big-endian
/// length and a `DeltaDiscoveryRequest`; a nonce `#<type>` stands for the
/// response in flight for that type.
fn xds_requests_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    const AUTHZ: &str = "type.googleapis.com/istio.security.Authorization";
    let field = |number: u8, value: &[u8]| {
        let mut f = vec![(number << 3) | 2, value.len() as u8];
        f.extend_from_slice(value);
        f
    };
    let chunk = |parts: &[Vec<u8>]| {
        let body: Vec<u8> = parts.concat();
        let mut c = (body.len() as u16).to_be_bytes().to_vec();
        c.extend(body);
        c
    };
    let nonce = format!("#{AUTHZ}");
    let status = field(2, b"no");
    vec![
        (
            "wildcard-then-ack",
            [
                chunk(&[field(2, ADDRESS.as_bytes())]),
                chunk(&[field(2, AUTHZ.as_bytes())]),
                chunk(&[field(2, AUTHZ.as_bytes()), field(6, nonce.as_bytes())]),
            ]
            .concat(),
        ),
        (
            "names-then-nack",
            [
                chunk(&[field(2, AUTHZ.as_bytes()), field(3, b"a/p1"), field(3, b"b/p9")]),
                chunk(&[
                    field(2, AUTHZ.as_bytes()),
                    field(6, nonce.as_bytes()),
                    field(7, &status),
                ]),
            ]
            .concat(),
        ),
    ]
}

/// Datagrams as `zds_messages` reads them: a length byte, then the bytes.
fn zds_datagrams(datagrams: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        out.push(d.len() as u8);
        out.extend_from_slice(d);
    }
    out
}

fn zds_messages_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // ZdsHello{version: V1}; WorkloadResponse{ack: Ack{}}; a NACK; an
    // empty response; a hello with an unknown version.
    let hello: &[u8] = &[0x08, 0x01];
    let ack: &[u8] = &[0x0a, 0x00];
    let nack: &[u8] = &[0x0a, 0x06, 0x0a, 0x04, b'n', b'o', b'p', b'e'];
    vec![
        ("hello-ack", zds_datagrams(&[hello, ack])),
        ("hello-ack-nack-ack", zds_datagrams(&[hello, ack, nack, ack])),
        ("empty-answer", zds_datagrams(&[hello, &[]])),
        ("odd-version", zds_datagrams(&[&[0x08, 0x07], ack])),
        ("garbage", zds_datagrams(&[&[0xff, 0xff, 0xff], &[0x0a, 0x80]])),
    ]
}

fn cni_stdin_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with_mode = |mode: u8, text: &str| {
        let mut out = vec![mode];
        out.extend_from_slice(text.as_bytes());
        out
    };
    let chained = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni","cniSocket":"/var/run/ambit/cni.sock","timeout":"30s","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.22.0.5/24","gateway":"10.22.0.1","interface":0},{"address":"fd00::5/64"}]}}"#;
    let old = r#"{"cniVersion":"0.3.1","name":"k8s","type":"ambit-cni","prevResult":{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.7/16"}]}}"#;
    let bare = r#"{"cniVersion":"0.4.0","name":"k8s","type":"ambit-cni"}"#;
    vec![
        ("conf-chained", with_mode(0, chained)),
        ("conf-old", with_mode(0, old)),
        ("conf-bad-timeout", with_mode(0, r#"{"cniVersion":"1.0.0","name":"k","type":"t","timeout":"5d"}"#)),
        ("args", with_mode(1, "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=9f1c;K8S_POD_INFRA_CONTAINER_ID=c0ffee")),
        ("run-version", with_mode(4, r#"{"cniVersion":"0.4.0"}"#)),
        ("run-add-chained", with_mode(5, chained)),
        ("run-add-bare", with_mode(5, bare)),
        ("run-check", with_mode(6, old)),
        ("run-unknown", with_mode(7, bare)),
    ]
}

/// Protobuf fields as values for the `Waypoint` seeds (with `pb_varint`):
/// varints, length-delimited fields (strings and messages) and doubles.
fn pb_uint(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    pb_varint(&mut out, field << 3);
    pb_varint(&mut out, v);
    out
}

fn pb_field(field: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    pb_varint(&mut out, (field << 3) | 2);
    pb_varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

fn pb_str(field: u64, s: &str) -> Vec<u8> {
    pb_field(field, s.as_bytes())
}

fn pb_double(field: u64, v: f64) -> Vec<u8> {
    let mut out = Vec::new();
    pb_varint(&mut out, (field << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn pb_msg(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn waypoint_config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Route: prefix /api + header + method, a prefix rewrite, 90/10
    // backends, a retry and a fault; a second route with a wildcard
    // hostname, a regex path and a redirect.
    let backend = |name: &str, weight: u64| {
        pb_msg(&[
            pb_str(1, &format!("{name}.default.svc.cluster.local")),
            pb_str(2, "default"),
            pb_str(3, name),
            pb_uint(4, 80),
            pb_uint(5, weight),
        ])
    };
    let api_rule = pb_msg(&[
        pb_str(1, "api"),
        pb_field(
            2,
            &pb_msg(&[
                pb_field(1, &pb_msg(&[pb_uint(1, 0), pb_str(2, "/api")])),
                pb_field(2, &pb_msg(&[pb_uint(1, 0), pb_str(2, "x-env"), pb_str(3, "canary")])),
                pb_field(3, &pb_msg(&[pb_uint(1, 1), pb_str(2, "v"), pb_str(3, "[12]")])),
                pb_str(4, "GET"),
            ]),
        ),
        pb_field(3, &pb_field(4, &pb_field(2, &pb_msg(&[pb_uint(1, 1), pb_str(2, "/v2")])))),
        pb_field(3, &pb_field(1, &pb_field(1, &pb_msg(&[pb_str(1, "x-a"), pb_str(2, "1")])))),
        pb_field(4, &backend("web-v1", 90)),
        pb_field(4, &backend("web-v2", 10)),
        pb_field(6, &pb_msg(&[pb_uint(1, 2), pb_uint(2, 503)])),
        pb_field(7, &pb_msg(&[pb_uint(3, 503), pb_double(5, 5.0)])),
    ]);
    let route = pb_msg(&[
        pb_uint(1, 0),
        pb_str(2, "default"),
        pb_str(3, "web"),
        pb_uint(4, 1_700_000_000),
        pb_field(6, &api_rule),
    ]);
    let redirect_rule = pb_msg(&[
        pb_field(2, &pb_field(1, &pb_msg(&[pb_uint(1, 2), pb_str(2, "/old/.*")]))),
        pb_field(
            3,
            &pb_field(3, &pb_msg(&[pb_str(1, "https"), pb_str(2, "new.example.com"), pb_uint(5, 301)])),
        ),
    ]);
    let route2 = pb_msg(&[
        pb_uint(1, 1),
        pb_str(2, "other"),
        pb_str(3, "legacy"),
        pb_str(5, "*.example.com"),
        pb_field(6, &redirect_rule),
        pb_uint(7, 80),
    ]);
    let deny_admin = pb_msg(&[
        pb_str(1, "default"),
        pb_str(2, "deny-admin"),
        pb_uint(3, 1),
        pb_field(4, &pb_field(2, &pb_str(7, "/admin*"))),
    ]);
    let allow_client = pb_msg(&[
        pb_str(1, "default"),
        pb_str(2, "allow-client"),
        pb_uint(3, 0),
        pb_field(
            4,
            &pb_msg(&[
                pb_field(1, &pb_msg(&[pb_str(1, "cluster.local/ns/default/*"), pb_str(7, "10.0.0.0/8")])),
                pb_field(3, &pb_msg(&[pb_str(1, "request.headers[x-a]"), pb_str(3, "bad")])),
            ]),
        ),
    ]);
    let service = pb_msg(&[
        pb_str(1, "default"),
        pb_str(2, "web"),
        pb_str(3, "web.default.svc.cluster.local"),
        pb_str(4, "10.96.0.10"),
        pb_field(5, &pb_msg(&[pb_uint(1, 80), pb_uint(2, 8080), pb_uint(3, 1), pb_str(4, "http")])),
        pb_field(6, &route),
        pb_field(6, &route2),
        pb_field(7, &deny_admin),
        pb_field(7, &allow_client),
    ]);
    let full = pb_msg(&[
        pb_str(1, "default"),
        pb_str(2, "waypoint"),
        pb_field(3, &service),
        pb_field(4, &pb_msg(&[pb_str(1, "default"), pb_str(2, "audit"), pb_uint(3, 2)])),
    ]);
    let empty_service = pb_msg(&[pb_str(1, "default"), pb_str(2, "waypoint"), pb_field(3, &pb_str(4, "10.96.0.11"))]);
    vec![("full", full), ("empty-service", empty_service), ("empty", Vec::new())]
}

fn write(target: &str, seeds: Vec<(&'static str, Vec<u8>)>) {
    // `cargo run` knows the crate directory; a bare `rustc` build runs from fuzz/.
    let root = option_env!("CARGO_MANIFEST_DIR").unwrap_or(".");
    let dir = Path::new(root).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    for (name, bytes) in &seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
    println!("{}: {} seeds in {}", target, seeds.len(), dir.display());
}

fn main() {
    write("hbone_connect", hbone_connect_seeds());
    write("hbone_authority", hbone_authority_seeds());
    write("ztunnel_config", ztunnel_config_seeds());
    write("ca_request", ca_request_seeds());
    write("registry_yaml", registry_yaml_seeds());
    write("xds_requests", xds_requests_seeds());
    write("zds_messages", zds_messages_seeds());
    write("cni_stdin", cni_stdin_seeds());
    write("waypoint_config", waypoint_config_seeds());
}
