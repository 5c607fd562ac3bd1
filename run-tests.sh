#!/usr/bin/env bash
# Run the whole test suite against real PostgreSQL and Redis.
#
# Installs the project and its test dependencies into .venv on first run. The
# tests start embedded PostgreSQL and Valkey themselves, or use DATABASE_URL /
# REDIS_URL when set (the database user must be allowed to create databases).
# Arguments go to pytest: ./run-tests.sh tests/unit -x
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
bootstrap_venv "$here" "[test]" || exit 3
exec .venv/bin/python -m pytest "$@"
