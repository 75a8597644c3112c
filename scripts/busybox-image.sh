#!/usr/bin/env bash
# Builds a small busybox image locally, without a registry: Debian's static busybox
# (`apt-get install busybox-static`) with a link per applet, imported with `docker import`.
# Idempotent: an image already present is kept.
#
# Usage: scripts/busybox-image.sh [IMAGE]     (default busybox:latest)
set -euo pipefail
IMAGE="${1:-busybox:latest}"
die() { echo "busybox-image: $*" >&2; exit 1; }
command -v docker >/dev/null 2>&1 || die "docker not found"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE: present"
    exit 0
fi
bb="$(command -v busybox)" || die "busybox not found: apt-get install busybox-static"
file -L "$bb" 2>/dev/null | grep -q "statically linked" ||
    ldd "$bb" 2>&1 | grep -q "not a dynamic executable" ||
    die "$bb is not statically linked: apt-get install busybox-static"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev,var/www}
chmod 1777 "$rootfs/tmp"
cp "$bb" "$rootfs/bin/busybox"
# Every applet as a symlink in /bin (what `busybox --install -s` would do, without a chroot).
count=0
for applet in $("$bb" --list); do
    [[ "$applet" == busybox || -e "$rootfs/bin/$applet" ]] && continue
    ln -s busybox "$rootfs/bin/$applet"
    count=$((count + 1))
done
for a in sh echo sleep cat ls printf seq wget nc httpd true false env; do
    [[ -e "$rootfs/bin/$a" ]] || die "busybox has no applet '$a'"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
tar -C "$rootfs" --numeric-owner -cf - . |
    docker import \
        --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/bin' \
        --message "static busybox with $count applets" \
        - "$IMAGE" >/dev/null
echo "$IMAGE: imported ($count applet links)"
