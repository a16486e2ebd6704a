"""Fuzzing of dicomflow's parsers of untrusted input, driven by atheris (libFuzzer for Python).

``python -m fuzz`` (or ``scripts/fuzz.sh``) runs every target with an execution budget and
prints executions, exec/s, crashes and hangs per target; `fuzz.registry` lists the targets.

The harness sits at the repository root, beside ``src/`` and ``tests/``, not inside
``tests/``: it is a proper package run as ``python -m fuzz`` by the long fuzzing job and by
the CI smoke (tests/fuzz/test_fuzz_smoke.py), while the test tree has no ``__init__.py``
files (pytest imports its modules by file name). It is not part of the installed package.

What counts as a crash: any exception that escapes a parser other than the documented errors
that its callers turn into a clear status (`IngestError` -> DIMSE or HTTP status,
`InvalidQuery` / `InvalidUID` -> 400, `HTTPException`, `PoisonEvent` -> dead-letter topic),
and any error logged with a traceback by the code that catches everything at the edges
(an unexpected failure reported as "processing failure"). A hang is an input that takes
longer than the per-input time limit.
"""
