#!/usr/bin/env bash
# Checks the deploy files that cannot run on this machine, offline:
#   1. deploy/systemd/*.service: `systemd-analyze verify` in a scratch root holding the units,
#      systemd's own units and the croupier binary at /usr/local/bin/croupier; any message at all
#      (systemd-analyze exits 0 on "Unknown key …, ignoring") fails.
#   2. deploy/k8s/*.yaml: every resource against the Kubernetes API's JSON schemas, strictly
#      (unknown fields fail), with kubernetes-validate from PyPI, which ships the schemas of
#      each Kubernetes version inside the package (no network needed to validate). Running the
#      manifests in a cluster is not done here.
# Each check first proves it can fail: a broken copy must be rejected.
#
# Usage: scripts/deploy-check.sh [--bin PATH]   (default target/debug/croupier)
# Environment: CROUPIER_STATE_DIR (default /tmp/croupier-test) holds the virtualenv;
#   CROUPIER_K8S_VERSIONS (default "1.29.0 1.33.0") the Kubernetes versions checked.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/debug/croupier"
[[ "${1:-}" == --bin ]] && BIN="$2"
STATE="${CROUPIER_STATE_DIR:-/tmp/croupier-test}"
KV_VERSION="1.37.0"
die() { echo "deploy-check: $*" >&2; exit 1; }
[[ -x "$BIN" ]] || die "no croupier binary at $BIN"
command -v systemd-analyze >/dev/null 2>&1 || die "systemd-analyze not found: apt-get install systemd"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. systemd units.
sysroot="$work/root"
mkdir -p "$sysroot/usr/local/bin" "$sysroot/etc/systemd/system" "$sysroot/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$sysroot/usr/lib/systemd/"
cp "$BIN" "$sysroot/usr/local/bin/croupier"
verify() { # prints systemd-analyze's messages; fails on exit code or any message
    local out
    out="$(systemd-analyze verify --root="$sysroot" --man=no "$@" 2>&1)" || { echo "$out"; return 1; }
    [[ -z "$out" ]] || { echo "$out"; return 1; }
}
cp "$ROOT"/deploy/systemd/*.service "$sysroot/etc/systemd/system/"
printf '[Service]\nExecStart=/usr/local/bin/croupier server\nRestart=sometimes\n' \
    >"$sysroot/etc/systemd/system/croupier-broken.service"
if verify croupier-broken.service >/dev/null; then die "systemd-analyze accepted a broken unit"; fi
rm "$sysroot/etc/systemd/system/croupier-broken.service"
units=()
for f in "$ROOT"/deploy/systemd/*.service; do units+=("$(basename "$f")"); done
verify "${units[@]}" || die "systemd-analyze verify failed on ${units[*]}"
echo "systemd-analyze verify: ${units[*]} ok"

# 2. Kubernetes manifests.
venv="$STATE/k8s-venv"
if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)" != *"$KV_VERSION"* ]]; then
    python3 -m venv "$venv" || die "cannot make a virtualenv (apt-get install python3-venv)"
    "$venv/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi
kv() { "$venv/bin/kubernetes-validate" --strict --no-warn "$@"; }
for version in ${CROUPIER_K8S_VERSIONS:-1.29.0 1.33.0}; do
    # A manifest with a field the API does not have must be rejected.
    sed 's/^\(\s*\)serviceName:/\1serviceNme:/' "$ROOT/deploy/k8s/croupier.yaml" >"$work/broken.yaml"
    cmp -s "$work/broken.yaml" "$ROOT/deploy/k8s/croupier.yaml" && die "could not make a broken manifest"
    if kv -k "$version" --quiet "$work/broken.yaml" >/dev/null 2>&1; then
        die "kubernetes-validate accepted a manifest with an unknown field"
    fi
    kv -k "$version" "$ROOT"/deploy/k8s/*.yaml || die "deploy/k8s does not validate against Kubernetes $version"
done
echo "deploy-check: ok"
