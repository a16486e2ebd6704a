"""`dicomflow bench`: ingest and search figures side by side with DCMTK and Orthanc.

Run ``dicomflow bench --quick`` (about two minutes) or ``dicomflow bench`` (the full run);
``python -m dicomflow.bench`` and ``scripts/bench.sh`` do the same. docs/performance.md explains
the method and records the latest figures. Linux only (process figures come from /proc).
"""
