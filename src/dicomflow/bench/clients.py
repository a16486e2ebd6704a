"""The clients of the bench: DCMTK storescu (C-STORE), timed QIDO-RS GETs, C-FIND identifiers.

The C-FIND client itself is `dicomflow.bench.findscu`.

storescu is the client of every C-STORE figure (as in the issue's reference figures). Parallel
associations are parallel storescu processes, each on its own folder. ``TCP_NODELAY=1`` in its
environment turns Nagle's algorithm off in Debian's DCMTK; without it (the Debian default) a
client sends its small PDUs late and the figures show what the receiver does about it.

A flat folder's files are sent in the order of their names, which the bench makes the order of
the instances, so that a series goes out in order, as a modality sends it. storescu's own
folder scan (``+sd``) sends them in the file system's directory order, a hash order on ext4
that interleaves every study of the folder; that is kept for trees (filling Orthanc's archive)
and for folders too large to list on a command line.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicomflow.bench.receivers import BenchError, HttpClient
from dicomflow.bench.tools import Tool

CALLING_AE = "DICOMFLOWBENCH"


@dataclass(frozen=True)
class SendResult:
    seconds: float
    returncodes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)


def storescu_env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


MAX_LISTED_FILES = 10_000
"""Most files passed to one storescu by name (about 70 bytes each; a command line holds 2 MB)."""


def storescu_inputs(folder: Path) -> list[str]:
    """storescu's input arguments for `folder`: its files in name order when it is flat and
    small enough to list, else the folder itself to scan recursively."""
    with os.scandir(folder) as scan:  # the entries' types without a stat each
        entries = sorted(scan, key=lambda entry: entry.name)
    if len(entries) <= MAX_LISTED_FILES and all(entry.is_file() for entry in entries):
        return [entry.path for entry in entries]
    return ["+sd", "+r", str(folder)]


def storescu_command(
    storescu: Tool, called_ae: str, port: int, inputs: list[str], options: tuple[str, ...] = ()
) -> list[str]:
    """A storescu of the bench (calling AE `CALLING_AE`) to the loopback `port`."""
    return [
        storescu.path, "-aet", CALLING_AE, "-aec", called_ae, *options, "-nh",
        "127.0.0.1", str(port), *inputs,
    ]  # fmt: skip


def send_folders(
    storescu: Tool,
    port: int,
    called_ae: str,
    folders: list[Path],
    nodelay: bool,
    log_dir: Path,
    timeout: float,
) -> SendResult:
    """One storescu per folder, all at once; the time until the last one is done."""
    env = storescu_env(nodelay)
    log_dir.mkdir(parents=True, exist_ok=True)
    # Listed before the clock starts: the timed run is the clients' and the receiver's work.
    commands = [
        storescu_command(storescu, called_ae, port, storescu_inputs(folder)) for folder in folders
    ]
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    started = time.perf_counter()
    for n, command in enumerate(commands):
        log = (log_dir / f"storescu-{n}.log").open("wb")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
    codes: list[int] = []
    try:
        for process in processes:
            remaining = max(1.0, timeout - (time.perf_counter() - started))
            codes.append(process.wait(timeout=remaining))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        raise BenchError(f"storescu did not finish within {timeout:.0f} s") from None
    finally:
        for log in logs:
            log.close()
    return SendResult(time.perf_counter() - started, tuple(codes))


def study_identifier(criteria: dict[str, str]) -> Dataset:
    """A study-level C-FIND identifier with the usual return keys and `criteria`."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(ds, keyword, "")
    for keyword, value in criteria.items():
        setattr(ds, keyword, value)
    return ds


def timed_get(client: HttpClient, path: str) -> tuple[float, int]:
    """Seconds for one GET (body read), and the number of results of a JSON array."""
    started = time.perf_counter()
    status, body = client.get(path)
    seconds = time.perf_counter() - started
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
    return seconds, body.count(b'"0020000D"')
