"""CPU time and resident memory of process trees, read from /proc (Linux).

The bench measures receivers it started itself: the CPU seconds of a receiver's whole process
tree over a run (children that already exited count through the parent's cutime/cstime), and the
peak resident set size of every process during a phase. The peak comes from the kernel's high
water mark (VmHWM), reset at the start of each phase through /proc/PID/clear_refs, together
with a sampler thread for processes that come and go.
"""

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    ppid: int
    cpu_seconds: float  # utime + stime
    children_cpu_seconds: float  # cutime + cstime (reaped children)
    start_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat (the command name may hold spaces and parentheses)."""
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    # fields[0] is the state (field 3 of proc(5)); utime is field 14, so fields[11].
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        ppid=int(fields[1]),
        cpu_seconds=(utime + stime) / CLOCK_TICKS,
        children_cpu_seconds=(cutime + cstime) / CLOCK_TICKS,
        start_ticks=int(fields[19]),
    )


def parse_status_kib(text: str, key: str) -> int:
    """A ``kB`` value of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 else 0
    return 0


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def read_memory(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS since start or since the last reset) in bytes; zeros if gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0, 0
    return parse_status_kib(text, "VmRSS"), parse_status_kib(text, "VmHWM")


def read_file_backed_rss(pid: int) -> int:
    """The file-backed part of a process's RSS (RssFile: mapped files such as an mmap'd
    SQLite index, reclaimable page cache rather than the process's own memory); 0 if gone."""
    try:
        return parse_status_kib((PROC / str(pid) / "status").read_text(), "RssFile")
    except OSError:
        return 0


def all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree_pids(root: int, stats: dict[int, ProcStat] | None = None) -> list[int]:
    """`root` and all its descendants that are alive now."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    out: list[int] = []
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process tree, including its reaped children."""
    stats = all_stats()
    return sum(
        stats[pid].cpu_seconds + stats[pid].children_cpu_seconds for pid in tree_pids(root, stats)
    )


def cpu_by_pid(root: int) -> dict[int, float]:
    stats = all_stats()
    return {
        pid: stats[pid].cpu_seconds + stats[pid].children_cpu_seconds
        for pid in tree_pids(root, stats)
    }


def reset_peak_rss(pids: list[int]) -> None:
    """Reset VmHWM to the current RSS (needs the right to write /proc/PID/clear_refs)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            (PROC / str(pid) / "clear_refs").write_text("5")


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (from its socket inodes and /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


Labeller = Callable[[int], str]


@dataclass
class PeakRss:
    """Peak RSS per process (bytes) and its label (role), gathered over one phase."""

    peaks: dict[int, int] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    total_sampled: int = 0  # the largest simultaneous sum seen by the sampler

    def by_label(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid, peak in self.peaks.items():
            label = self.labels.get(pid, "other")
            out[label] = out.get(label, 0) + peak
        return out

    def total(self) -> int:
        return sum(self.peaks.values())

    def to_json(self) -> dict[str, object]:
        return {
            "sum_of_peaks_bytes": self.total(),
            "largest_simultaneous_sum_bytes": self.total_sampled,
            "by_role_bytes": self.by_label(),
            "processes": [
                {"pid": pid, "role": self.labels.get(pid, "other"), "peak_bytes": peak}
                for pid, peak in sorted(self.peaks.items())
            ],
        }


class RssSampler:
    """Samples the RSS of every process of some trees until stopped (a context manager)."""

    def __init__(self, roots: Callable[[], list[int]], labeller: Labeller, interval: float = 0.2):
        self._roots = roots
        self._labeller = labeller
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.result = PeakRss()

    def _pids(self) -> list[int]:
        stats = all_stats()
        pids: list[int] = []
        for root in self._roots():
            pids.extend(tree_pids(root, stats))
        return pids

    def _sample(self) -> None:
        total = 0
        for pid in self._pids():
            rss, hwm = read_memory(pid)
            if rss == 0 and hwm == 0:
                continue
            total += rss
            self.result.peaks[pid] = max(self.result.peaks.get(pid, 0), rss, hwm)
            # Once per process: a label costs a scan of /proc (and of its sockets), and done
            # at every sample it took a third of a core from what the phase measures (and the
            # GIL from the bench's own client threads).
            if pid not in self.result.labels:
                label = self._labeller(pid)
                if label:
                    self.result.labels[pid] = label
        self.result.total_sampled = max(self.result.total_sampled, total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "RssSampler":
        reset_peak_rss(self._pids())
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


def machine_ticks() -> list[int]:
    """The first line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return []
    return [int(v) for v in first.split()[1:]]


def contention(before: list[int], after: list[int]) -> dict[str, float]:
    """Shares of the machine's CPU time between two `machine_ticks` snapshots.

    ``steal`` is time the hypervisor gave to other guests: a noisy neighbour that makes wall
    times longer without any process of ours using the CPU.
    """
    if len(before) < 8 or len(after) < 8:
        return {}
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8]) or 1
    return {
        "busy": round((total - delta[3] - delta[4] - delta[7]) / total, 3),
        "iowait": round(delta[4] / total, 3),
        "steal": round(delta[7] / total, 3),
    }
