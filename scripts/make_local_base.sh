#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 for hosts that cannot
# reach Docker Hub (so `python:3.11-slim-bookworm` cannot be pulled).
#
#   scripts/make_local_base.sh [IMAGE]        default IMAGE: slm-matrix/base:bookworm
#
# Environment:
#   DEBIAN_MIRROR   apt mirror (default http://deb.debian.org/debian)
#   DEBIAN_SUITE    suite (default bookworm; its python3 is 3.11, like the stock image)
#   FORCE=1         rebuild even when IMAGE already exists
#
# Idempotent: prints the image name and exits 0 when it already exists.
# Needs root, debootstrap and a running Docker daemon. Prints only the image name on stdout;
# progress goes to stderr, so callers can do BASE_IMAGE=$(scripts/make_local_base.sh).
set -euo pipefail

IMAGE="${1:-slm-matrix/base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"
# What a Python base needs: the interpreter, venv + pip (the Dockerfiles create /opt/venv
# from whatever python3 the base has), CA handling, and the small things the stock slim
# image also carries (tzdata, netbase for /etc/services and /etc/protocols).
PACKAGES="python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata"

log() { echo "[make_local_base] $*" >&2; }

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists (FORCE=1 to rebuild)"
    echo "$IMAGE"
    exit 0
fi

[[ $(id -u) == 0 ]] || { log "must run as root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap not installed (apt-get install -y debootstrap)"; exit 1; }

ROOTFS=$(mktemp -d /tmp/slm-base.XXXXXX)
cleanup() {
    # debootstrap may leave proc/sys mounted when it fails half-way
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE minbase from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2

# apt sources with updates and security, so images built on it get fixed packages.
cat > "$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
# Like the official Debian images: no recommends, keep the image small.
cat > "$ROOTFS/etc/apt/apt.conf.d/90slm-matrix" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
# Trim what a container never needs.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
# A stable machine-id is not wanted in a base image.
: > "$ROOTFS/etc/machine-id"

log "docker import as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL io.slm-matrix.base="debootstrap-'"$SUITE"'-minbase"' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >&2

docker run --rm "$IMAGE" python3 -c 'import sys, venv, ssl; print("python", sys.version.split()[0])' >&2
log "done in $(( $(date +%s) - start )) s"
echo "$IMAGE"
