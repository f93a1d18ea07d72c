#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 without touching any container registry:
# debootstrap a minimal root filesystem from the Debian mirror and `docker import` it.
#
#   scripts/build-base-image.sh [TAG]          # default tag: aim-base:bookworm
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild an
# existing tag. Needs root (debootstrap) and a running Docker daemon.
set -euo pipefail

TAG="${1:-aim-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"

log() { printf '[build-base-image] %s\n' "$*" >&2; }

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG already exists (FORCE=1 rebuilds it)"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  log "debootstrap needs root"
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -x /usr/sbin/debootstrap ]]; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

ROOTFS="$(mktemp -d /var/tmp/aim-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

start=$SECONDS
log "debootstrap --variant=minbase $SUITE into $ROOTFS ($MIRROR)"
"$DEBOOTSTRAP" --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
  >"$ROOTFS.log" 2>&1 || {
  tail -n 30 "$ROOTFS.log" >&2
  rm -f "$ROOTFS.log"
  exit 1
}
rm -f "$ROOTFS.log"

# Slim the filesystem: package caches and lists are re-fetched by `apt-get update` when needed.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
# Services must not start while a Dockerfile installs packages (no init system in a container).
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

log "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . |
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >/dev/null

log "$TAG built in $((SECONDS - start))s: $(docker run --rm "$TAG" python3 --version)"
