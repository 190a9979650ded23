#!/usr/bin/env bash
# The Ambit demo: a local cluster of network namespaces (`ambit up`) with two
# nodes, a client app calling a server app through its Service, first in
# plaintext; then both namespaces are labelled ambient and the same running
# processes (same PIDs) talk over mTLS HBONE, with the client's SPIFFE identity
# in the server ztunnel's metrics; then a DENY policy is added as a YAML file and
# enforced; then everything is taken down. Then L7: a namespace behind a
# waypoint (weighted routing, a path policy, the caller's identity passed to the
# app, a JWT required and verified, request metrics). Walked through in docs/quickstart.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the demo creates network namespaces: run as root" >&2; exit 1; }
scripts/install-deps.sh
echo "== building ambit, istiod-lite, node-agent (with ambit-cni), ztunnel and waypoint (release) =="
cargo build --release -p ambit -p istiod-lite -p node-agent -p ztunnel -p waypoint
AMBIT=$PWD/target/release/ambit
NAME=demo
STATE=/var/run/ambit/$NAME
WORK=$(mktemp -d /tmp/ambit-demo.XXXXXX)
DIR=$WORK/cluster
L7DIR=$WORK/l7
cleanup() {
  "$AMBIT" down --name $NAME >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# A demo interrupted earlier may have left its cluster up.
"$AMBIT" down --name $NAME >/dev/null 2>&1 || true
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
client_log() { tail -n "${1:-3}" "$STATE/pods/client.client.log" | sed 's/^/  client: /'; }
server_metrics() {
  ip netns exec ambit-$NAME-node-node-2 curl -fsS 127.0.0.1:15020/metrics
}
# Lists "Kind namespace/name" of each object in the YAML files given, metadata
# in block or flow style.
objects() {
  for f in "$@"; do awk '
    /^kind:/ { kind = $2 }
    /^metadata:/ {
      meta = 1
      if (match($0, /name: *[^,} ]+/)) { name = substr($0, RSTART + 6, RLENGTH - 6); gsub(/ /, "", name) }
      if (match($0, /namespace: *[^,} ]+/)) { ns = substr($0, RSTART + 11, RLENGTH - 11); gsub(/ /, "", ns) }
      next
    }
    meta && /^  name:/ { name = $2 }
    meta && /^  namespace:/ { ns = $2 }
    /^[a-z]/ && !/^metadata:/ { meta = 0 }
    /^---/ { if (kind) print "  " kind " " (ns ? ns "/" : "") name; kind = name = ns = ""; meta = 0 }
    END { if (kind) print "  " kind " " (ns ? ns "/" : "") name }
  ' "$f"; done
}
pids() { "$AMBIT" status --name $NAME | awk '$1 ~ /\// {print $1, $5}' | sort; }
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for: $*" >&2; exit 1; }
    sleep 0.2
  done
}

