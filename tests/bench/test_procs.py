"""The bench's process sampling: peaks of every process of a tree, each labelled once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicomflow.bench import procs
from dicomflow.bench.receivers import DicomflowServer
from dicomflow.kernel.bus.base import OutgoingRecord
from dicomflow.kernel.events import Topic


def test_the_sampler_labels_each_process_once_and_keeps_its_peak() -> None:
    calls: list[int] = []

    def label(pid: int) -> str:
        calls.append(pid)
        return "bench"

    sampler = procs.RssSampler(lambda: [os.getpid()], label, interval=60)
    with sampler:
        for _ in range(3):
            sampler._sample()
    assert calls == [os.getpid()]  # not at every sample: a label scans /proc
    figures = sampler.result.to_json()
    [entry] = figures["processes"]
    assert entry["pid"] == os.getpid() and entry["role"] == "bench"
    assert entry["peak_bytes"] > 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"processors": "storage"}, 3),
        ({"processors": "storage,metadata"}, 3),
        ({"processors": "metadata"}, 0),
        ({}, 3),
        ({"topic_prefix": "site2"}, 3),
    ],
)
def test_the_pipeline_lag_is_read_from_the_event_log_for_the_servers_processors(
    tmp_path: Path, overrides: dict[str, str], expected: int
) -> None:
    # Not through /api/status (which counts the index): only the server's own processors.
    server = DicomflowServer(tmp_path, overrides, ["ingest", "processors"])
    bus = server.bus()
    assert bus.topic(Topic.RECEIVED) == f"{overrides.get('topic_prefix', 'dicomflow')}.received"
    producer = bus.producer()
    producer.publish_many([OutgoingRecord(bus.topic(Topic.RECEIVED), "k", b"{}") for _ in range(3)])
    producer.close()
    assert server.lag() == expected
    assert server.count() == 3
    bus.close()
    server.http.close()


def test_the_processes_of_serve_are_labelled_by_their_roles(tmp_path: Path) -> None:
    server = DicomflowServer(tmp_path, {}, ["ingest", "processors"])  # not started
    code = (
        "import sys, time; from dicomflow.roles import name_process; "
        "name_process(sys.argv[1]); print(open('/proc/self/comm').read().strip(), flush=True); "
        "time.sleep(60)"
    )
    for role, name, label in [
        ("processor:storage,index", "df:storage,inde", "storage,inde"),
        ("processor:metadata", "df:metadata", "metadata"),
        ("processor:deidentify", "df:deidentify", "deidentify"),
    ]:
        child = subprocess.Popen(
            [sys.executable, "-c", code, role], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == name
            assert server.role_of(child.pid) == label
        finally:
            child.kill()
            child.wait()
    server.http.close()


def test_cpu_by_role_counts_each_process_from_its_snapshot() -> None:
    from dicomflow.bench.runner import cpu_by_pid, cpu_by_role_since

    def start(code: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", code])

    sleep = "import time; time.sleep(60)"
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    idle, gone = start(sleep), start(sleep)
    roles = {idle.pid: "idle", gone.pid: "gone"}
    children = [idle, gone]

    class Tree:  # what the bench reads of a receiver
        def roots(self) -> list[int]:
            return [child.pid for child in children if child.poll() is None]

        def role_of(self, pid: int) -> str:
            return roles[pid]

    try:
        tree = Tree()
        before = cpu_by_pid(tree)  # type: ignore[arg-type]
        assert set(before) == {idle.pid, gone.pid}
        gone.kill()  # ends after the snapshot: left out, not counted negative
        gone.wait()
        worker = start(burn + "time.sleep(60)\n")  # starts after it: counted whole
        children.append(worker)
        roles[worker.pid] = "worker"
        deadline = time.monotonic() + 30
        while procs.cpu_by_pid(worker.pid).get(worker.pid, 0.0) < 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        by_role = cpu_by_role_since(tree, before)  # type: ignore[arg-type]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert set(by_role) == {"idle", "worker"}
    assert by_role["idle"] < 0.1
    assert by_role["worker"] >= 0.3
