#!/usr/bin/env bash
# Idempotently build the Patroni virtualenv used by the benchmark harness.
#
# * Built from the system interpreter (/usr/bin/python3), outside the repo and
#   outside /root, so that the unprivileged `postgres` OS user (which runs
#   Patroni and therefore PostgreSQL) can execute it.
# * Re-used when it already holds the pinned version; rebuilt otherwise.
# * Also makes sure the interpreter that runs the harness has psycopg 3.
#
# Usage: bash bench/setup_patroni.sh            (prints the installed version)
#   PATRONI_VERSION=4.1.5 PGQ_CACHE=/opt/pgquorum-cache bash bench/setup_patroni.sh
set -euo pipefail

PATRONI_VERSION="${PATRONI_VERSION:-4.1.5}"
CACHE="${PGQ_CACHE:-/opt/pgquorum-cache}"
VENV="$CACHE/patroni-venv"
SYS_PY="${SYS_PY:-/usr/bin/python3}"
HARNESS_PY="${HARNESS_PY:-python3}"

installed_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("patroni"))' 2>/dev/null || true
}

mkdir -p "$CACHE"
chmod 755 "$CACHE"

if [[ "$(installed_version)" != "$PATRONI_VERSION" || ! -f "$VENV/.complete" ]]; then
    echo "building $VENV with patroni==$PATRONI_VERSION" >&2
    # venv scripts embed their absolute path, so build in place; the marker
    # file is written last so that an interrupted build is redone next time.
    rm -rf "$VENV"
    "$SYS_PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "patroni[etcd3,psycopg3]==$PATRONI_VERSION" "psycopg[binary]>=3.1"
    touch "$VENV/.complete"
fi
chmod -R a+rX "$VENV"

# The harness itself (run as root) needs psycopg 3 to drive the writer client.
if ! "$HARNESS_PY" -c 'import psycopg' 2>/dev/null; then
    echo "installing psycopg for the harness interpreter ($HARNESS_PY)" >&2
    "$HARNESS_PY" -m pip install --quiet --disable-pip-version-check "psycopg[binary]>=3.2,<3.4"
fi

# The postgres user must be able to run it.
su postgres -s /bin/sh -c "$VENV/bin/patroni --version" >&2
echo "patroni $(installed_version) at $VENV"
