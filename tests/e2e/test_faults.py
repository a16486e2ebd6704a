"""Faults during sustained ingest: nothing acknowledged is lost, nothing corrupt is served.

kill -9 of each child of `dicomflow serve` (an ingest worker, the processors, the API) while
four associations send; a full disk under the data directory (a small tmpfs). Each test prints
its figures (objects sent, acknowledged, found afterwards), recorded in docs/reliability.md.
"""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomflow.bench import procs
from dicomflow.synthetic import iter_study_tree, write_tree
from tests.e2e.conftest import Server, new_server
from tests.e2e.ledger import OUT_OF_RESOURCES, SUCCESS, Ledger, Sender, audit

pytestmark = pytest.mark.e2e


def children_by_role(server: Server) -> dict[str, set[int]]:
    """The supervisor's children by role: who listens on which port, the rest are processors."""
    assert server.process is not None
    roles: dict[str, set[int]] = {"ingest": set(), "processors": set(), "api": set()}
    for pid, stat in procs.all_stats().items():
        if stat.ppid != server.process.pid or "resource_tracker" in procs.cmdline(pid):
            continue
        ports = procs.listening_ports(pid)
        if server.dicom_port in ports:
            roles["ingest"].add(pid)
        elif server.http_port in ports:
            roles["api"].add(pid)
        else:
            roles["processors"].add(pid)
    return roles


def wait_for_restart(
    server: Server, role: str, before: dict[str, set[int]], timeout: float = 90
) -> int:
    """The pid of the child that replaced a killed one (of `before`), once it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process is not None and server.process.poll() is None, "supervisor died"
        now = children_by_role(server)
        new = now[role] - before[role]
        # A restarted ingest or API child counts as processors until it listens.
        settled = len(now["processors"]) == len(before["processors"])
        if new and len(now[role]) == len(before[role]) and settled:
            return new.pop()
        time.sleep(0.2)
    raise AssertionError(f"{role} was not restarted:\n{server.log_path.read_text()[-3000:]}")


# Room for wait_idle(timeout=300) after the sending: a pipeline that does not catch up fails with
# its status, not a bare pytest timeout.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("role", ["ingest", "processors", "api"])
def test_kill_9_of_a_child_during_ingest_loses_nothing(
    server: Server, tmp_path: Path, role: str
) -> None:
    files = write_tree(
        iter_study_tree(patients=4, series_per_study=1, instances_per_series=75), tmp_path / "s"
    )
    before = children_by_role(server)
    assert all(before.values()), before
    sender = Sender(server.dicom_port, files, associations=4).start()
    sender.wait_for(lambda ledger: len(ledger.acknowledged) >= len(files) // 3)
    victim = min(before[role])
    os.kill(victim, signal.SIGKILL)
    wait_for_restart(server, role, before)
    ledger = sender.join()
    assert server.process is not None and server.process.poll() is None
    server.wait_idle(timeout=300)

    audit(server.http, ledger).check(f"kill -9 of {role}", ledger)
    unacknowledged = set(ledger.sent) - ledger.acknowledged
    if role == "ingest":
        # Only the object in flight on each of the killed worker's associations goes unanswered.
        assert len(unacknowledged) <= 4, ledger.why
    else:
        assert not unacknowledged, f"ingest depends on the processors or the API: {ledger.why}"
    assert "restarting" in server.log_path.read_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs: the data directory of a server whose disk fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the development container run as root)")
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """A ballast file that leaves only `leave` bytes free on the file system of `folder`."""
    stat = os.statvfs(folder)
    ballast = folder / "ballast"
    with ballast.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, stat.f_bavail * stat.f_frsize - leave)
    return ballast


@pytest.mark.timeout(600)
def test_a_full_disk_refuses_with_out_of_resources_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    server = new_server(small_disk, tmp_path / "server.log")
    server.start()
    try:
        # 120 objects of 128 KB into 4 MB of free space: the disk fills within the first third.
        files = write_tree(
            iter_study_tree(
                patients=2, series_per_study=1, instances_per_series=60, rows=256, columns=256
            ),
            tmp_path / "s",
        )
        ballast = fill(small_disk, leave=4 * 1024 * 1024)
        first = Sender(server.dicom_port, files, associations=2).start().join()
        refused = first.with_status(OUT_OF_RESOURCES)
        print(f"full disk: {len(first.acknowledged)} acknowledged, {len(refused)} refused")
        assert refused, "the disk never filled up"
        assert set(first.statuses.values()) <= {SUCCESS, OUT_OF_RESOURCES}, first.statuses
        assert server.process is not None and server.process.poll() is None

        ballast.unlink()
        refused_files = [first.sent[sop].path for sop in refused]
        again = Sender(server.dicom_port, refused_files, associations=2).start().join()
        assert again.acknowledged == set(again.sent), again.statuses
        server.wait_idle(timeout=300)

        ledger = Ledger.merged(first, again)
        audit(server.http, ledger).check("full disk, refused ones sent again", ledger)
        status = server.http.get("/api/status").json()
        assert status["dead_letters"] == 0, status
        leftovers = [p for p in small_disk.rglob(".tmp-*")]
        assert not leftovers, f"partial files left behind: {leftovers[:5]}"
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-3000:]