step "the cluster: examples/two-nodes (two nodes; a client pod calling the server Service every second)"
cp -r examples/two-nodes "$DIR"
objects "$DIR"/*.yaml

step "ambit up: nodes and pods as network namespaces, wired by the bridge, host-local and ambit-cni plugins"
"$AMBIT" up "$DIR" --name $NAME
"$AMBIT" status --name $NAME

step "plaintext: the server sees the client's calls; no ztunnel is involved yet"
sleep 2
client_log 3
before=$(pids)

step "ambit label ns server|client istio.io/dataplane-mode=ambient (no pod restarts)"
start=$(date +%s%N)
"$AMBIT" label ns server istio.io/dataplane-mode=ambient --dir "$DIR"
"$AMBIT" label ns client istio.io/dataplane-mode=ambient --dir "$DIR"
mtls() { server_metrics 2>/dev/null | grep -q 'source_principal="spiffe://cluster.local/ns/client/sa/default".*connection_security_policy="mutual_tls"'; }
wait_for 30 mtls
echo "  first mTLS connection from the client $(( ($(date +%s%N) - start) / 1000000 )) ms after the labels"
"$AMBIT" status --name $NAME
after=$(pids)
if [ "$before" = "$after" ]; then
  echo "  same processes as before enrolment:"; echo "$after" | sed 's/^/    pid /; s/ \([0-9]*\)$/ \1/'
else
  echo "  PIDs changed: before [$before] after [$after]" >&2; exit 1
fi

step "the server node's ztunnel: the client's SPIFFE identity, mutual TLS"
server_metrics | grep '^istio_tcp_connections_opened_total{reporter="destination"' |
  sed -E 's/.*(source_principal="[^"]*").*(destination_principal="[^"]*").*(connection_security_policy="[^"]*").*} ([0-9]+)$/  \1\n  \2\n  \3\n  connections opened: \4/'
client_log 2

step "a DENY policy for the client namespace, added as a YAML file"
cat > "$DIR/deny-client.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: server}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: [client]}
YAML
sed 's/^/  /' "$DIR/deny-client.yaml"
denied() { tail -n 1 "$STATE/pods/client.client.log" | grep -q '^failed'; }
wait_for 30 denied
client_log 2
grep -h 'flags=DENY' "$STATE"/nodes/node-2/ztunnel.log | tail -n 1 |
  grep -o 'src.identity=[^ ]*\|dst.workload=[^ ]*\|flags=[^ ]*\|outcome=.*connection complete' |
  sed 's/ connection complete$//; s/^/  ztunnel: /'

step "ambit down: nothing left behind"
"$AMBIT" down --name $NAME
left=$(ip netns list | grep -c "^ambit-$NAME-" || true)
echo "  network namespaces left: $left; state dir present: $([ -e "$STATE" ] && echo yes || echo no)"
[ "$left" = 0 ] && [ ! -e "$STATE" ]

step "L7: examples/waypoint, namespace server bound to a waypoint (a Gateway of class istio-waypoint)"
cp -r examples/waypoint "$L7DIR"
objects "$L7DIR"/*.yaml
"$AMBIT" up "$L7DIR" --name $NAME
# Runs `ambit app` inside the client pod: its traffic is captured by its ztunnel.
in_client() { ip netns exec ambit-$NAME-pod-client.client "$AMBIT" app "$@"; }
through_waypoint() { in_client http-client --url http://10.96.1.10/ --body --timeout 2s 2>/dev/null | grep -q 'URI=spiffe://cluster.local/ns/client/sa/default'; }
wait_for 90 through_waypoint
"$AMBIT" status --name $NAME

step "weighted routing by the waypoint: an HTTPRoute sends 90% of web to v1, 10% to v2"
in_client http-client --url http://10.96.1.10/ --count 1000 --quiet --summary | grep '^summary' |
  grep -o '"backends":{[^}]*}\|"p50_ms":[0-9.]*' | sed 's/^/  /'

step "L7 policy: an AuthorizationPolicy on web denies /admin (403 from the waypoint); / passes"
for path in /admin /; do
  printf '  GET %-7s' "$path"; in_client http-client --url "http://10.96.1.10$path" | head -n 1 | cut -d' ' -f1-2
done

step "the app sees the caller's SPIFFE identity in x-forwarded-client-cert"
in_client http-client --url http://10.96.1.10/ --body | head -n 1 | grep -o '"xfcc":"[^"]*"' | sed 's/^/  /'

step "RequestAuthentication: secure wants a JWT (an ALLOW on the request principal), verified by the waypoint"
sed -n '/^kind: RequestAuthentication/,/^---/p' "$L7DIR/jwt.yaml" | grep -v '^---\|jwks:' | sed 's/^/  /'
for name in none expired good; do
  header=()
  [ "$name" = none ] || header=(--header "authorization: Bearer $(awk -v n=$name '$1 == n {print $2}' "$L7DIR/jwt-tokens.txt")")
  line=$(in_client http-client --url http://10.96.1.17/ --body "${header[@]}" | head -n 1)
  printf '  %-8s token: %s' "$name" "$(echo "$line" | cut -d' ' -f1)"
  echo "$line" | grep -o '"x-jwt-sub":"[^"]*"' | sed 's/^/ (the app sees /; s/$/)/' || echo
done

step "the waypoint's request metrics, with the caller's principal"
ip netns exec ambit-$NAME-pod-server.waypoint curl -fsS 127.0.0.1:15021/metrics |
  grep '^istio_requests_total{' | grep 'response_code="200"' |
  sed -E 's/.*(source_principal="[^"]*").*(destination_service="[^"]*").*(response_code="[^"]*").*} ([0-9]+)$/  \1 \2 \3: \4/'

step "ambit down: nothing left behind"
"$AMBIT" down --name $NAME
left=$(ip netns list | grep -c "^ambit-$NAME-" || true)
echo "  network namespaces left: $left; state dir present: $([ -e "$STATE" ] && echo yes || echo no)"
[ "$left" = 0 ] && [ ! -e "$STATE" ]
