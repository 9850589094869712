#!/usr/bin/env bash
# Installs Debian's PostgreSQL server when its binaries are absent. The shared-study tests
# (tests/core/test_tune_postgres.py) start their own throw-away server with initdb/pg_ctl from
# /usr/lib/postgresql/*/bin, so nothing here starts or configures a cluster.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/postgres.sh: PostgreSQL is not installed; run as root (or: sudo apt-get install postgresql)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The package also creates the unprivileged `postgres` user that the test fixture runs initdb as.
apt-get install -y -q postgresql
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
