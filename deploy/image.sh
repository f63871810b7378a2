#!/usr/bin/env bash
# make image: seqserve:latest (IMAGE=... for another tag) from the Dockerfile, with Docker or Podman, whichever
# is present (deploy/engine.sh). Where no registry is reachable, the base image is seeded from Debian's packages.
# pip's CA bundle (PIP_CERT, or the cert pip's own configuration names) is given to the build as the secret
# pip_cert: mounted for the steps that run pip, kept in no layer.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/engine.sh
IMAGE=${IMAGE:-seqserve:latest}

choose_engine || { echo "make image: no container engine (docker with a running daemon, or podman)." \
                        "Install one, e.g. apt-get install podman" >&2; exit 1; }
ensure_base
podman_settings

args=(build -t "$IMAGE")
if [ "$ENGINE" = podman ]; then
    args+=(--network host --format docker)  # the docker format keeps HEALTHCHECK
fi
cert=${PIP_CERT:-$( (python3 -m pip config get global.cert || pip config get global.cert) 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
    args+=(--secret "id=pip_cert,src=$cert")
fi
started=$(date +%s)
"$ENGINE" "${args[@]}" .
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "make image: $IMAGE with $ENGINE in $(( $(date +%s) - started )) s, $(( size / 1000000 )) MB"
