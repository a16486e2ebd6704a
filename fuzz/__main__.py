"""Run the fuzz targets: ``python -m fuzz --budget 1000000`` (see ``--help``).

Each target runs in its own libFuzzer process (`fuzz.worker`) for its share of the budget;
the first crash or hang of a target ends that target, its input saved under
``WORKDIR/artifacts/TARGET/``. Prints executions, exec/s, crashes and hangs per target and
in total; exits with 1 if anything crashed or hung.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.registry import TARGETS, split_budget

MEMORY_LIMIT_BYTES = 6 << 30  # a runaway allocation is a crash here, not the machine's problem
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Outcome:
    """What one target's run came to, from libFuzzer's output."""

    target: str
    executions: int = 0
    seconds: float = 0.0
    crashes: list[Path] = field(default_factory=list)
    hangs: list[Path] = field(default_factory=list)
    rate: int = 0  # executions per second while fuzzing (libFuzzer's figure)
    error: str = ""  # the worker failed without a libFuzzer verdict (setup failure)
    log: Path | None = None

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.hangs or self.error)


def parse_output(target: str, output: str, returncode: int, seconds: float) -> Outcome:
    outcome = Outcome(target, seconds=seconds)
    stats = {name: int(value) for name, value in _STAT.findall(output)}
    outcome.executions = stats.get("number_of_executed_units", 0)
    # libFuzzer's rate leaves out the start-up; it reads 0 for a run under a second.
    outcome.rate = stats.get("average_exec_per_sec", 0) or round(outcome.executions / seconds)
    for path in map(Path, _ARTIFACT.findall(output)):
        (outcome.hangs if path.name.startswith("timeout-") else outcome.crashes).append(path)
    if returncode != 0 and not (outcome.crashes or outcome.hangs):
        last = output.strip().splitlines()[-1:] or ["no output"]
        outcome.error = f"exit status {returncode}: {last[0][:200]}"
    return outcome


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def run_target(
    target: str, runs: int, workdir: Path, timeout: int, seed: int | None, max_time: int | None
) -> Outcome:
    artifacts = workdir / "artifacts" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-runs={runs}",
        f"-timeout={timeout}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
    ]
    if seed is not None:
        flags.append(f"-seed={seed}")
    if max_time is not None:
        flags.append(f"-max_total_time={max_time}")
    command = [sys.executable, "-m", "fuzz.worker", target, str(workdir), *flags]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        preexec_fn=_limit_memory,  # the runner has no threads
    )
    seconds = time.monotonic() - started
    log = logs / f"{target}.log"
    log.write_text(done.stdout + done.stderr)
    outcome = parse_output(target, done.stderr, done.returncode, seconds)
    outcome.log = log
    return outcome


def reproduce(target: str, path: Path, workdir: Path) -> int:
    """Run one input through `target` in this process: 0 if it passes, 1 with its traceback."""
    import importlib
    import traceback
    import warnings

    warnings.simplefilter("ignore")
    spec = TARGETS[target]
    state = workdir.resolve() / "state" / f"{target}-reproduce"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    one_input = getattr(importlib.import_module(spec.module), f"build_{spec.entry}")(state)
    try:
        one_input(path.read_bytes())
    except Exception:
        traceback.print_exc()
        return 1
    print(f"{target}: {path} passes")
    return 0


def report(outcomes: Sequence[Outcome], wall: float) -> str:
    lines = [
        f"{'target':<12} {'executions':>12} {'seconds':>9} {'exec/s':>8} {'crashes':>8} "
        f"{'hangs':>6}"
    ]
    for o in outcomes:
        lines.append(
            f"{o.target:<12} {o.executions:>12,} {o.seconds:>9.1f} {o.rate:>8.0f} "
            f"{len(o.crashes):>8} {len(o.hangs):>6}" + (f"  ERROR {o.error}" if o.error else "")
        )
    total = sum(o.executions for o in outcomes)
    lines.append(
        f"{'total':<12} {total:>12,} {wall:>9.1f} {total / wall if wall else 0:>8.0f} "
        f"{sum(len(o.crashes) for o in outcomes):>8} {sum(len(o.hangs) for o in outcomes):>6}"
    )
    for o in outcomes:
        for path in o.crashes + o.hangs:
            lines.append(f"{o.target}: {path} (log: {o.log})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument(
        "--budget", type=int, default=1_000_000, help="executions in all, shared by weight"
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".fuzz"), help="corpus, artifacts")
    parser.add_argument("--timeout", type=int, default=2, help="seconds per input (a hang)")
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer seed (reproducible)")
    parser.add_argument(
        "--max-time", type=int, default=None, help="seconds per target at most (a safety net)"
    )
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--reproduce",
        nargs=2,
        metavar=("TARGET", "INPUT"),
        help="run one saved input through a target, uninstrumented, and show what it raises",
    )
    args = parser.parse_args(argv)
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]), args.workdir)
    if args.list:
        for spec in TARGETS.values():
            print(f"{spec.name:<12} {spec.about}")
        return 0
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    budget = split_budget(args.budget, names)
    workdir = args.workdir.resolve()
    outcomes = []
    started = time.monotonic()
    for name in names:
        print(f"[fuzz] {name}: {budget[name]:,} executions", flush=True)
        outcome = run_target(name, budget[name], workdir, args.timeout, args.seed, args.max_time)
        outcomes.append(outcome)
    print(report(outcomes, time.monotonic() - started))
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
