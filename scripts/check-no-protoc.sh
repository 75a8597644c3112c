#!/usr/bin/env bash
# Proves that building Croupier needs no system protoc (the README's first command runs on a
# machine with only the Rust toolchain): in a private mount namespace every protoc on PATH is
# replaced by a stub that fails, PROTOC is unset, and the crates whose build scripts run protoc
# (etcd-client and croupier-proto) are built afresh in their own target dir. They can only
# succeed with the protoc vendored by the protoc-bin-vendored crate (.cargo/config.toml,
# scripts/protoc).
#
# Needs root (or user namespaces) for `unshare -m`. Usage: scripts/check-no-protoc.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CROUPIER_NO_PROTOC_TARGET:-$ROOT/target/no-protoc}"
stub="$(mktemp)"
trap 'rm -f "$stub"' EXIT
printf '#!/bin/sh\necho "protoc is hidden by scripts/check-no-protoc.sh" >&2\nexit 127\n' >"$stub"
chmod +x "$stub"
cd "$ROOT"
unshare -m env -u PROTOC STUB="$stub" TARGET="$TARGET" bash -euo pipefail -c '
    for p in $(type -ap protoc); do mount --bind "$STUB" "$p"; done
    if protoc --version >/dev/null 2>&1; then
        echo "check-no-protoc: a protoc still runs in the namespace" >&2
        exit 1
    fi
    # The wrapper every build script runs finds the vendored protoc on its own.
    v="$(scripts/protoc --version)"
    echo "scripts/protoc with the system protoc hidden: $v"
    [[ "$v" == libprotoc* ]] || { echo "check-no-protoc: scripts/protoc printed: $v" >&2; exit 1; }
    cargo clean --quiet --target-dir "$TARGET" -p etcd-client -p croupier-proto
    cargo build --quiet --locked --target-dir "$TARGET" -p croupier-registry
'
echo "check-no-protoc: etcd-client and croupier-proto build with no protoc on the machine"
