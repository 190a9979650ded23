#!/usr/bin/env bash
# The Ambit demo, as it stands: two hosts (network namespaces joined by a veth),
# istiod-lite serving a directory of Kubernetes YAML, and a ztunnel on each host
# taking its workloads, policies and certificate from istiod-lite. The client's
# outbound TCP is captured by iptables into its ztunnel and carried over mTLS
# HBONE to the server's ztunnel. Shows the traffic, the server ztunnel's
# metrics with the client's SPIFFE identity and mutual_tls, only TLS on the
# wire, a DENY policy added as a YAML file and enforced at once, a policy that
# only a waypoint could enforce reported in its status file, then removes
# everything.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the demo creates network namespaces: run as root" >&2; exit 1; }
scripts/install-deps.sh
echo "== building istiod-lite and ztunnel (release) =="
cargo build --release -p istiod-lite -p ztunnel
ZT=$PWD/target/release/ztunnel
ISTIOD=$PWD/target/release/istiod-lite
C=ambit-demo-client S=ambit-demo-server
WORK=$(mktemp -d /tmp/ambit-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $C 2>/dev/null || true; ip netns del $S 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup_stale() { ip netns del $C 2>/dev/null || true; ip netns del $S 2>/dev/null || true; }
cleanup_stale
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

step "two hosts: $C (10.77.0.1) and $S (10.77.0.2)"
ip netns add $C; ip netns add $S
ip link add ambit-demo-c type veth peer name ambit-demo-s
ip link set ambit-demo-c netns $C; ip link set ambit-demo-s netns $S
ip -n $C addr add 10.77.0.1/24 dev ambit-demo-c; ip -n $S addr add 10.77.0.2/24 dev ambit-demo-s
for n in $C $S; do ip -n $n link set lo up; done
ip -n $C link set ambit-demo-c up; ip -n $S link set ambit-demo-s up

step "the cluster as Kubernetes YAML: namespace demo (ambient), two nodes, a client and a server pod"
mkdir -p "$WORK/cluster"
cat > "$WORK/cluster/demo.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: node-client}
---
apiVersion: v1
kind: Node
metadata: {name: node-server}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: node-client, serviceAccountName: client, containers: [{name: app, image: socat}]}
status: {phase: Running, podIP: 10.77.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: node-server, serviceAccountName: server, containers: [{name: app, image: socat}]}
status: {phase: Running, podIP: 10.77.0.2, conditions: [{type: Ready, status: "True"}]}
YAML
sed 's/^/  /' "$WORK/cluster/demo.yaml" | head -8; echo "  ..."

step "istiod-lite on that directory (xDS and CA on 10.77.0.2:15012, admin on 127.0.0.1:15014)"
ip netns exec $S "$ISTIOD" --dir "$WORK/cluster" --state-dir "$WORK/state" \
  --grpc-listen 10.77.0.2:15012 --admin-listen 127.0.0.1:15014 --cert-ttl 1h > "$WORK/istiod.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  ip netns exec $S curl -sf http://127.0.0.1:15014/ready >/dev/null 2>&1 && break
  sleep 0.1
done
ip netns exec $S curl -sf http://127.0.0.1:15014/ready >/dev/null || { echo "istiod-lite did not become ready:"; cat "$WORK/istiod.log"; exit 1; }
echo "  ready; created a CA root and a token per node in $WORK/state:"
ls "$WORK/state" | sed 's/^/    /'

for side in client server; do
  sed -n "s/^node-$side: *//p" "$WORK/state/node-tokens.yaml" | tr -d "'\"" > "$WORK/$side.token"
  cat > "$WORK/$side.yaml" <<YAML
proxy:
  workload: demo/$side
  certificates:
    controlPlane:
      address: https://10.77.0.2:15012
      serverName: istiod.istio-system.svc
      rootCert: state/root-cert.pem
      tokenFile: $side.token
      impersonate: true
  xds:
    address: https://10.77.0.2:15012
    serverName: istiod.istio-system.svc
    rootCert: state/root-cert.pem
    tokenFile: $side.token
    nodeName: node-$side
YAML
done

step "the server app: an echo server on 10.77.0.2:9000"
ip netns exec $S socat TCP-LISTEN:9000,bind=10.77.0.2,fork,reuseaddr EXEC:cat & pids+=($!)

