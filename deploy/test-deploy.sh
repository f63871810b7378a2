#!/usr/bin/env bash
# make test-deploy: build the image and run it as deploy/README.md says, with real Podman, Prometheus and
# promtool (tests/deploy/test_deploy.py). It installs what it needs with apt-get where it can, and skips,
# saying so, only where no container engine can be had.
#   PY=.venv/bin/python deploy/test-deploy.sh        (make test-deploy sets PY)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
started=$(date +%s)

# command -> Debian package: the engine and what Podman needs on our machines (runc, catatonit for kube play,
# the CNI DNS plugin for compose), debootstrap to seed the base image, Prometheus with promtool, podman-compose.
declare -A PACKAGES=([podman]=podman [runc]=runc [catatonit]=catatonit [debootstrap]=debootstrap
                     [prometheus]=prometheus [promtool]=prometheus [podman-compose]=podman-compose
                     [/usr/lib/cni/dnsname]=golang-github-containernetworking-plugin-dnsname)
missing=()
for command in "${!PACKAGES[@]}"; do
    command -v "$command" >/dev/null || [ -x "$command" ] || missing+=("${PACKAGES[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "test-deploy: installing ${missing[*]}"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || echo "test-deploy: apt-get install failed"
    fi
fi
if ! command -v podman >/dev/null; then
    echo "SKIPPED make test-deploy: no container engine here, and apt-get could not install podman" \
         "(it needs root and Debian's packages)"
    exit 0
fi

ENGINE=podman deploy/image.sh
source deploy/engine.sh
ENGINE=podman
podman_settings >/dev/null
export SEQSERVE_DEPLOY_REPORT
SEQSERVE_DEPLOY_REPORT=$(mktemp)
trap 'rm -f "$SEQSERVE_DEPLOY_REPORT"' EXIT
"$PY" -m pytest -m deploy tests/deploy
echo "test-deploy measured:"
sed 's/^/  /' "$SEQSERVE_DEPLOY_REPORT"
echo "  make test-deploy (install, build, tests): $(( $(date +%s) - started )) s"
