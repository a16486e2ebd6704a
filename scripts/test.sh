#!/usr/bin/env bash
# The test command of the README and of CI: installs what is missing, lints, type-checks,
# then runs every test (unit, end-to-end with DCMTK). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
PYTHON=${PYTHON:-python3}

echo "[test] ruff"
$PYTHON -m ruff check .
$PYTHON -m ruff format --check .
echo "[test] mypy --strict"
$PYTHON -m mypy
echo "[test] pytest"
$PYTHON -m pytest "$@"
