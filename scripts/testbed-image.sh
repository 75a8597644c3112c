#!/usr/bin/env bash
# Builds Croupier's container image on this machine without pulling anything:
#   1. the base image croupier-base/debian:bookworm: `debootstrap --variant=minbase` of Debian
#      bookworm from the Debian mirror, with ca-certificates, etcd-server, etcd-client and
#      prometheus, imported with `docker import`. Kept when present with the same package list.
#   2. croupier:latest (or --tag) from deploy/Dockerfile.local on that base, copying a croupier
#      binary cargo already built (default target/debug/croupier), stripped. Docker's build
#      cache makes a second run with the same binary a no-op.
# Idempotent; run as root (debootstrap needs it).
#
# Usage: scripts/testbed-image.sh [--bin PATH] [--tag IMAGE]
# Environment:
#   CROUPIER_DEBIAN_MIRROR   mirror for debootstrap (default: the first deb.debian.org-style URI
#                            of the machine's apt sources, else http://deb.debian.org/debian).
#   CROUPIER_STATE_DIR       where the rootfs is made (default /tmp/croupier-test).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/debug/croupier"
TAG="croupier:latest"
BASE="croupier-base/debian:bookworm"
PACKAGES="ca-certificates,etcd-server,etcd-client,prometheus"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        *) echo "usage: $0 [--bin PATH] [--tag IMAGE]" >&2; exit 2 ;;
    esac
done
die() { echo "testbed-image: $*" >&2; exit 1; }
command -v docker >/dev/null 2>&1 || die "docker not found"
[[ -x "$BIN" ]] || die "no croupier binary at $BIN (cargo build --bin croupier first)"

# 1. The base image, labelled with its package list so a change of the list rebuilds it.
have="$(docker image inspect --format '{{index .Config.Labels "croupier.packages"}}' "$BASE" 2>/dev/null || true)"
if [[ "$have" == "$PACKAGES" ]]; then
    echo "$BASE: present"
else
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap"
    mirror="${CROUPIER_DEBIAN_MIRROR:-}"
    if [[ -z "$mirror" ]]; then
        mirror="$(grep -rhoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
            head -n1 || true)"
        mirror="${mirror:-http://deb.debian.org/debian}"
    fi
    state="${CROUPIER_STATE_DIR:-/tmp/croupier-test}"
    rootfs="$state/base-rootfs"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    echo "debootstrap bookworm from $mirror into $rootfs (+ $PACKAGES)"
    t0=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$mirror" \
        >"$state/debootstrap.log" 2>&1 || {
        tail -n 30 "$state/debootstrap.log" >&2
        die "debootstrap failed (log: $state/debootstrap.log)"
    }
    # Nothing of apt's caches or docs is needed at run time.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" --numeric-owner -cf - . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' \
            --change "LABEL croupier.packages=$PACKAGES" \
            --message "debootstrap minbase bookworm + $PACKAGES" \
            - "$BASE" >/dev/null
    rm -rf "$rootfs"
    echo "$BASE: imported in $((SECONDS - t0)) s"
fi

# 2. croupier's image: a context with nothing but the binary.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
# Stripped: the debug binary cargo test builds is mostly debug info.
if command -v strip >/dev/null 2>&1; then strip -o "$ctx/croupier" "$BIN"; else cp "$BIN" "$ctx/croupier"; fi
cp "$ROOT/deploy/Dockerfile.local" "$ctx/Dockerfile"
before="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$BASE" -t "$TAG" "$ctx" >/dev/null 2>"$ctx/build.err" || {
    cat "$ctx/build.err" >&2
    die "docker build failed"
}
# The image of an earlier binary, now untagged, is not kept.
after="$(docker image inspect --format '{{.Id}}' "$TAG")"
if [[ -n "$before" && "$before" != "$after" ]]; then docker rmi "$before" >/dev/null 2>&1 || true; fi
docker run --rm "$TAG" --version >/dev/null || die "$TAG does not run croupier --version"
docker run --rm --entrypoint etcd "$TAG" --version >/dev/null || die "$TAG has no working etcd"
echo "$TAG: built from $BIN ($(docker run --rm "$TAG" --version | head -n1))"
