"""Bulk import of folder trees through the same durable receive path as C-STORE.

Files are read and parsed by a pool of worker processes (both cores), in chunks; the objects of
a chunk are spooled and announced like received ones, together (`receive_many`: one folder
fsync and one event log commit per chunk instead of per file). The `dicomflow import` command
then waits until the pipeline has processed them (see `dicomflow.roles.wait_until_processed`).
"""

import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from dicomflow.ingest.exceptions import IngestError
from dicomflow.ingest.receiver import (
    DurableReceiver,
    Incoming,
    identity_of_file_bytes,
    open_receiver,
)
from dicomflow.kernel.backends import open_blob_store, open_bus
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.blobs.filesystem import drop_file_pages
from dicomflow.kernel.events import Namespace, Source, SourceKind
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import instance_key

_CHUNK = 64
# Problem files listed in the report (all are counted, with their reasons).
_SHOWN_PROBLEMS = 50
# Distinct error reasons counted one by one; others are counted together.
_COUNTED_REASONS = 1000
# Most bytes of objects held for one `receive_many` (plus the object that passes it).
_BATCH_BYTES = 64 * 1024 * 1024


@dataclass
class ImportReport:
    files: int = 0
    ingested: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    # The first `_SHOWN_PROBLEMS` files skipped or in error, and the errors by reason: a tree
    # of millions of files that are not DICOM must not fill the importer's memory.
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    error_reasons: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: "FileOutcome") -> None:
        self.files += 1
        if outcome.status == "ingested":
            self.ingested += 1
            self.bytes += outcome.size
        elif outcome.status == "duplicate":
            self.duplicates += 1
        elif outcome.status == "skipped":
            self.skipped += 1
            self._problem(outcome.path, "skipped", outcome.reason)
        else:
            self.errors += 1
            self._problem(outcome.path, "error", outcome.reason)
            reasons = self.error_reasons
            if outcome.reason in reasons or len(reasons) < _COUNTED_REASONS:
                reasons[outcome.reason] += 1
            else:
                reasons["(other reasons)"] += 1

    def _problem(self, path: str, kind: str, reason: str) -> None:
        if len(self.problems) < _SHOWN_PROBLEMS:
            self.problems.append((path, kind, reason))


@dataclass(frozen=True)
class FileOutcome:
    path: str
    status: str  # ingested | duplicate | skipped | error
    reason: str = ""
    size: int = 0
    sop_instance_uid: str = ""


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The files under `paths`, folder by folder in name order, as the walk finds them."""
    for root in paths:
        if root.is_file():
            yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                yield Path(dirpath) / name


class _FileCount:
    """The number of files under `paths`, counted by a thread of its own (names only).

    The import walks the tree as it goes, never holding a list of its files (it held 575 MiB
    for 900,000 files: an archive migration of tens of millions would not fit); this count
    runs ahead of it and gives the progress display its total.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.files = 0
        self.done = False
        self._paths = list(paths)
        threading.Thread(target=self._count, name="import-count", daemon=True).start()

    def _count(self) -> None:
        for root in self._paths:
            if root.is_file():
                self.files += 1
                continue
            for _, _, filenames in os.walk(root):
                self.files += len(filenames)
        self.done = True


class _Worker:
    """State of one import worker process (opened once per process)."""

    receiver: DurableReceiver
    blobs: BlobStore


_worker = _Worker()


def _init_worker(settings: Settings) -> None:
    bus = open_bus(settings)
    _worker.receiver = open_receiver(settings, bus)
    _worker.blobs = open_blob_store(settings)


def _prepare(path: str, seen: set[str]) -> FileOutcome | Incoming:
    """Read and identify one file: what to receive, or why it is not received."""
    limit = _worker.receiver.max_object_bytes
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return FileOutcome(path, "skipped", "not a DICOM Part 10 file (no DICM prefix)")
            size = os.fstat(handle.fileno()).st_size
            if size > limit:  # not read into memory (one that grows while read: receive_many)
                return FileOutcome(
                    path, "error", f"{size} bytes exceeds DICOMFLOW_MAX_OBJECT_BYTES"
                )
            data = head + handle.read()
            # Read once: the source tree's pages would only push the index out of memory.
            drop_file_pages(handle.fileno())
    except OSError as exc:
        return FileOutcome(path, "error", f"cannot read: {exc.strerror or exc}")
    try:
        identity = identity_of_file_bytes(data)
    except IngestError as exc:
        return FileOutcome(path, "error", str(exc))
    digest = hashlib.sha256(data).hexdigest()
    marker = f"{identity.sop_instance_uid}:{digest}"
    key = instance_key(
        identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
    )
    existing = _worker.blobs.stat(Namespace.ORIGINAL, key)
    if marker in seen or (existing is not None and existing.sha256 == digest):
        return FileOutcome(path, "duplicate", size=len(data))
    seen.add(marker)
    return Incoming(data, identity, Source(kind=SourceKind.IMPORT, path=os.path.abspath(path)))


