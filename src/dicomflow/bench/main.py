"""Entry point of `dicomflow bench` (and ``python -m dicomflow.bench``)."""

import signal
import sys
from types import FrameType

from rich.console import Console

from dicomflow.bench.options import parse_options
from dicomflow.bench.receivers import BenchError
from dicomflow.bench.report import compute_targets, render, write_json
from dicomflow.bench.runner import Bench


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # The servers of a phase run in process groups of their own: only the phase's clean-up
    # stops them, and it runs on KeyboardInterrupt. SIGTERM (kill, a CI timeout) must too.
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(argv: list[str]) -> int:
    """Run the phases asked for, print the table, write the JSON; 0 unless the bench failed.

    A missed target is a figure, not a failure: the exit code says whether the figures could
    be measured (2: a receiver misbehaved or a tool is missing).
    """
    options = parse_options(argv[1:] if argv[:1] == ["--"] else argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    if not sys.platform.startswith("linux"):
        console.print("[red]dicomflow bench needs Linux (it reads /proc)[/]")
        return 2
    bench = Bench(options, console)
    signal.signal(signal.SIGTERM, _interrupted)
    code = 0
    try:
        results = bench.run()
    except BenchError as exc:
        console.print(f"[red]bench failed:[/] {exc}")
        results = bench.results
        results["error"] = str(exc)
        code = 2
    targets = compute_targets(results)
    results["targets"] = [t.to_json() for t in targets]
    render(console, results, targets)
    write_json(options.out, results)
    console.print(f"results written to {options.out}")
    return code
