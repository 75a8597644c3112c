#!/usr/bin/env bash
# scripts/clients-test.sh — builds the Go, C++ and Python client examples in sdk/clients/ and runs
# them against a live `croupier server` with a `croupier agent` (a1) and the Python provider (py1).
#
#   1. installs what is missing: Debian packages with apt-get (cmake, g++, protoc, grpc_cpp_plugin,
#      libgrpc++-dev, python3-venv, ...), pinned protoc-gen-go and protoc-gen-go-grpc with
#      `go install` into target/clients/bin, and the Python SDK (`pip install sdk/python`, which
#      brings grpcio, protobuf and pydantic from PyPI) into a venv in target/clients/python;
#   2. makes certificates (certs init --agent a1 --agent py1 --client c1 --admin ops) in a temp dir,
#      starts the server on 127.0.0.1:0 and agent a1, and waits until a1's functions are registered;
#   3. starts provider.py (the SDK's Agent) as agent py1 (serves py.echo over Connect);
#   4. Go:     generate.sh, go build, then the example: registry, invoke agent.ping, watch, job,
#              and the google.rpc.ErrorInfo of a refused call;
#   5. C++:    cmake + build (-j2), then the same example;
#   6. Python: the same example;
#      each of the three also invokes py.echo (--echo-only --expect-agent py1) through the server;
#   7. the provider: heartbeats arrived, SIGTERM sends Goodbye, it exits 0, py.echo loses its agent.
# A failed check does not stop the later ones; the summary lists every step and the script exits 1
# when any failed. Every process it started is stopped on exit.
#
# Usage: scripts/clients-test.sh
# Environment:
#   CROUPIER_BIN=PATH            the croupier binary (default target/debug/croupier; not built here)
#   CROUPIER_CLIENTS_OUT=DIR     build outputs (default target/clients: bin/, cpp/, python/)
#   CROUPIER_KEEP_TMP=1          keep the temp dir (certs, data, logs) even when everything passed
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CROUPIER_BIN="${CROUPIER_BIN:-target/debug/croupier}"
OUT="${CROUPIER_CLIENTS_OUT:-$ROOT/target/clients}"
# shellcheck source=versions.sh
. "$ROOT/scripts/versions.sh"
export DEBIAN_FRONTEND=noninteractive
START_TS=$SECONDS

