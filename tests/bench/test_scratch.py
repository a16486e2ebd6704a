"""The bench deletes scratch data where it cannot slow the next measurement."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from dicomflow.bench import runner
from dicomflow.bench.options import parse_options
from dicomflow.bench.receivers import StorescpServer
from dicomflow.bench.runner import FILE_SYSTEM_SETTLE_S, Bench
from dicomflow.bench.tools import Tool


def test_a_measurement_waits_for_the_file_system_after_a_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = Bench(parse_options(["--work", str(tmp_path / "work")]), Console(file=io.StringIO()))
    slept: list[float] = []
    monkeypatch.setattr(runner.time, "sleep", slept.append)
    bench.settle_file_system()
    assert slept == []  # nothing deleted yet
    (tmp_path / "work" / "old" / "a").mkdir(parents=True)
    bench.delete(tmp_path / "work" / "old")
    assert not (tmp_path / "work" / "old").exists()
    bench.settle_file_system()
    assert len(slept) == 1 and FILE_SYSTEM_SETTLE_S - 5 < slept[0] <= FILE_SYSTEM_SETTLE_S


def test_storescp_output_is_set_aside_between_runs_not_deleted(tmp_path: Path) -> None:
    server = StorescpServer(tmp_path, Tool("storescp", "/usr/bin/storescp", "3.6.7"))
    server.out.mkdir(parents=True)
    (server.out / "CT.1").write_bytes(b"x")
    server.after_run()
    assert server.count() == 0
    assert (tmp_path / "received-1" / "CT.1").exists()
    (server.out / "CT.2").write_bytes(b"x")
    server.after_run()
    assert (tmp_path / "received-2" / "CT.2").exists() and server.count() == 0
