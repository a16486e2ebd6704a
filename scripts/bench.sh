#!/usr/bin/env bash
# The benchmark of issue 6: dicomflow side by side with DCMTK storescp and Orthanc, one run.
#   bash scripts/bench.sh --quick          # a few minutes
#   bash scripts/bench.sh                  # the full run (see docs/performance.md)
#   bash scripts/bench.sh --help           # every option
# It installs nothing: DCMTK (apt-get install dcmtk) and Orthanc (apt-get install orthanc) are
# used if present, each reference column is left out otherwise. Results go to bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m dicomflow.bench "$@"
