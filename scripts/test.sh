#!/usr/bin/env bash
# The test command of the README and of CI: installs what is missing, lints, type-checks,
# starts real Kafka, Elasticsearch and S3 servers (scripts/services.sh, no Docker), then runs
# every test: unit, end-to-end with DCMTK, integration. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
PYTHON=${PYTHON:-python3}

echo "[test] ruff"
$PYTHON -m ruff check .
$PYTHON -m ruff format --check .
echo "[test] mypy --strict"
$PYTHON -m mypy
echo "[test] real Kafka, Elasticsearch and S3 for the integration tests"
bash scripts/services.sh up
if [ "${CI:-}" = "true" ]; then
  trap 'bash scripts/services.sh down >/dev/null 2>&1 || true' EXIT
fi
set -a
# shellcheck disable=SC1091
. ./.services.env
set +a
# Integration tests fail (never skip) when a service is missing.
export DICOMFLOW_REQUIRE_SERVICES=1

echo "[test] pytest"
$PYTHON -m pytest "$@"
