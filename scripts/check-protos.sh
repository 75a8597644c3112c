#!/usr/bin/env bash
# scripts/check-protos.sh — checks that every .proto under proto/croupier/ generates code that
# compiles in C++ and Go, with the system protoc (the Rust build uses its own vendored protoc).
#
#   C++: protoc --cpp_out --grpc_out (grpc_cpp_plugin), then g++ -fsyntax-only on each .cc.
#   Go:  protoc --go_out --go-grpc_out into a temp module `croupier.dev/sdk/go` (the protos'
#        go_package is croupier.dev/sdk/go/croupier/<pkg>/v1;<pkg>v1), go mod tidy, go build ./...
#
# Needs: protoc, grpc_cpp_plugin, libprotobuf-dev, libgrpc++-dev, pkg-config, g++, go,
# protoc-gen-go and protoc-gen-go-grpc (scripts/test.sh installs them all).
# Everything is generated into a temp dir that is removed on exit (CROUPIER_KEEP_PROTO_OUT=1 keeps it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

GO_MODULE="croupier.dev/sdk/go"

die() {
    printf 'check-protos.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

GOPATH_BIN="$(go env GOPATH 2>/dev/null || true)/bin"
export PATH="$PATH:$GOPATH_BIN"
for tool in protoc grpc_cpp_plugin pkg-config g++ go protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (run scripts/test.sh to install)"
done

mapfile -t PROTOS < <(cd proto && find croupier -name '*.proto' | LC_ALL=C sort)
((${#PROTOS[@]} > 0)) || die "no .proto files under proto/croupier/"

# Where google/protobuf/*.proto live (libprotobuf-dev).
PB_INCLUDE=""
for dir in "$(pkg-config --variable=includedir protobuf 2>/dev/null || true)" /usr/include /usr/local/include; do
    if [[ -n "$dir" && -f "$dir/google/protobuf/struct.proto" ]]; then
        PB_INCLUDE="$dir"
        break
    fi
done
[[ -n "$PB_INCLUDE" ]] || die "google/protobuf/struct.proto not found (install libprotobuf-dev)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/croupier-protos.XXXXXX")"
if [[ "${CROUPIER_KEEP_PROTO_OUT:-0}" == 1 ]]; then
    echo "keeping generated code in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

echo "protoc:     $(protoc --version) ($(command -v protoc)), includes: proto, $PB_INCLUDE"
echo "protos:     ${PROTOS[*]}"

# --- C++ -------------------------------------------------------------------------------------
CPP_OUT="$WORK/cpp"
mkdir -p "$CPP_OUT"
protoc -I proto -I "$PB_INCLUDE" \
    --cpp_out="$CPP_OUT" \
    --grpc_out="$CPP_OUT" \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" \
    "${PROTOS[@]}"
mapfile -t CC_FILES < <(cd "$CPP_OUT" && find . -name '*.cc' | LC_ALL=C sort)
((${#CC_FILES[@]} == 2 * ${#PROTOS[@]})) ||
    die "expected $((2 * ${#PROTOS[@]})) .cc files (pb + grpc.pb per proto), got ${#CC_FILES[@]}"
read -r -a CXXFLAGS_PB <<<"$(pkg-config --cflags grpc++ protobuf)"
echo "C++:        g++ -std=c++17 -fsyntax-only on ${#CC_FILES[@]} files (grpc++ $(pkg-config --modversion grpc++), protobuf $(pkg-config --modversion protobuf))"
FAILURES=()
CPP_FAILED=0
for f in "${CC_FILES[@]}"; do
    # Two at a time: the machine has two cores.
    while (($(jobs -rp | wc -l) >= 2)); do wait -n || true; done
    (
        cd "$CPP_OUT"
        rc=0
        g++ -std=c++17 -fsyntax-only -Wall -I. "${CXXFLAGS_PB[@]}" "$f" >"$f.log" 2>&1 || rc=$?
        echo "$rc" >"$f.rc"
    ) &
done
wait || true
for f in "${CC_FILES[@]}"; do
    if [[ "$(cat "$CPP_OUT/$f.rc" 2>/dev/null)" != 0 ]]; then
        echo "  FAIL ${f#./} (first errors; g++ -fsyntax-only):"
        { grep -E 'error:' "$CPP_OUT/$f.log" || cat "$CPP_OUT/$f.log"; } | head -n 8 | sed 's/^/        /'
        CPP_FAILED=1
    else
        echo "  ok  ${f#./}"
    fi
done
((CPP_FAILED == 0)) || FAILURES+=("generated C++ does not compile (see FAIL lines above)")

# --- Go --------------------------------------------------------------------------------------
GO_OUT="$WORK/go"
mkdir -p "$GO_OUT"
echo "Go:         $(go version), $(protoc-gen-go --version 2>&1), $(protoc-gen-go-grpc --version 2>&1)"
GO_OK=0
# One && chain: errexit does not apply inside a subshell whose status is tested.
protoc -I proto -I "$PB_INCLUDE" \
    --go_out="$GO_OUT" --go_opt=module="$GO_MODULE" \
    --go-grpc_out="$GO_OUT" --go-grpc_opt=module="$GO_MODULE" \
    "${PROTOS[@]}" &&
    (cd "$GO_OUT" &&
        go mod init "$GO_MODULE" >/dev/null 2>&1 &&
        { go mod tidy >"$WORK/go-mod-tidy.log" 2>&1 || { cat "$WORK/go-mod-tidy.log" >&2 && false; }; } &&
        go build ./... &&
        go vet ./...) &&
    GO_OK=1
((GO_OK == 1)) || FAILURES+=("generated Go does not build (see the output above)")
GO_PKGS=()
if ((GO_OK == 1)); then
    mapfile -t GO_PKGS < <(cd "$GO_OUT" && go list ./...)
    for p in "${GO_PKGS[@]}"; do echo "  ok  $p"; done
    echo "  deps: $(cd "$GO_OUT" && go list -m google.golang.org/grpc google.golang.org/protobuf | tr '\n' ' ')"
fi

if ((${#FAILURES[@]} > 0)); then
    for f in "${FAILURES[@]}"; do printf 'check-protos.sh: FAILED: %s\n' "$f" >&2; done
    exit 1
fi
echo "check-protos: ${#PROTOS[@]} protos OK (C++: ${#CC_FILES[@]} files, Go: ${#GO_PKGS[@]} packages)"
