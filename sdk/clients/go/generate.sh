#!/usr/bin/env bash
# sdk/clients/go/generate.sh — generates the Go code for proto/croupier/**/*.proto into
# ./croupier/<pkg>/v1 (package croupier.dev/sdk/go/croupier/<pkg>/v1, as the protos' go_package
# says). The generated files are not in git (.gitignore); run this, or `go generate .`, first.
#
# Needs protoc (Debian: protobuf-compiler, libprotobuf-dev for google/protobuf/struct.proto) and
# protoc-gen-go / protoc-gen-go-grpc on PATH (scripts/clients-test.sh installs pinned versions).
# CROUPIER_PROTO_DIR replaces the proto root (default: the repository's proto/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTO_DIR="${CROUPIER_PROTO_DIR:-$HERE/../../../proto}"
MODULE="croupier.dev/sdk/go"

die() {
    printf 'generate.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

GOPATH_BIN="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
export PATH="$PATH:$GOPATH_BIN"
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH"
done

# Where google/protobuf/struct.proto lives (libprotobuf-dev).
PB_INCLUDE=""
for dir in /usr/include /usr/local/include; do
    if [[ -f "$dir/google/protobuf/struct.proto" ]]; then
        PB_INCLUDE="$dir"
        break
    fi
done
[[ -n "$PB_INCLUDE" ]] || die "google/protobuf/struct.proto not found (install libprotobuf-dev)"

mapfile -t PROTOS < <(cd "$PROTO_DIR" && find croupier -name '*.proto' | LC_ALL=C sort)
((${#PROTOS[@]} > 0)) || die "no .proto files under $PROTO_DIR/croupier"

# Start clean so a removed proto leaves no stale package behind.
rm -rf "$HERE/croupier"
protoc -I "$PROTO_DIR" -I "$PB_INCLUDE" \
    --go_out="$HERE" --go_opt=module="$MODULE" \
    --go-grpc_out="$HERE" --go-grpc_opt=module="$MODULE" \
    "${PROTOS[@]}"
echo "generated Go code for ${#PROTOS[@]} protos into $HERE/croupier ($(protoc-gen-go --version), $(protoc-gen-go-grpc --version))"
