#!/usr/bin/env bash
# sdk/clients/python/generate.sh — generates the Python messages and gRPC stubs for
# proto/croupier/**/*.proto with grpcio-tools into ./gen (package `croupier`, e.g.
# `from croupier.control.v1 import control_pb2, control_pb2_grpc`). gen/ is not in git.
#
# Usage: generate.sh [OUT_DIR]        (default: ./gen next to this script)
# PYTHON picks the interpreter that has grpcio, grpcio-tools and protobuf (default: python3;
# with Debian's python3-grpcio / python3-grpc-tools packages that is /usr/bin/python3).
# CROUPIER_PROTO_DIR replaces the proto root (default: the repository's proto/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTO_DIR="${CROUPIER_PROTO_DIR:-$HERE/../../../proto}"
OUT="${1:-$HERE/gen}"
PYTHON="${PYTHON:-python3}"

die() {
    printf 'generate.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

"$PYTHON" -c 'import grpc_tools.protoc, grpc, google.protobuf' 2>/dev/null ||
    die "$PYTHON lacks grpcio-tools, grpcio or protobuf (Debian: apt-get install python3-grpc-tools python3-grpcio python3-protobuf, then PYTHON=/usr/bin/python3)"

# google/protobuf/struct.proto: grpc_tools ships the well-known protos in grpc_tools/_proto.
WKT="$("$PYTHON" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
[[ -f "$WKT/google/protobuf/struct.proto" ]] || WKT=/usr/include
[[ -f "$WKT/google/protobuf/struct.proto" ]] || die "google/protobuf/struct.proto not found"

mapfile -t PROTOS < <(cd "$PROTO_DIR" && find croupier -name '*.proto' | LC_ALL=C sort)
((${#PROTOS[@]} > 0)) || die "no .proto files under $PROTO_DIR/croupier"

# Start clean so a removed proto leaves no stale module behind.
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m grpc_tools.protoc -I "$PROTO_DIR" -I "$WKT" \
    --python_out="$OUT" --grpc_python_out="$OUT" "${PROTOS[@]}"
# Regular packages (not namespace packages), so nothing else named `croupier` on sys.path mixes in.
find "$OUT/croupier" -type d -exec touch {}/__init__.py \;
echo "generated Python code for ${#PROTOS[@]} protos into $OUT ($("$PYTHON" -c 'import grpc, google.protobuf as p; print("grpcio", grpc.__version__ + ",", "protobuf", p.__version__)'))"
