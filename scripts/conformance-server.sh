#!/usr/bin/env bash
# Serves HBONE for ../shared/conformance/hbone/run.sh: writes a ztunnel config from the
# environment the suite exports (WORK, CLIENT_IP, SERVER_IP) and runs ztunnel in the
# foreground, issuing the server workload's certificate from the suite's root.
set -euo pipefail
ZTUNNEL=${ZTUNNEL:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/ztunnel}
cat > "$WORK/ztunnel.yaml" <<YAML
proxy:
  workload: default/server
  certificates:
    ca: {cert: $WORK/root.pem, key: $WORK/root.key, ttl: 1h}
  listeners:
    inbound: "$SERVER_IP:15008"
workloads:
- {name: server, namespace: default, serviceAccount: server, addresses: [$SERVER_IP]}
- {name: probe, namespace: default, serviceAccount: probe, addresses: [$CLIENT_IP]}
YAML
exec "$ZTUNNEL" --config "$WORK/ztunnel.yaml"
