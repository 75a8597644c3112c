#!/usr/bin/env bash
# Runs the distributed test bed alone and prints its timings:
#   1. scripts/deploy-check.sh: systemd-analyze verify of deploy/systemd, offline Kubernetes
#      schema validation of deploy/k8s;
#   2. tests/testbed_compose.rs: deploy/compose brought up on the locally built image
#      (scripts/testbed-image.sh), used, scaled and torn down;
#   3. tests/netfaults.rs: partitions, latency and loss between servers, agents and etcd members
#      in network namespaces.
# With CROUPIER_REQUIRE_TESTBED=1 (set here) a missing tool fails instead of skipping.
# scripts/test.sh runs the same tests within `cargo test --workspace` and calls deploy-check.sh;
# this script is for running them alone. Needs root, docker running, docker-compose, debootstrap,
# iproute2, iptables and etcd (scripts/test.sh installs them).
#
# Usage: scripts/testbed.sh [test name filter]
# The lines "TESTBED-TIMING scenario: what N s" are collected at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CROUPIER_REQUIRE_TESTBED=1
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
t0=$SECONDS
cargo build --bin croupier
scripts/deploy-check.sh --bin "$TARGET/debug/croupier"
cargo test --test testbed_compose --test netfaults -- --nocapture --test-threads 2 "$@" 2>&1 | tee "$log"
echo
echo "==== test bed timings ===="
grep -h '^TESTBED-TIMING' "$log" || true
echo "test bed done in $((SECONDS - t0)) s"
