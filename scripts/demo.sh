#!/usr/bin/env bash
# The Ambit demo, as it stands: two hosts (network namespaces joined by a veth),
# a ztunnel on each, the client's outbound TCP captured by iptables into its
# ztunnel and carried over mTLS HBONE to the server's ztunnel. Shows the
# traffic, the server ztunnel's metrics with the client's SPIFFE identity and
# mutual_tls, a DENY policy at work, then removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the demo creates network namespaces: run as root" >&2; exit 1; }
scripts/install-deps.sh
echo "== building ztunnel (release) =="
cargo build --release -p ztunnel
ZT=$PWD/target/release/ztunnel
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

step "a mesh root CA (ECDSA P-256); each ztunnel issues its workload's certificate from it"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$WORK/root.key"
openssl req -x509 -new -key "$WORK/root.key" -subj "/O=ambit-demo" -days 7 -out "$WORK/root.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

workloads="workloads:
- {name: client, namespace: demo, serviceAccount: client, addresses: [10.77.0.1]}
- {name: server, namespace: demo, serviceAccount: server, addresses: [10.77.0.2]}"
for side in client server; do
  cat > "$WORK/$side.yaml" <<YAML
proxy:
  workload: demo/$side
  certificates:
    ca: {cert: root.pem, key: root.key, ttl: 1h}
$workloads
YAML
done

step "the server app: an echo server on 10.77.0.2:9000"
ip netns exec $S socat TCP-LISTEN:9000,bind=10.77.0.2,fork,reuseaddr EXEC:cat & pids+=($!)

step "capture: the client's outbound TCP goes to its ztunnel (15001); ztunnel's own sockets carry mark 0x539"
ip netns exec $C iptables -t nat -A OUTPUT -p tcp ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff \
  -j REDIRECT --to-ports 15001
ip netns exec $C iptables -t nat -S OUTPUT | sed 's/^/  /'

step "starting the two ztunnels"
start() {
  ip netns exec "$1" "$ZT" --config "$WORK/$2.yaml" > "$WORK/$2.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do
    ip netns exec "$1" curl -sf http://127.0.0.1:15021/healthz/ready >/dev/null 2>&1 && { echo "  $2 ztunnel ready"; return; }
    sleep 0.1
  done
  echo "$2 ztunnel did not become ready:"; cat "$WORK/$2.log"; exit 1
}
start $S server; start $C client

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

step "a DENY policy for the client's identity: the server ztunnel refuses the connection"
cat >> "$WORK/server.yaml" <<'YAML'
authorizationPolicies:
- name: deny-client
  namespace: demo
  action: DENY
  rules:
  - clauses:
    - matches:
      - principals: ['cluster.local/ns/demo/sa/client']
YAML
ip netns exec $S curl -s -X POST http://127.0.0.1:15000/quitquitquit | sed 's/^/  server ztunnel: /'
for _ in $(seq 100); do ip netns exec $S curl -sf http://127.0.0.1:15021/healthz/ready >/dev/null 2>&1 || break; sleep 0.1; done
start $S server
if reply=$(echo "let me in" | ip netns exec $C socat -t2 - TCP:10.77.0.2:9000 2>&1) && [ -n "$reply" ]; then
  echo "  the denied connection was served: $reply"; exit 1
fi
echo "  the client's connection was refused"
grep 'denied by DENY policy' "$WORK/server.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'outcome=.*' | sed 's/^/  /' | tail -1
ip netns exec $S curl -s http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_failed_total' \
  | grep -o 'response_flags="[A-Z]*"' | sed 's/^/  counted: /'

step "done: removing the namespaces and processes"
