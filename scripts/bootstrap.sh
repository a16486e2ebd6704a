#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine: DCMTK (the reference DICOM
# client), Orthanc (a reference archive, as a C-MOVE destination), Chromium (the browser of
# the UI tests), and dicomflow with its development and back-end extras. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Checked by path: pynetdicom installs console scripts named like DCMTK's tools (storescu...).
missing=()
[ -x /usr/bin/storescu ] || missing+=(dcmtk)
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
# The headless browser of the UI tests (Playwright drives it; no browser download).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bootstrap] installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian may start Orthanc as a service: the tests run their own, on free ports.
  $SUDO service orthanc stop >/dev/null 2>&1 || true
fi

PYTHON=${PYTHON:-python3}
echo "[bootstrap] installing dicomflow[dev,kafka,elasticsearch,s3] and the example plugin"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  -e ".[dev,kafka,elasticsearch,s3]"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e examples/dicomflow-example-plugin
