#!/usr/bin/env bash
# Runs every test of Ambit: unit and integration tests (real network namespaces,
# iptables, mTLS; root) and the independent HBONE conformance checks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the tests create network namespaces: run as root" >&2; exit 1; }
scripts/install-deps.sh
# One build for binaries and tests: a separate `cargo build --bins` would build
# tokio and everything above it a second time without the tests' features.
cargo test --workspace --no-run
# manifests/: rendered, schema-validated, cross-checked offline, and ztunnel's
# ConfigMap config accepted by the ztunnel binary itself.
scripts/check-manifests.py --ztunnel target/debug/ztunnel
cargo test --workspace
echo "== HBONE conformance (../shared/conformance/hbone) =="
conformance=${AMBIT_CONFORMANCE:-../shared/conformance/hbone/run.sh}
if [ -x "$conformance" ] || [ -f "$conformance" ]; then
  HBONE_SERVER_CMD="$PWD/scripts/conformance-server.sh" bash "$conformance"
else
  echo "conformance checks not found at $conformance (they live beside the repository in shared/)" >&2
  exit 1
fi
