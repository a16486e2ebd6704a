#!/usr/bin/env bash
# The fuzzing job: every target of fuzz/registry.py (raw PDUs into both DICOM acceptors,
# datasets and files into the receive path and the metadata processor, Lucene and QIDO-RS
# queries into the parsers and the embedded index, WADO-RS parameters) under atheris, for an
# execution budget shared by the targets (default 1,000,000; CI runs a small one in
# tests/fuzz/test_fuzz_smoke.py). Prints executions, exec/s, crashes and hangs per target;
# exits 1 on any crash or hang, whose input is under .fuzz/artifacts/<target>/.
#   bash scripts/fuzz.sh [--budget N] [--targets a,b] [--timeout S] [--seed N] [--list]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m fuzz "$@"
