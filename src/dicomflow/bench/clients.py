"""The clients of the bench: DCMTK storescu (C-STORE), timed QIDO-RS GETs and C-FIND.

storescu is the client of every C-STORE figure (as in the issue's reference figures). Parallel
associations are parallel storescu processes, each on its own folder. ``TCP_NODELAY=1`` in its
environment turns Nagle's algorithm off in Debian's DCMTK; without it (the Debian default) a
client sends its small PDUs late and the figures show what the receiver does about it.
"""

import logging
import os
import socket
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
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    started = time.perf_counter()
    for n, folder in enumerate(folders):
        log = (log_dir / f"storescu-{n}.log").open("wb")
        logs.append(log)
        cmd = [storescu.path, "-aet", CALLING_AE, "-aec", called_ae, "+sd", "+r", "-nh"]
        processes.append(
            subprocess.Popen(
                [*cmd, "127.0.0.1", str(port), str(folder)],
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


class NotSupported(Exception):
    """The peer does not offer the service (no C-FIND SCP, say)."""


class CFindClient:
    """One association to a C-FIND SCP (Study Root), kept open for many timed queries."""

    def __init__(self, port: int, called_ae: str) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind,
        )

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._model = StudyRootQueryRetrieveInformationModelFind
        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        ae.maximum_pdu_size = 0
        ae.add_requested_context(self._model)
        self._assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not self._assoc.is_established:
            raise NotSupported("association rejected or aborted")
        # A C-FIND request is two small writes (command, identifier): with Nagle on, the second
        # waits for the peer's delayed ACK (40 ms) and every query would measure that.
        transport = self._assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted = [cx for cx in self._assoc.accepted_contexts if cx.abstract_syntax == self._model]
        if not accepted:
            self._assoc.release()
            raise NotSupported("no C-FIND SCP (Study Root FIND not accepted)")

    def find(self, identifier: Dataset) -> tuple[float, int]:
        """Seconds until the final response, and the number of matches."""
        started = time.perf_counter()
        matches = 0
        for status, _ in self._assoc.send_c_find(identifier, self._model):
            if not status or "Status" not in status:
                raise BenchError("C-FIND: no response (timeout or aborted association)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                matches += 1
            elif code == 0x0000:
                break
            elif code == 0x0122:
                raise NotSupported("no C-FIND SCP (status 0x0122: SOP class not supported)")
            else:
                raise BenchError(f"C-FIND failed with status 0x{code:04X}")
        return time.perf_counter() - started, matches

    def close(self) -> None:
        if self._assoc.is_established:
            self._assoc.release()


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
