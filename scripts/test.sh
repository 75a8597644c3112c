#!/usr/bin/env bash
# scripts/test.sh — THE one command that runs Croupier's whole test suite.
#
# Works on a fresh Debian bookworm machine as root and again on one where it already ran
# (idempotent; a second run skips every install and only checks that things still work):
#   1. installs what the tests need from Debian (skipped when every needed tool is present),
#   2. starts dockerd when `docker info` fails and waits until it answers,
#   3. builds the local test image croupier-test/busybox:latest from busybox-static when missing,
#      and checks that `docker run` of it works,
#   4. installs protoc-gen-go / protoc-gen-go-grpc at the versions in scripts/versions.sh,
#   5. runs scripts/check-protos.sh (C++ and Go codegen from proto/croupier/ compile),
#   6. checks that the Rust build needs no system protoc (scripts/check-no-protoc.sh), runs
#      cargo fmt --check, cargo clippy -D warnings and cargo test --workspace with
#      CROUPIER_REQUIRE_DOCKER=1, CROUPIER_REQUIRE_ETCD=1, CROUPIER_REQUIRE_PROMETHEUS=1 and
#      CROUPIER_REQUIRE_NATS=1 and CROUPIER_REQUIRE_TESTBED=1 (tests fail instead of skipping;
#      the last covers the test bed: deploy/compose run with docker-compose on a locally built
#      image, and network faults in namespaces, see scripts/testbed.sh),
#   7. runs scripts/deploy-check.sh (systemd-analyze verify, offline Kubernetes schema
#      validation), scripts/python-test.sh (the Python asyncio SDK: wheel, mypy --strict, pytest against
#      real servers), scripts/console-test.sh (the operator console in headless Chromium) and
#      scripts/clients-test.sh (the Go, C++ and Python clients and the Python
#      provider against a live server and agent); skipped when extra cargo args are given.
#
# Usage: scripts/test.sh [extra args passed to `cargo test --workspace`]
#   e.g. scripts/test.sh -p croupier-registry -- store::
#
# Environment switches:
#   CROUPIER_SKIP_CARGO=1      do everything except the cargo steps (to check the machine setup).
#   CROUPIER_STATE_DIR=DIR     where dockerd's log and the image rootfs go (default /tmp/croupier-test).
#   CROUPIER_DOCKERD_FLAGS=".." replace the dockerd flags chosen below (word-split).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE_DIR="${CROUPIER_STATE_DIR:-/tmp/croupier-test}"
# A from-scratch build gains nothing from incremental compilation, which costs time and some
# 10 GB of disk over the test suite's builds.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
TEST_IMAGE="croupier-test/busybox:latest"
export DEBIAN_FRONTEND=noninteractive
START_TS=$SECONDS

section() { printf '\n==== %s ====\n' "$*"; }
die() {
    printf 'test.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$STATE_DIR"

# The sbin dirs (dockerd, ip) and the machine's toolchains (rustup's cargo, Go in /usr/local/go),
# in case PATH lacks them.
for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin \
    "${CARGO_HOME:-$HOME/.cargo}/bin" /usr/local/go/bin; do
    if [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]]; then export PATH="$PATH:$dir"; fi
done

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

# ---------------------------------------------------------------------------------------------
section "1/7 system packages"
# Each entry: "package:check". The check is a command name on PATH, an absolute path that must
# exist, or pkgconfig=NAME. The package is (re)installed when its check fails.
needs=(
    "etcd-server:etcd"
    "etcd-client:etcdctl"
    "docker.io:dockerd"
    "protobuf-compiler:protoc"
    "protobuf-compiler-grpc:grpc_cpp_plugin"
    "libprotobuf-dev:/usr/include/google/protobuf/struct.proto"
    "libgrpc++-dev:pkgconfig=grpc++"
    "pkg-config:pkg-config"
    "busybox-static:static-busybox"
    "iproute2:ip"
    "prometheus:prometheus"
    "nats-server:nats-server"
    "chromium:chromium"
    "chromium-driver:chromedriver"
    "g++:g++"
    "ca-certificates:/etc/ssl/certs/ca-certificates.crt"
    # The distributed test bed (tests/testbed_compose.rs, tests/netfaults.rs, deploy-check.sh).
    "debootstrap:debootstrap"
    "docker-compose:docker-compose"
    "iptables:iptables"
    "systemd:systemd-analyze"
)
# Go comes with the machine (/usr/local/go); Debian's golang-go is only a last resort (old).
command -v go >/dev/null 2>&1 || needs+=("golang-go:go")

