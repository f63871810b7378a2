#!/usr/bin/env bash
# Make the Dockerfile's base image, debian:bookworm-slim, from Debian's packages, for machines that
# reach Debian's mirrors but no container registry. Where a registry is reachable this is not needed:
# `docker build` pulls the same tag.
#
#   deploy/seed-base.sh [podman|docker]     (root: debootstrap needs it; about 2 minutes)
#
# debootstrap --variant=minbase bookworm, trimmed like the official slim image (no documentation,
# manual pages or translations, now or in later apt-get installs; no apt caches), then imported as
# docker.io/library/debian:bookworm-slim, so `FROM debian:bookworm-slim` resolves locally without a pull.
# The mirrors are the ones apt on this machine uses (MIRROR=..., SECURITY=... override them).
set -euo pipefail

ENGINE=${1:-podman}
TAG=docker.io/library/debian:bookworm-slim
SUITE=bookworm

if "$ENGINE" image exists "$TAG" 2>/dev/null || "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
    echo "seed-base: $TAG is already there"
    exit 0
fi

SOURCES=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
uri() {  # the first URI ending in $1 of apt's own sources (one-line or deb822 format)
    grep -hsE '^\s*(deb\s|URIs:)' "${SOURCES[@]}" | grep -oE "https?://[^ ]+/$1/?( |\$)" | head -n 1 | tr -d ' ' || true
}
MIRROR=${MIRROR:-$(uri debian)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-$(uri debian-security)}

ROOTFS=$(mktemp -d /tmp/seqserve-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "seed-base: debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# What the official slim image does: keep no documentation, and no package caches.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/slim" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
find "$ROOTFS/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOTFS"/usr/share/{man,groff,info,lintian,locale}/* "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
echo "deb $MIRROR $SUITE main" >"$ROOTFS/etc/apt/sources.list"
echo "deb $MIRROR $SUITE-updates main" >>"$ROOTFS/etc/apt/sources.list"
if [ -n "$SECURITY" ]; then echo "deb $SECURITY $SUITE-security main" >>"$ROOTFS/etc/apt/sources.list"; fi

tar --numeric-owner -C "$ROOTFS" -c . | "$ENGINE" import --change 'CMD ["bash"]' - "$TAG"
"$ENGINE" image inspect --format '{{.Size}}' "$TAG" | awk '{printf "seed-base: %s, %.0f MB\n", "'"$TAG"'", $1 / 1e6}'
