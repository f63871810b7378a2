#!/usr/bin/env bash
# Debian's haproxy for tests/test_replicas.py (make test, make replicas), installed with apt-get where it is missing
# and this runs as root; otherwise those tests skip, saying why.
command -v haproxy >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy \
        >/dev/null && exit 0
fi
echo "haproxy is not installed and apt-get could not install it (root and Debian's packages needed):" \
     "tests/test_replicas.py skips"