static_busybox() {
    # The test image holds nothing but /bin/busybox, so it must not need a libc.
    local bb
    bb="$(command -v busybox 2>/dev/null || true)"
    [[ -n "$bb" ]] && ! ldd "$bb" >/dev/null 2>&1
}

check_ok() {
    local check="$1"
    case "$check" in
        /*) [[ -e "$check" ]] ;;
        pkgconfig=*) command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "${check#pkgconfig=}" ;;
        static-busybox) static_busybox ;;
        *) command -v "$check" >/dev/null 2>&1 ;;
    esac
}

missing=()
for entry in "${needs[@]}"; do
    pkg="${entry%%:*}"
    check="${entry#*:}"
    check_ok "$check" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "all needed tools present; skipping apt"
else
    echo "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    "${SUDO[@]}" apt-get update -q
    to_install=()
    for pkg in "${missing[@]}"; do
        # etcdctl is its own package (etcd-client) on bookworm; elsewhere it may ship with etcd-server.
        if [[ "$pkg" == etcd-client ]] && ! apt-cache show etcd-client >/dev/null 2>&1; then
            echo "no etcd-client package here; relying on etcd-server for etcdctl"
            continue
        fi
        to_install+=("$pkg")
    done
    t0=$SECONDS
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${to_install[@]}"
    echo "apt install took $((SECONDS - t0)) s"
    for entry in "${needs[@]}"; do
        check_ok "${entry#*:}" || [[ "${entry%%:*}" == etcd-client ]] ||
            die "package ${entry%%:*} installed but check '${entry#*:}' still fails"
    done
fi
echo "etcd: $(etcd --version 2>/dev/null | head -n1); protoc: $(protoc --version)"
echo "prometheus: $(prometheus --version 2>&1 | head -n1); promtool: $(command -v promtool)"
echo "nats-server: $(nats-server --version 2>&1 | head -n1)"
command -v cargo >/dev/null 2>&1 || die "cargo not found (the machine's rustup toolchain is expected on PATH)"

# ---------------------------------------------------------------------------------------------
section "2/7 docker engine"
docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

# dockerd's flags. Checked on this kind of machine (a Firecracker VM: kernel 6.18 with overlayfs,
# bridge, veth, nf_tables and iptables built in; cgroup v1 hierarchy; no systemd, so nothing starts
# dockerd for us and apt's postinst does not either): plain `dockerd` works as it is, with the
# overlay2 storage driver, the docker0 bridge, iptables (nft) NAT and published ports, so no
# workaround flags are needed. Set CROUPIER_DOCKERD_FLAGS to replace them on other machines, e.g.
# "--storage-driver=vfs --iptables=false --bridge=none" where the kernel lacks overlayfs/netfilter.
# shellcheck disable=SC2206
if [[ -n "${CROUPIER_DOCKERD_FLAGS:-}" ]]; then
    DOCKERD_FLAGS=(${CROUPIER_DOCKERD_FLAGS})
else
    DOCKERD_FLAGS=(--host=unix:///var/run/docker.sock)
fi

# A live dockerd process, not a zombie or a recycled pid.
dockerd_alive() {
    local pid="$1" state
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in dockerd | sudo) ;; *) return 1 ;; esac
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

if docker_ok; then
    echo "docker engine already running"
else
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found"
    log="$STATE_DIR/dockerd.log"
    pidfile=/var/run/docker.pid
    dockerd_pid="$(cat "$pidfile" 2>/dev/null || true)"
    if dockerd_alive "$dockerd_pid"; then
        echo "dockerd (pid $dockerd_pid) is running but not answering yet; waiting for it"
    else
        dockerd_pid=""
    fi
    started=0
    for ((i = 0; i < 60; i++)); do
        docker_ok && break
        if ! dockerd_alive "$dockerd_pid"; then
            if ((started)); then
                echo "dockerd exited; last lines of $log:" >&2
                tail -n 40 "$log" >&2 || true
                die "dockerd failed to start"
            fi
            # A dockerd that was killed leaves its pid file behind, and a new one refuses to start.
            "${SUDO[@]}" rm -f "$pidfile"
            echo "starting: dockerd ${DOCKERD_FLAGS[*]}  (log: $log)"
            # setsid: not in our process group, so it outlives this script and a Ctrl-C of it.
            "${SUDO[@]}" setsid dockerd "${DOCKERD_FLAGS[@]}" >"$log" 2>&1 </dev/null &
            dockerd_pid=$!
            started=1
            echo "dockerd pid $dockerd_pid"
        fi
        sleep 1
    done
    if ! docker_ok; then
        echo "docker info still fails after 60 s; last lines of $log:" >&2
        tail -n 40 "$log" >&2 || true
        die "docker engine did not come up"
    fi
    echo "docker engine up after ${i} s"
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

# ---------------------------------------------------------------------------------------------
section "3/7 test image $TEST_IMAGE"
"$ROOT/scripts/busybox-image.sh" "$TEST_IMAGE"
# The README's tour uses busybox:latest, which the same script makes without a registry.
"$ROOT/scripts/busybox-image.sh" busybox:latest
out="$(docker run --rm "$TEST_IMAGE" echo ok 2>&1)" ||
    die "docker run of $TEST_IMAGE failed: $out"
[[ "$out" == ok ]] || die "docker run $TEST_IMAGE echo ok printed: $out"
echo "docker run --rm $TEST_IMAGE echo ok -> $out"

# ---------------------------------------------------------------------------------------------
section "4/7 Go protoc plugins"
GOBIN_DIR="$(go env GOPATH)/bin"
export PATH="$GOBIN_DIR:$PATH"
# shellcheck source=versions.sh
. "$ROOT/scripts/versions.sh"
# Installs $pkg@$version unless that version is already on PATH.
go_tool() {
    local bin="$1" pkg="$2" version="$3"
    if [[ "$("$bin" --version 2>/dev/null || true)" != *"${version#v}" ]]; then
        echo "go install $pkg@$version"
        GOBIN="$GOBIN_DIR" go install "$pkg@$version"
    fi
}
go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
echo "protoc-gen-go: $(protoc-gen-go --version 2>&1)"
echo "protoc-gen-go-grpc: $(protoc-gen-go-grpc --version 2>&1)"

# ---------------------------------------------------------------------------------------------
section "5/7 protos: C++ and Go codegen compile"
"$ROOT/scripts/check-protos.sh"

echo
echo "setup and proto checks done in $((SECONDS - START_TS)) s"

# ---------------------------------------------------------------------------------------------
section "6/7 cargo fmt, clippy, test"
if [[ "${CROUPIER_SKIP_CARGO:-0}" == 1 ]]; then
    echo "CROUPIER_SKIP_CARGO=1: skipping cargo fmt, clippy and test"
    exit 0
fi
export CROUPIER_REQUIRE_DOCKER=1
export CROUPIER_REQUIRE_ETCD=1
export CROUPIER_REQUIRE_PROMETHEUS=1
export CROUPIER_REQUIRE_NATS=1
export CROUPIER_REQUIRE_TESTBED=1

section "the Rust build needs no system protoc"
# The protoc every build script runs (.cargo/config.toml's PROTOC): the vendored one.
echo "scripts/protoc: $("$ROOT/scripts/protoc" --version)"
"$ROOT/scripts/check-no-protoc.sh"

section "cargo fmt --all --check"
cargo fmt --all --check

section "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

section "cargo test --workspace --all-features $*"
# --no-fail-fast: one run reports every failing test binary, not only the first.
cargo test --workspace --all-features --no-fail-fast "$@"

# ---------------------------------------------------------------------------------------------
section "7/7 Python SDK and clients: Go, C++, Python against a live server"
if [[ $# -gt 0 ]]; then
    echo "extra cargo test arguments given: skipping the client examples"
    exit 0
fi
cargo build --bin croupier
# deploy/systemd and deploy/k8s, checked offline (the compose file runs in cargo test).
"$ROOT/scripts/deploy-check.sh" --bin "$ROOT/target/debug/croupier"
CROUPIER_BIN="$ROOT/target/debug/croupier" "$ROOT/scripts/python-test.sh"
CROUPIER_BIN="$ROOT/target/debug/croupier" "$ROOT/scripts/console-test.sh"
CROUPIER_BIN="$ROOT/target/debug/croupier" "$ROOT/scripts/clients-test.sh"
echo
echo "all done in $((SECONDS - START_TS)) s"
