"""What fault tests send, what the archive acknowledged, and what it serves afterwards.

A `Ledger` records the C-STORE status of every object sent by a few concurrent DCMTK storescu
clients (each run again on what it has not sent after a lost association, as a modality
would; pynetdicom SCUs in threads of one process lose responses now and then, pynetdicom
issues 850 and 875, which would blur the figures); `audit`
fetches every sent object back by WADO-RS and lists each study's instances by QIDO-RS. The
invariants of every fault test: acknowledged is a subset of found, and what is served is
byte for byte what was sent.
"""

import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydicom import dcmread

from tests.e2e.conftest import dataset_bytes, dcmtk

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class Sent:
    path: Path
    study: str
    series: str
    sop: str


def describe(path: Path) -> Sent:
    ds = dcmread(path, stop_before_pixels=True)
    return Sent(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@dataclass
class Ledger:
    """Statuses by SOP Instance UID; None: no response (association lost, refused, timeout)."""

    sent: dict[str, Sent] = field(default_factory=dict)
    statuses: dict[str, int | None] = field(default_factory=dict)
    associations: int = 0
    why: dict[str, str] = field(default_factory=dict)  # of the objects without a status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, item: Sent, status: int | None, why: str = "") -> None:
        with self.lock:
            self.sent[item.sop] = item
            self.statuses[item.sop] = status
            if why:
                self.why[item.sop] = why

    @classmethod
    def merged(cls, *ledgers: "Ledger") -> "Ledger":
        """One ledger of several sends; a later send of an object overrides an earlier one."""
        merged = cls()
        for ledger in ledgers:
            merged.sent.update(ledger.sent)
            merged.statuses.update(ledger.statuses)
            merged.why.update(ledger.why)
            merged.associations += ledger.associations
        return merged

    @property
    def acknowledged(self) -> set[str]:
        with self.lock:  # read while the sender threads record
            return {sop for sop, status in self.statuses.items() if status == SUCCESS}

    def with_status(self, status: int) -> set[str]:
        with self.lock:
            return {sop for sop, got in self.statuses.items() if got == status}


# storescu -v: "Received Store Response (Success)" or "(Refused: OutOfResources)" and so on.
_RESPONSE = re.compile(r"Received Store Response \((.+)\)")
_SENDING = re.compile(r"Sending file: (.+)$")
_FAILED = re.compile(r"Store Failed, file: (.+):$")


def status_of(text: str) -> int:
    """The status of a storescu response text (-1: a failure storescu names otherwise)."""
    if text == "Success":
        return SUCCESS
    if "OutOfResources" in text or "Out of Resources" in text:
        return OUT_OF_RESOURCES
    code = re.search(r"0x([0-9a-fA-F]{4})", text)
    return int(code.group(1), 16) if code else -1


def _send_share(port: int, items: list[Sent], ledger: Ledger, deadline: float) -> None:
    """DCMTK storescu over the share, run again on the rest after a lost association."""
    by_path = {str(item.path): item for item in items}
    todo = list(by_path)
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    command = [dcmtk("storescu"), "-v", "-aet", "FAULTSCU", "-aec", "DICOMFLOW", "-nh"]
    while todo and time.monotonic() < deadline:
        client = subprocess.Popen(
            [*command, "127.0.0.1", str(port), *todo],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert client.stdout is not None
        current: Sent | None = None
        for line in client.stdout:  # read as it goes: the test acts on the progress
            sending = _SENDING.search(line)
            response = _RESPONSE.search(line)
            failed = _FAILED.search(line.strip())
            if sending:
                current = by_path[sending.group(1).strip()]
            elif response and current is not None:
                ledger.record(current, status_of(response.group(1)))
                current = None
            elif failed:
                # The association is lost: the object in flight has no answer; storescu would
                # go on failing every other file, so it is stopped and run again on the rest.
                ledger.record(by_path[failed.group(1).strip()], None, "association lost")
                client.kill()
                break
            elif "Association Accepted" in line:
                with ledger.lock:
                    ledger.associations += 1
        client.wait(timeout=60)
        client.stdout.close()
        todo = [path for path in todo if by_path[path].sop not in ledger.statuses]
        if todo:
            time.sleep(0.5)  # the server restarts a killed worker: try again, as a modality does
    for path in todo:
        ledger.record(by_path[path], None, "never sent: no association")


class Sender:
    """`associations` storescu clients sending `files` in the background, dealt round robin."""

    def __init__(self, port: int, files: list[Path], associations: int = 4) -> None:
        self.ledger = Ledger()
        self.files = files
        items = [describe(path) for path in files]
        deadline = time.monotonic() + 600
        self._threads = [
            threading.Thread(
                target=_send_share,
                args=(port, items[n::associations], self.ledger, deadline),
                name=f"scu-{n}",
                daemon=True,
            )
            for n in range(associations)
        ]

    def start(self) -> "Sender":
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, condition: Callable[[Ledger], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.ledger):
            assert time.monotonic() < deadline, "the senders did not get that far"
            assert any(t.is_alive() for t in self._threads), "the senders finished too early"
            time.sleep(0.02)

    def join(self, timeout: float = 600) -> Ledger:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a sender hung"
        return self.ledger


@dataclass
class Audit:
    """What the archive serves of what was sent."""

    found: set[str]  # retrieved by WADO-RS with the very bytes that were sent
    corrupt: set[str]  # retrieved, but not the bytes that were sent
    indexed: set[str]  # listed by QIDO-RS

    def figures(self, label: str, ledger: Ledger) -> str:
        acked = ledger.acknowledged
        return (
            f"{label}: sent {len(ledger.sent)}, acknowledged {len(acked)}, "
            f"found afterwards {len(self.found)} (indexed {len(self.indexed)}, "
            f"acknowledged but missing {len(acked - self.found)}, corrupt {len(self.corrupt)}), "
            f"associations {ledger.associations}"
        )

    def check(self, label: str, ledger: Ledger) -> None:
        """Print the figures and assert: acknowledged ⊆ found and indexed, nothing corrupt."""
        print(self.figures(label, ledger))
        assert not self.corrupt, f"corrupt objects served: {sorted(self.corrupt)[:5]}"
        missing = ledger.acknowledged - self.found
        assert not missing, f"{len(missing)} acknowledged objects lost: {sorted(missing)[:5]}"
        assert ledger.acknowledged <= self.indexed


def audit(http: httpx.Client, ledger: Ledger) -> Audit:
    found: set[str] = set()
    corrupt: set[str] = set()
    for sop, item in ledger.sent.items():
        url = f"/dicomweb/studies/{item.study}/series/{item.series}/instances/{sop}"
        response = http.get(url, headers={"Accept": "application/dicom"})
        if response.status_code == 404:
            continue
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"
        if dataset_bytes(response.content) == dataset_bytes(item.path.read_bytes()):
            found.add(sop)
        else:
            corrupt.add(sop)
    indexed: set[str] = set()
    for study in {item.study for item in ledger.sent.values()}:
        response = http.get(f"/dicomweb/studies/{study}/instances", params={"limit": 10000})
        assert response.status_code in (200, 204), response.text
        if response.status_code == 200:
            indexed.update(row["00080018"]["Value"][0] for row in response.json())
    return Audit(found, corrupt, indexed)