step "capture: the client's outbound TCP goes to its ztunnel (15001); ztunnel's own sockets carry mark 0x539"
ip netns exec $C iptables -t nat -A OUTPUT -p tcp ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff \
  -j REDIRECT --to-ports 15001
ip netns exec $C iptables -t nat -S OUTPUT | sed 's/^/  /'

step "starting the two ztunnels: each gets its workloads over delta xDS and its certificate from istiod-lite's CA"
start() {
  ip netns exec "$1" "$ZT" --config "$WORK/$2.yaml" > "$WORK/$2.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do
    ip netns exec "$1" curl -sf http://127.0.0.1:15021/healthz/ready >/dev/null 2>&1 && { echo "  $2 ztunnel ready"; return; }
    sleep 0.1
  done
  echo "$2 ztunnel did not become ready:"; cat "$WORK/$2.log"; exit 1
}
start $S server; start $C client
echo "  istiod-lite's view of its clients:"
ip netns exec $S curl -s http://127.0.0.1:15014/debug/clients | grep -E '"(node_id|caller|acked)"' | sort | uniq -c | sed 's/^/   /'

step "the client app talks to 10.77.0.2:9000 as usual"
reply=$(echo "hello from the client app" | ip netns exec $C socat -t2 - TCP:10.77.0.2:9000)
echo "  reply: $reply"
[ "$reply" = "hello from the client app" ] || { echo "unexpected reply"; exit 1; }

step "the server ztunnel saw it over mTLS, from the client's SPIFFE identity"
ip netns exec $S curl -s http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_opened_total' \
  | tr ',' '\n' | grep -E 'reporter|source_principal|destination_principal|connection_security_policy|_total' | sed 's/^/  /'
echo "  access log:"
grep 'connection complete' "$WORK/server.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/    /' | tail -1

step "what crossed the wire: TLS 1.3 (the app's bytes never appear in the clear)"
ip netns exec $S timeout 5 tcpdump -i ambit-demo-s -c 6 -nn -A 'tcp port 15008 and greater 100' 2>/dev/null > "$WORK/wire.txt" &
dump=$!
sleep 1
echo "SECRET-PAYLOAD-$(date +%s)" | ip netns exec $C socat -t2 - TCP:10.77.0.2:9000 >/dev/null
wait $dump || true
if grep -q SECRET-PAYLOAD "$WORK/wire.txt"; then echo "  plaintext seen on the wire!"; exit 1; fi
echo "  $(grep -c 'IP 10.77' "$WORK/wire.txt") packets to/from port 15008 captured; none holds the payload in the clear"

step "a DENY policy for the client's identity, added as a YAML file: refused at once"
cat > "$WORK/cluster/deny.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/demo/sa/client]}
YAML
t0=$(date +%s%N)
for _ in $(seq 100); do
  if ! reply=$(echo "let me in" | ip netns exec $C socat -t1 - TCP:10.77.0.2:9000 2>/dev/null) || [ -z "$reply" ]; then break; fi
  sleep 0.02
done
echo "  the client's connection is refused, $(( ($(date +%s%N) - t0) / 1000000 )) ms after the file was written"
grep 'denied by DENY policy' "$WORK/server.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'outcome=.*' | sed 's/^/  /' | tail -1
ip netns exec $S curl -s http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_failed_total' \
  | grep -o 'response_flags="[A-Z]*"' | sed 's/^/  counted: /'
rm "$WORK/cluster/deny.yaml"
for _ in $(seq 100); do
  reply=$(echo "back again" | ip netns exec $C socat -t1 - TCP:10.77.0.2:9000 2>/dev/null || true)
  [ "$reply" = "back again" ] && break
  sleep 0.02
done
echo "  policy file deleted: the client is served again ($reply)"

step "a policy only a waypoint could enforce: never more permissive at L4, and said so in its status"
cat > "$WORK/cluster/get-only.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET]}
YAML
for _ in $(seq 100); do [ -f "$WORK/cluster/get-only.status.yaml" ] && break; sleep 0.05; done
sed 's/^/  /' "$WORK/cluster/get-only.status.yaml"

step "done: removing the namespaces and processes"