def _receive(batch: list[tuple[int, str, Incoming]], outcomes: list[FileOutcome]) -> None:
    """Make a batch durable in one `receive_many`; fill in the outcomes of its files."""
    if not batch:
        return
    results = _worker.receiver.receive_many([item for _, _, item in batch])
    for (index, path, item), result in zip(batch, results, strict=True):
        if isinstance(result, IngestError):
            outcomes[index] = FileOutcome(path, "error", str(result))
        else:
            outcomes[index] = FileOutcome(
                path,
                "ingested",
                size=len(item.data),
                sop_instance_uid=result.identity.sop_instance_uid,
            )


def _import_chunk(paths: list[str]) -> list[FileOutcome]:
    """Import a chunk of files: its objects share their syncs (`DurableReceiver.receive_many`).

    A file is reported ingested only once its spool object and ``received`` event are
    durable; the other outcomes are per file. Objects are received in batches of at most
    `_BATCH_BYTES` (plus one object), so that a chunk of large files is not all in memory.
    """
    seen: set[str] = set()
    outcomes: list[FileOutcome] = []
    batch: list[tuple[int, str, Incoming]] = []
    batch_bytes = 0
    for path in paths:
        prepared = _prepare(path, seen)
        if isinstance(prepared, FileOutcome):
            outcomes.append(prepared)
            continue
        batch.append((len(outcomes), path, prepared))
        outcomes.append(FileOutcome(path, "error", "not received"))  # until `_receive`
        batch_bytes += len(prepared.data)
        if batch_bytes >= _BATCH_BYTES:
            _receive(batch, outcomes)
            batch, batch_bytes = [], 0
    _receive(batch, outcomes)
    return outcomes


def _chunks(files: Iterator[Path]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in files:
        chunk.append(str(path))
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fork when nothing else runs in this process, else spawn.

    A forked worker starts with the modules already imported; a spawned one imports them all
    again, which was about a second of a 10k-file import. Forking a process with other
    threads (a test's servers, say) could copy a lock one of them holds, so it spawns then.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_import(
    settings: Settings,
    paths: Sequence[Path],
    workers: int = 0,
    console: Console | None = None,
    after_receive: Callable[[Progress], None] | None = None,
) -> ImportReport:
    """Import files and folders; `after_receive` runs with the progress display still up."""
    console = console or Console()
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    report = ImportReport()
    started = time.monotonic()
    workers = workers or os.cpu_count() or 1
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeElapsedColumn())
    # The workers start (and open the spool and the bus) while the tree is walked.
    with _pool_context().Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        count = _FileCount(paths)  # a thread: only once the workers are forked
        with Progress(*columns, BarColumn(bar_width=None), console=console) as progress:
            task = progress.add_task("importing", total=None)
            # The pool takes chunks from the walk only as fast as its workers take them.
            for outcomes in pool.imap_unordered(_import_chunk, _chunks(iter_files(paths))):
                for outcome in outcomes:
                    report.add(outcome)
                progress.update(
                    task, advance=len(outcomes), total=count.files if count.done else None
                )
            pool.close()
            report.seconds = time.monotonic() - started
            if report.ingested and after_receive is not None:
                after_receive(progress)
    _print_report(console, report, time.monotonic() - started)
    return report


def _print_report(console: Console, report: ImportReport, total_seconds: float) -> None:
    rate = report.files / report.seconds if report.seconds else 0.0
    console.print(
        f"[bold]import finished[/]: {report.files} files, {report.ingested} ingested, "
        f"{report.duplicates} duplicates, {report.skipped} skipped (not DICOM), "
        f"{report.errors} errors; {report.bytes / 1e6:.1f} MB; "
        f"{rate:.0f} files/s received, {total_seconds:.1f} s in all"
    )
    for path, kind, reason in report.problems:
        console.print(f"  {kind}: {path}: {reason}")
    more = report.skipped + report.errors - len(report.problems)
    if more > 0:
        console.print(f"  ... and {more} more; errors by reason:")
        for reason, count in report.error_reasons.most_common(10):
            console.print(f"    {count} x {reason}")
