#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine: DCMTK (the reference DICOM
# client), and dicomflow with its development and back-end extras. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v storescu >/dev/null 2>&1; then
  echo "[bootstrap] installing DCMTK"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk >/dev/null
fi

PYTHON=${PYTHON:-python3}
echo "[bootstrap] installing dicomflow[dev] and the example plugin"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[dev]"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e examples/dicomflow-example-plugin
