# Sourced by deploy/image.sh and deploy/test-deploy.sh: which container engine, its base image, its settings.
#   choose_engine   ENGINE: docker where its daemon answers, else podman (ENGINE=... chooses)
#   ensure_base     debian:bookworm-slim present, else pulled, else seeded from Debian's packages (seed-base.sh)
#   podman_settings where podman cannot run a container with its own settings (our sandboxes: crun refuses
#                   their cgroup layout, and rlimits cannot be raised), export CONTAINERS_CONF=podman/containers.conf
DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=docker.io/library/debian:bookworm-slim

choose_engine() {
    if [ -n "${ENGINE:-}" ]; then return 0; fi
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else return 1
    fi
}

ensure_base() {
    "$ENGINE" image inspect "$BASE" >/dev/null 2>&1 && return 0
    timeout 300 "$ENGINE" pull -q "$BASE" >/dev/null 2>&1 && return 0
    echo "no registry gave $BASE: seeding it from Debian's packages (deploy/seed-base.sh)"
    "$DEPLOY/seed-base.sh" "$ENGINE"
}

podman_settings() {
    if [ "$ENGINE" != podman ] || [ -n "${CONTAINERS_CONF:-}" ]; then return 0; fi
    podman run --rm --network none "$BASE" true >/dev/null 2>&1 && return 0
    export CONTAINERS_CONF="$DEPLOY/podman/containers.conf"
    echo "podman cannot run a container with its own settings here: using $CONTAINERS_CONF"
    podman run --rm --network none "$BASE" true >/dev/null
}
