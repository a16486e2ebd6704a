"""A chunk of `dicomflow import`: received together, every file's outcome its own."""

import io
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from dicomflow.ingest import importer
from dicomflow.ingest.receiver import DurableReceiver
from dicomflow.kernel.events import Namespace, ObjectReceived, Topic, decode_event
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import instance_key
from dicomflow.synthetic import PatientSpec, make_instance
from tests.pagecache import require_droppable_pages, resident_pages


@pytest.fixture
def worker(settings: Settings) -> Iterator[DurableReceiver]:
    importer._init_worker(settings.model_copy(update={"max_object_bytes": 20_000}))
    receiver = importer._worker.receiver
    yield receiver
    receiver.close()
    receiver.bus.close()


def _write(folder: Path, name: str, instance: int, size: int = 64, **attributes: str) -> str:
    ds = make_instance(PatientSpec(), 0, 0, instance, rows=size, columns=size)
    with warnings.catch_warnings():  # pydicom warns about the invalid UIDs set on purpose
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _received(receiver: DurableReceiver) -> list[ObjectReceived]:
    records = receiver.bus.read(receiver.bus.topic(Topic.RECEIVED), limit=1000)
    return [decode_event(r.value, ObjectReceived) for r in records]


def test_a_chunk_reports_each_file_and_receives_the_good_ones_in_order(
    worker: DurableReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    receive_many = worker.receive_many
    monkeypatch.setattr(
        worker, "receive_many", lambda items: calls.append(len(items)) or receive_many(items)
    )
    monkeypatch.setattr(importer, "_BATCH_BYTES", 25_000)  # three 10 KB objects per batch
    good = [_write(tmp_path, f"good{i}.dcm", i) for i in range(5)]
    notes = tmp_path / "notes.txt"
    notes.write_text("not dicom")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(good[0]).read_bytes()[:300])
    hostile = _write(tmp_path, "hostile.dcm", 7, StudyInstanceUID="../../x")
    big = _write(tmp_path, "big.dcm", 8, size=128)
    copy = tmp_path / "copy.dcm"
    shutil.copy(good[1], copy)
    paths = [good[0], str(notes), good[1], str(truncated), hostile, str(copy), big, *good[2:]]

    outcomes = importer._import_chunk(paths)

    assert [o.path for o in outcomes] == paths
    by_path = {o.path: o for o in outcomes}
    assert [by_path[p].status for p in good] == ["ingested"] * 5
    assert by_path[str(notes)].status == "skipped"
    assert by_path[str(truncated)].status == "error"
    assert by_path[hostile].status == "error" and "StudyInstanceUID" in by_path[hostile].reason
    assert by_path[str(copy)].status == "duplicate"
    assert by_path[big].status == "error" and "exceeds" in by_path[big].reason
    assert calls == [3, 2]  # five objects in batches bounded by _BATCH_BYTES
    events = _received(worker)
    assert [e.source.path for e in events] == good  # in the order of the files
    assert [e.identity.sop_instance_uid for e in events] == [
        by_path[p].sop_instance_uid for p in good
    ]
    for event in events:
        assert worker.spool.get_verified(event.blob) == Path(str(event.source.path)).read_bytes()


def test_the_source_files_leave_the_page_cache_once_read(
    worker: DurableReceiver, tmp_path: Path
) -> None:
    # A tree of millions of files is read once: its pages would push the index out of memory.
    require_droppable_pages(tmp_path)
    paths = [Path(_write(tmp_path, f"f{i}.dcm", i)) for i in range(3)]
    for path in paths:  # durable first: dirty pages are only written back, never dropped
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
            handle.read()
    assert all(resident_pages(path) > 0 for path in paths)
    outcomes = importer._import_chunk([str(path) for path in paths])
    assert [o.status for o in outcomes] == ["ingested"] * 3
    assert [resident_pages(path) for path in paths] == [0, 0, 0]
    for event in _received(worker):  # the spool copies stay: the pipeline reads them next
        spooled = worker.spool.local_path(event.blob.namespace, event.blob.key)
        assert spooled is not None and resident_pages(spooled) > 0


def test_a_file_already_in_the_archive_is_a_duplicate(
    worker: DurableReceiver, tmp_path: Path
) -> None:
    path = _write(tmp_path, "one.dcm", 0)
    [first] = importer._import_chunk([path])
    assert first.status == "ingested"
    [event] = _received(worker)
    identity = event.identity
    key = instance_key(
        identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
    )
    importer._worker.blobs.put(Namespace.ORIGINAL, key, Path(path).read_bytes())
    [again] = importer._import_chunk([path])
    assert again.status == "duplicate"
    assert len(_received(worker)) == 1


def test_workers_are_spawned_when_another_thread_runs() -> None:
    """Forking copies no thread but the caller's, and a lock one of the others may hold."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert importer._pool_context().get_start_method() == "spawn"
    finally:
        release.set()
        other.join()


def test_the_import_command_starts_without_pydicom() -> None:
    # pydicom (and numpy through it) took 0.5-2 s to import: a fixed cost of every import run,
    # for the odd file that needs it. The workers import it when one does.
    code = (
        "import sys, dicomflow.cli, dicomflow.ingest.importer; "
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_import_walks_the_tree_as_it_goes(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No list of every file: a migration of tens of millions of files must fit in memory."""
    tree = tmp_path / "tree"
    for folder in range(40):
        (tree / f"d{folder:02d}").mkdir(parents=True)
        for n in range(100):
            (tree / f"d{folder:02d}" / f"f{n:03d}").write_bytes(b"not DICOM")
    walked = 0
    ahead: list[int] = []  # files walked but not yet reported, at each report
    real_walk, real_add = importer.iter_files, importer.ImportReport.add

    def walk(paths: list[Path]) -> Iterator[Path]:
        nonlocal walked
        for path in real_walk(paths):
            walked += 1
            yield path

    def add(report: importer.ImportReport, outcome: importer.FileOutcome) -> None:
        ahead.append(walked - report.files)
        real_add(report, outcome)

    monkeypatch.setattr(importer, "iter_files", walk)
    monkeypatch.setattr(importer.ImportReport, "add", add)
    output = io.StringIO()
    report = importer.run_import(settings, [tree], workers=1, console=Console(file=output))
    assert report.files == report.skipped == walked == 4000
    # The walk runs ahead of the workers by what the pool's pipe holds (a few chunks).
    assert max(ahead) < 2500, max(ahead)
    assert len(report.problems) == 50
    assert "4000/4000" in output.getvalue()  # the total, from the count that ran ahead
    assert "... and 3950 more" in output.getvalue()


def test_the_report_counts_every_problem_but_keeps_few() -> None:
    report = importer.ImportReport()
    for n in range(1500):
        report.add(importer.FileOutcome(f"/x/{n}", "error", f"reason {n % 1200}"))
    assert report.errors == 1500 and len(report.problems) == 50
    assert len(report.error_reasons) == 1001  # 1000 reasons, then "(other reasons)"
    assert sum(report.error_reasons.values()) == 1500
    assert report.error_reasons["reason 0"] == 2
