"""Sustained load: concurrent associations sending to a fresh `dicomflow serve` for minutes.

    python scripts/load.py                      # 8 associations, 10 minutes, 10 KB objects
    python scripts/load.py --minutes 1 --associations 4 --case ct

Starts `dicomflow serve` (every role, embedded back ends) on a scratch data directory and
free loopback ports; each association is a DCMTK storescu (TCP_NODELAY=1) sending batches of
objects made by `dicomflow.synthetic` (a template stamped with fresh UIDs, as the benchmark
does), one batch after another until the time is up. Every few seconds the memory of every
dicomflow process is sampled (RSS and its anonymous part; psutil if installed, else /proc). Afterwards the pipeline
drains and the archive is asked how many instances it indexed.

The summary: objects sent, acknowledged and indexed, the rate, RSS first/last/max per process,
and two verdicts: zero errors (any non-success status, failed association or store, a child
of the supervisor that died) and flat memory (per process, the mean anonymous memory of the
last quarter of the run within --tolerance of the mean of the second quarter: the heap, where
a leak shows; the rest of the RSS is mostly the memory-mapped index, page cache that grows with
the index). Exit code 0 only if both hold and every acknowledged object is indexed. A load script, not a test: nothing here has a time
limit, and the machine's other load shows in the rate.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dicomflow.bench import procs
from dicomflow.bench.data import CASES, Template, flat_identities
from dicomflow.bench.receivers import DicomflowServer
from dicomflow.bench.tools import find_dcmtk

TOKEN = "load-admin-token-" + "l" * 24  # sent as a bearer token once the API requires one
MIB = 1024 * 1024


@dataclass
class Tally:
    """What the senders did, shared by their threads."""

    sent: int = 0
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: int, acknowledged: int, errors: list[str]) -> None:
        with self.lock:
            self.sent += sent
            self.acknowledged += acknowledged
            self.errors.extend(errors)


_RESPONSE = re.compile(r"Received Store Response \((.+)\)")


def run_storescu(storescu: str, port: int, folder: Path) -> tuple[int, int, list[str]]:
    """Send a folder over one association: (sent, acknowledged, errors)."""
    command = [storescu, "-v", "-aet", "LOADSCU", "-aec", "DICOMFLOW", "+sd", "+r", "-nh"]
    result = subprocess.run(
        [*command, "127.0.0.1", str(port), str(folder)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    output = result.stdout + result.stderr
    sent = output.count("Sending file:")
    statuses = _RESPONSE.findall(output)
    acknowledged = statuses.count("Success")
    errors = [f"status {status}" for status in statuses if status != "Success"]
    errors += [line.strip() for line in output.splitlines() if line.startswith(("E:", "F:"))]
    if result.returncode != 0:
        errors.append(f"storescu exited with {result.returncode}")
    return sent, acknowledged, errors


def sender(
    number: int,
    storescu: str,
    port: int,
    template: Template,
    run: int,
    batch: int,
    work: Path,
    until: float,
    rate: float,
    tally: Tally,
) -> None:
    """One association at a time, batch after batch of fresh objects, until `until`.

    With a `rate` (objects/s of this sender), it waits between batches to keep to it.
    """
    folder = work / f"scu{number}"
    first = number * 10**9  # disjoint identities per sender
    started, sent = time.monotonic(), 0
    while time.monotonic() < until:
        folder.mkdir(parents=True, exist_ok=True)
        for ident in flat_identities(batch, first=first):
            (folder / f"{ident.instance:012d}.dcm").write_bytes(template.render(run, ident))
        first += batch
        tally.add(*run_storescu(storescu, port, folder))
        shutil.rmtree(folder)
        sent += batch
        if rate > 0:
            time.sleep(max(0.0, min(until, started + sent / rate) - time.monotonic()))


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes; zeros if the process is gone.

    The anonymous part is the process's own heap: what a leak grows. The rest of the RSS is
    file pages mapped by the process, mostly the SQLite index (memory-mapped up to 256 MB):
    the kernel's page cache, which grows with the index and is reclaimed under pressure.
    """
    try:
        import psutil  # type: ignore[import-untyped]  # optional, no stubs installed

        info = psutil.Process(pid).memory_info()
        rss: int = info.rss
        return rss, rss - int(getattr(info, "shared", 0))
    except ImportError:
        pass
    except Exception:  # the process is gone: psutil.NoSuchProcess and friends
        return 0, 0
    try:
        status = (procs.PROC / str(pid) / "status").read_text()
    except OSError:
        return 0, 0
    return procs.parse_status_kib(status, "VmRSS"), procs.parse_status_kib(status, "RssAnon")


@dataclass
class Series:
    label: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, RSS, anon)


class Sampler:
    """RSS of every process of the server every `interval` seconds, in a thread."""

    def __init__(self, server: DicomflowServer, interval: float) -> None:
        self.server = server
        self.interval = interval
        self.series: dict[int, Series] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self.started
            for pid in self.server.pids():
                if pid not in self.series:
                    self.series[pid] = Series(f"{self.server.role_of(pid)} ({pid})")
                rss, anon = memory_of(pid)
                if rss:
                    self.series[pid].samples.append((now, rss, anon))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def mean_between(values: list[tuple[float, int]], start: float, end: float) -> float | None:
    within = [value for t, value in values if start <= t < end]
    return sum(within) / len(within) if within else None


