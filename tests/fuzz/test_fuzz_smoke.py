"""The fuzz smoke of CI: every fuzz target (fuzz/registry.py) under atheris, briefly.

Each target runs its generated seeds and then mutated inputs for a few seconds (at most
`SMOKE_RUNS` executions), with a fixed libFuzzer seed; any crash or hang fails the test with
the target's log. The long run (a million executions and more) is ``bash scripts/fuzz.sh``;
its figures are in docs/reliability.md.
"""

from pathlib import Path

import pytest

from fuzz.__main__ import run_target
from fuzz.registry import TARGETS

SMOKE_RUNS = 5000
SMOKE_SECONDS = 2  # per target, beside a start-up of about 3 s (imports, seeds)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_a_short_run(target: str, tmp_path: Path) -> None:
    outcome = run_target(target, SMOKE_RUNS, tmp_path, timeout=10, seed=1, max_time=SMOKE_SECONDS)
    log = outcome.log.read_text() if outcome.log else ""
    assert not outcome.failed, f"{target}: {outcome}\n{log[-6000:]}"
    assert outcome.executions > 0, log[-2000:]
