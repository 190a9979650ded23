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
# The standard bridge and host-local CNI plugins, which ambit-cni is chained after.
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import cryptography' 2>/dev/null || pip install -q cryptography