def memory_report(
    sampler: Sampler, duration: float, tolerance: float, say: Callable[[str], None]
) -> bool:
    """Print memory per process; True if every process's anonymous memory is flat."""
    flat = True
    say(
        f"{'process':<28}{'RSS first':>10}{'last':>8}{'max':>8}{'anon Q2':>10}{'anon Q4':>10}  (MB)"
    )
    for series in sampler.series.values():
        if not series.samples:
            continue
        rss = [value for _, value, _ in series.samples]
        anon = [(t, value) for t, _, value in series.samples]
        second = mean_between(anon, duration / 4, duration / 2)
        last = mean_between(anon, duration * 3 / 4, duration + 1)
        verdict = ""
        if second is not None and last is not None and last > second * (1 + tolerance):
            verdict = f"  GROWS {100 * (last / second - 1):.0f}%"
            flat = False
        q2 = f"{second / MIB:.1f}" if second else "-"
        q4 = f"{last / MIB:.1f}" if last else "-"
        say(
            f"{series.label:<28}{rss[0] / MIB:>10.1f}{rss[-1] / MIB:>8.1f}"
            f"{max(rss) / MIB:>8.1f}{q2:>10}{q4:>10}{verdict}"
        )
    return flat


def pipeline_lag(http: httpx.Client) -> int:
    """Records the processors have not consumed yet, all groups together."""
    processors = http.get("/api/status").json()["processors"]
    return sum(int(p["lag"]) for p in processors)


def wait_for_pipeline(http: httpx.Client, timeout: float) -> int:
    """Wait until no processor lags; returns the lag left (0 when drained)."""
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        lag = pipeline_lag(http)
        if lag == 0:
            return 0
        time.sleep(1)
    return lag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--case", choices=sorted(CASES), default="tiny")
    parser.add_argument("--batch", type=int, default=100, help="objects per association run")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="objects/s of all associations together (default: as fast as they go)",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--tolerance", type=float, default=0.10, help="of the flat verdict")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    storescu = find_dcmtk("storescu")
    if storescu is None:
        say("DCMTK's storescu is missing (apt-get install dcmtk)")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="dicomflow-load-"))
    template = Template(CASES[args.case])
    run = int(time.time()) % 10**8
    server = DicomflowServer(work, {"admin_token": TOKEN}, ["ingest", "processors", "api"])
    tally = Tally()
    duration = args.minutes * 60
    try:
        server.start()
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{server.http_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        children = set(procs.tree_pids(server.pid))
        say(
            f"{args.associations} associations x {args.minutes:g} min of {template.case.label}"
            f" ({f'{args.rate:g}/s' if args.rate else 'unpaced'}) to dicomflow serve on port"
            f" {server.port}, data in {server.data_dir}"
        )
        with Sampler(server, args.sample_seconds) as sampler:
            until = time.monotonic() + duration
            started = time.monotonic()
            threads = [
                threading.Thread(
                    target=sender,
                    args=(n, storescu.path, server.port, template, run, args.batch, work, until),
                    kwargs={"rate": args.rate / args.associations, "tally": tally},
                )
                for n in range(args.associations)
            ]
            for thread in threads:
                thread.start()
            report_at = started + 30
            while any(thread.is_alive() for thread in threads):
                time.sleep(1)
                if time.monotonic() >= report_at:
                    report_at += 30
                    elapsed = time.monotonic() - started
                    say(
                        f"  {elapsed:5.0f} s: {tally.acknowledged} acknowledged "
                        f"({tally.acknowledged / elapsed:.0f}/s), {len(tally.errors)} errors, "
                        f"pipeline lag {pipeline_lag(http)}"
                    )
            sending = time.monotonic() - started
        lag = wait_for_pipeline(http, timeout=1800)
        drained = time.monotonic() - started - sending
        indexed = int(http.get("/api/search", params={"level": "instance"}).json()["total"])
        restarted = children - set(procs.tree_pids(server.pid))
        if restarted:
            tally.errors.append(f"processes gone during the run: {sorted(restarted)}")
        if "restarting" in server.log_tail(100_000):
            tally.errors.append("the supervisor restarted a child (see the server log)")

        say("")
        say(f"objects sent {tally.sent}, acknowledged {tally.acknowledged}, indexed {indexed}")
        say(
            f"sending {sending:.0f} s: {tally.acknowledged / sending:.1f} objects/s, "
            f"{tally.acknowledged * template.size / sending / MIB:.2f} MB/s; "
            f"pipeline drained {drained:.0f} s later (lag left {lag})"
        )
        flat = memory_report(sampler, sending, args.tolerance, say)
        say(f"errors: {len(tally.errors)}")
        for error in tally.errors[:20]:
            say(f"  {error}")
        complete = indexed == tally.acknowledged and lag == 0
        say(
            f"verdict: memory {'flat' if flat else 'NOT flat'}, "
            f"{'zero errors' if not tally.errors else 'ERRORS'}, "
            f"{'every acknowledged object indexed' if complete else 'OBJECTS MISSING'}"
        )
        return 0 if flat and not tally.errors and complete else 1
    finally:
        server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
