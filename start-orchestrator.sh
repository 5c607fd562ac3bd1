#!/usr/bin/env bash
# Start Stream Orchestrator.
#
# With no configuration it starts embedded PostgreSQL and Valkey under
# STREAMORCH_DATA_DIR (default ./.streamorch) and serves the API on
# ORCHESTRATOR_HOST:ORCHESTRATOR_PORT (default 127.0.0.1:8001). With
# DATABASE_URL / DB_HOST (or POSTGRES_HOST) and REDIS_URL / REDIS_HOST set it
# starts nothing and waits for those servers instead.
#
# This script only finds (or installs) the Python environment and hands over to
# `streamorch serve`, which runs every phase — validate, services, wait,
# migrate, verify, serve — in one process, timing and logging each (see
# docs/decisions/0002-startup-in-one-process.md). It is also the container
# entrypoint. Exit codes (docs/reference/exit-codes.md): 0 stopped on request,
# 3 install, 10 configuration, 11 embedded services, 12 PostgreSQL, 13 Redis,
# 14 database set-up, 15 migrations, 16 verification, 17 serving, 18 start-up
# timeout.
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '%s INFO    start-orchestrator: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$*" >&2; }

started=$(date +%s%N)
if [[ -f "$here/pyproject.toml" && -z "${STREAMORCH_SKIP_INSTALL:-}" ]]; then
    # shellcheck source=scripts/bootstrap.sh
    source "$here/scripts/bootstrap.sh"
    bootstrap_venv "$here" "" || exit 3
    streamorch="$here/.venv/bin/streamorch"
elif command -v streamorch >/dev/null; then
    streamorch="$(command -v streamorch)"
else
    echo "error: the streamorch command is not installed and there is no source tree to install" \
         "it from; pip install the package or run this script from a checkout" >&2
    exit 3
fi
say "phase environment: done in $(( ($(date +%s%N) - started) / 1000000 )) ms [$streamorch]"

# Relative data directories are relative to the checkout, wherever we are called from.
if [[ -f "$here/pyproject.toml" ]]; then cd "$here"; fi
exec "$streamorch" serve "$@"