section() { printf '\n==== %s ====\n' "$*"; }
die() {
    printf 'clients-test.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

[[ "$CROUPIER_BIN" == /* ]] || CROUPIER_BIN="$ROOT/$CROUPIER_BIN"
[[ -x "$CROUPIER_BIN" ]] || die "no croupier binary at $CROUPIER_BIN (build it, or set CROUPIER_BIN)"
mkdir -p "$OUT/bin"

for dir in /usr/local/bin /usr/bin /bin /usr/local/go/bin; do
    if [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]]; then export PATH="$PATH:$dir"; fi
done
# The pinned protoc plugins go here and win over any others on PATH.
export PATH="$OUT/bin:$PATH"

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: $*"
    echo "apt-get install $*"
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"; then
        ((APT_UPDATED == 0)) || die "apt-get install $* failed"
        echo "apt-get install failed; running apt-get update once and retrying"
        "${SUDO[@]}" apt-get update -q
        APT_UPDATED=1
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
    fi
}

# ---------------------------------------------------------------------------------------------
section "1/7 tools"
# Each entry: "package:check". The check is a command on PATH, an absolute path that must exist,
# or pkgconfig=NAME.
needs=(
    "ca-certificates:/etc/ssl/certs/ca-certificates.crt"
    "cmake:cmake"
    "make:make"
    "g++:g++"
    "pkg-config:pkg-config"
    "protobuf-compiler:protoc"
    "protobuf-compiler-grpc:grpc_cpp_plugin"
    "libprotobuf-dev:/usr/include/google/protobuf/struct.proto"
    "libgrpc++-dev:pkgconfig=grpc++"
    "python3:/usr/bin/python3"
)
check_ok() {
    case "$1" in
        /*) [[ -e "$1" ]] ;;
        pkgconfig=*) command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "${1#pkgconfig=}" ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}
missing=()
for entry in "${needs[@]}"; do check_ok "${entry#*:}" || missing+=("${entry%%:*}"); done
if ((${#missing[@]} == 0)); then
    echo "Debian packages present; skipping apt"
else
    apt_install "${missing[@]}"
fi

command -v go >/dev/null 2>&1 ||
    die "go not found: install Go >= 1.26 from https://go.dev/dl (sdk/clients/go/go.mod needs it; Debian's golang-go is too old)"

# Go protoc plugins, pinned, into $OUT/bin.
go_tool() {
    local bin="$1" pkg="$2" version="$3"
    if [[ "$("$OUT/bin/$bin" --version 2>/dev/null || true)" != *"${version#v}" ]]; then
        echo "go install $pkg@$version"
        GOBIN="$OUT/bin" go install "$pkg@$version"
    fi
}
go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# Python: the SDK (sdk/python) installed into a venv; its dependencies come from PyPI.
VENV="$OUT/python/venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    /usr/bin/python3 -m venv "$VENV"
fi
PYTHON="$VENV/bin/python"
"$PYTHON" -m pip install -q --upgrade "$ROOT/sdk/python" || die "pip install sdk/python failed"
(cd /tmp && "$PYTHON" -c 'import croupier') || die "$PYTHON cannot import croupier"
# Bytecode caches go to the build dir, not next to the sources.
export PYTHONPYCACHEPREFIX="$OUT/python/pycache"

echo "croupier:  $CROUPIER_BIN ($("$CROUPIER_BIN" --version))"
echo "protoc:    $(protoc --version); grpc++ $(pkg-config --modversion grpc++); cmake $(cmake --version | head -n1 | awk '{print $3}')"
echo "go:        $(go version | awk '{print $3}'); $(protoc-gen-go --version); $(protoc-gen-go-grpc --version)"
echo "python:    $PYTHON ($("$PYTHON" -c 'import sys, grpc, google.protobuf as p, croupier; print("Python", sys.version.split()[0] + ", croupier", croupier.__version__ + ", grpcio", grpc.__version__ + ", protobuf", p.__version__)'))"
echo "build dir: $OUT"

# ---------------------------------------------------------------------------------------------
section "2/7 server and agent a1"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/croupier-clients.XXXXXX")"
CERTS="$TMP/certs"
SERVER_PID="" AGENT_PID="" PROVIDER_PID=""

stop_pid() { # stop_pid PID NAME: SIGTERM, up to 10 s to exit, then SIGKILL
    local pid="$1" name="$2" i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) still running after 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
FAILED=()
cleanup() {
    local rc=$?
    stop_pid "$PROVIDER_PID" provider
    stop_pid "$AGENT_PID" agent
    stop_pid "$SERVER_PID" server
    if ((rc != 0 || ${#FAILED[@]} > 0)) || [[ "${CROUPIER_KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $TMP (certs, data, server.log, agent.log, provider.log)"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$CROUPIER_BIN" certs init --dir "$CERTS" --agent a1 --agent py1 --client c1 --admin ops >"$TMP/certs.log" 2>&1 ||
    die "certs init failed: $(cat "$TMP/certs.log")"
echo "certificates in $CERTS: $(cd "$CERTS" && echo *.pem)"

# A short heartbeat interval so the provider's heartbeats are seen during the run.
"$CROUPIER_BIN" server --listen 127.0.0.1:0 --tls-dir "$CERTS" --data-dir "$TMP/data" \
    --heartbeat-interval 2s >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!
ADDR=""
for ((i = 0; i < 200; i++)); do
    line="$(grep -m1 '^croupier server listening on https://' "$TMP/server.out" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
        ADDR="${line#croupier server listening on https://}"
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited: $(tail -n 20 "$TMP/server.log")"
    sleep 0.1
done
[[ -n "$ADDR" ]] || die "the server printed no 'croupier server listening on https://ADDR' within 20 s"
SERVER="https://$ADDR"
echo "server pid $SERVER_PID listening on $SERVER (log $TMP/server.log)"

"$CROUPIER_BIN" agent --server "$SERVER" --id a1 --tls-dir "$CERTS" >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
echo "agent a1 pid $AGENT_PID (game default, env dev; log $TMP/agent.log)"

CLIENT=(--server "$SERVER" --tls-dir "$CERTS" --identity client-c1)

# agents_of FUNCTION: the online agents providing FUNCTION in default/dev, one per line.
agents_of() {
    "$CROUPIER_BIN" functions --game-id default --env dev --json "${CLIENT[@]}" 2>/dev/null |
        /usr/bin/python3 -c '
import json, sys
for r in json.load(sys.stdin)["registrations"]:
    if r["function_id"] == sys.argv[1]:
        for a in r["agents"]:
            if a["online"]:
                print(a["agent_id"])' "$1"
}
# wait_for FUNCTION AGENT PID: until AGENT provides FUNCTION online (30 s), while PID lives.
wait_for() {
    local fn="$1" agent="$2" pid="$3" i
    for ((i = 0; i < 60; i++)); do
        if agents_of "$fn" | grep -qx "$agent"; then
            echo "$fn is registered by $agent (after ~$((i / 2)) s)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
wait_for agent.ping a1 "$AGENT_PID" ||
    die "agent a1 did not register agent.ping within 30 s: $(tail -n 20 "$TMP/agent.log")"
"$CROUPIER_BIN" functions --game-id default --env dev "${CLIENT[@]}"

# ---------------------------------------------------------------------------------------------
PASSED=()
# step NAME CMD...: runs CMD and records the outcome. Returns CMD's success, so call it in an `if`
# or with `|| true`: a failure must not stop the script (errexit is off inside CMD, so functions
# run as CMD chain their commands with && or return on failure).
step() {
    local name="$1" t0=$SECONDS
    shift
    printf '\n---- %s\n' "$name"
    if "$@"; then
        PASSED+=("$name ($((SECONDS - t0)) s)")
        printf -- '---- ok: %s\n' "$name"
    else
        FAILED+=("$name")
        printf -- '---- FAILED: %s\n' "$name"
        return 1
    fi
}

section "3/7 Python provider py1"
PROVIDER_UP=0
start_provider() {
    "$PYTHON" -u sdk/clients/python/provider.py --id py1 --server "$SERVER" --tls-dir "$CERTS" \
        >"$TMP/provider.log" 2>&1 &
    PROVIDER_PID=$!
    echo "provider py1 pid $PROVIDER_PID (log $TMP/provider.log)"
    if ! wait_for py.echo py1 "$PROVIDER_PID"; then
        echo "py.echo did not appear; provider log:"
        cat "$TMP/provider.log"
        return 1
    fi
    cat "$TMP/provider.log"
    PROVIDER_UP=1
}
step "python: start provider py1 (SDK Agent: RegisterAgent, Connect/Hello/Welcome)" start_provider || true

# run_example LANG BINARY...: the full example, then py.echo through the server to the provider.
run_example() {
    local lang="$1"
    shift
    step "$lang example: registry, invoke agent.ping, watch, job agent.countdown, error details" "$@" "${CLIENT[@]}" || true
    if ((PROVIDER_UP)); then
        step "$lang example: invoke py.echo on the Python provider" "$@" "${CLIENT[@]}" \
            --function py.echo --expect-agent py1 --echo-only || true
    else
        FAILED+=("$lang example: invoke py.echo (the provider is not up)")
    fi
}

# ---------------------------------------------------------------------------------------------
section "4/7 Go"
build_go() {
    (
        cd sdk/clients/go &&
            ./generate.sh &&
            go build -o "$OUT/bin/croupier-go-example" ./cmd/example &&
            go vet ./...
    )
}
rm -f "$OUT/bin/croupier-go-example"
if step "go: generate + build + vet" build_go; then
    run_example go "$OUT/bin/croupier-go-example"
fi

# ---------------------------------------------------------------------------------------------
section "5/7 C++"
build_cpp() {
    cmake -S sdk/clients/cpp -B "$OUT/cpp" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$OUT/cpp-configure.log" 2>&1 ||
        { cat "$OUT/cpp-configure.log" && return 1; }
    # Two jobs at most: gRPC C++ is heavy and the machine has two cores.
    cmake --build "$OUT/cpp" -j2
}
if step "c++: cmake configure + build (-j2)" build_cpp; then
    run_example c++ "$OUT/cpp/croupier-cpp-example"
fi

# ---------------------------------------------------------------------------------------------
section "6/7 Python"
run_example python "$PYTHON" sdk/clients/python/example.py

# ---------------------------------------------------------------------------------------------
section "7/7 Python provider: heartbeats, SIGTERM, Goodbye"
check_provider() {
    local i n rc=0 left
    # The server runs with --heartbeat-interval 2s; wait for two heartbeats at most 10 s.
    for ((i = 0; i < 100; i++)); do
        n="$(grep -c 'heartbeat [0-9]* ok' "$TMP/provider.log" || true)"
        ((n >= 2)) && break
        kill -0 "$PROVIDER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "heartbeats answered: $n"
    ((n >= 2)) || { echo "want at least 2 heartbeats"; cat "$TMP/provider.log"; return 1; }
    kill -0 "$PROVIDER_PID" 2>/dev/null || { echo "the provider is not running"; cat "$TMP/provider.log"; return 1; }
    kill -TERM "$PROVIDER_PID"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PROVIDER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PROVIDER_PID" 2>/dev/null; then
        echo "the provider did not exit within 10 s of SIGTERM"
        return 1
    fi
    wait "$PROVIDER_PID" || rc=$?
    PROVIDER_PID=""
    tail -n 4 "$TMP/provider.log"
    ((rc == 0)) || { echo "the provider exited with status $rc"; return 1; }
    grep -q 'stopping: sent Goodbye' "$TMP/provider.log" || { echo "no Goodbye in the provider log"; return 1; }
    # Goodbye removes the registration at once; the descriptor stays, with no agent.
    for ((i = 0; i < 20; i++)); do
        left="$(agents_of py.echo)"
        [[ -z "$left" ]] && break
        sleep 0.25
    done
    [[ -z "$left" ]] || { echo "py.echo still has agents after Goodbye: $left"; return 1; }
    echo "py.echo has no agent after Goodbye"
}
if ((PROVIDER_UP)); then
    step "python provider: heartbeats, SIGTERM -> Goodbye -> exit 0, registration gone" check_provider || true
else
    FAILED+=("python provider (it never came up)")
fi

kill -0 "$SERVER_PID" 2>/dev/null || FAILED+=("the server died during the run (see $TMP/server.log)")
kill -0 "$AGENT_PID" 2>/dev/null || FAILED+=("agent a1 died during the run (see $TMP/agent.log)")

# ---------------------------------------------------------------------------------------------
section "summary ($((SECONDS - START_TS)) s)"
for p in "${PASSED[@]}"; do echo "  ok      $p"; done
for f in "${FAILED[@]}"; do echo "  FAILED  $f"; done
if ((${#FAILED[@]} > 0)); then
    echo "clients-test: ${#FAILED[@]} failed, ${#PASSED[@]} passed"
    exit 1
fi
echo "clients-test: all ${#PASSED[@]} steps passed"
