"""`DurableReceiver.receive_many`: spool durable before the events, events in order, bad items
reported alone."""

import dataclasses
import errno
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomflow.ingest.exceptions import ObjectTooLarge, StorageUnavailable
from dicomflow.ingest.receiver import (
    DurableReceiver,
    Incoming,
    identity_of_file_bytes,
    open_receiver,
)
from dicomflow.kernel.activity import ReceiveActivity
from dicomflow.kernel.blobs import filesystem
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import EventBus, OutgoingRecord, Producer
from dicomflow.kernel.bus.embedded import EmbeddedBus
from dicomflow.kernel.events import (
    SPOOL_BOOT_HEADER,
    BlobRef,
    Namespace,
    ObjectReceived,
    ObjectStored,
    Source,
    SourceKind,
    Topic,
    decode_event,
)
from dicomflow.kernel.exceptions import BackendUnavailable
from dicomflow.kernel.settings import Settings
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.storage import StorageProcessor
from dicomflow.synthetic import PatientSpec, make_instance


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _items(count: int, big: int = -1) -> list[Incoming]:
    """Objects of two studies; the one at `big` has 128x128 pixels instead of 64x64."""
    items = []
    for i in range(count):
        size = 128 if i == big else 64
        data = _part10(make_instance(PatientSpec(), i % 2, 0, i, rows=size, columns=size))
        items.append(
            Incoming(
                data, identity_of_file_bytes(data), Source(kind=SourceKind.IMPORT, path=str(i))
            )
        )
    return items


class RecordingSpool(FilesystemBlobStore):
    """A filesystem spool that notes when `put_many` returned, and can fail chosen keys."""

    def __init__(self, root: Path, trace: list[str]) -> None:
        super().__init__(root)
        self.trace = trace
        self.fail_at: set[int] = set()

    def put_many(
        self, namespace: Namespace, items: Sequence[tuple[str, bytes]]
    ) -> list[BlobRef | Exception]:
        results = super().put_many(namespace, items)
        for position in self.fail_at:
            self.delete(namespace, items[position][0])
            results[position] = BackendUnavailable("disk full under the spool; free some space")
        self.trace.append(f"spool durable: {len(items)}")
        return results


class RecordingBus(EmbeddedBus):
    """An embedded bus whose producer notes each append (and checks the spool at that time)."""

    def __init__(self, directory: Path, trace: list[str], spool: BlobStore) -> None:
        super().__init__(directory)
        self.trace = trace
        self.spool = spool
        self.fail = False

    def producer(self) -> Producer:
        inner = super().producer()
        bus = self

        class Recording(Producer):
            def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
                for record in records:  # every announced spool object is already there
                    event = decode_event(record.value, ObjectReceived)
                    assert bus.spool.get_verified(event.blob)
                bus.trace.append(f"append: {len(records)}")
                if bus.fail:
                    raise BackendUnavailable("the event log is read-only")
                inner.publish_many(records)

        return Recording()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[DurableReceiver, RecordingSpool, RecordingBus]]:
    trace: list[str] = []
    spool = RecordingSpool(tmp_path / "spool", trace)
    bus = RecordingBus(tmp_path / "events", trace, spool)
    receiver = DurableReceiver(spool, bus, max_object_bytes=1_000_000)
    yield receiver, spool, bus
    receiver.close()
    bus.close()


def _received(bus: EventBus) -> list[ObjectReceived]:
    return [
        decode_event(r.value, ObjectReceived)
        for r in bus.read(bus.topic(Topic.RECEIVED), limit=1000)
    ]


def test_spool_is_durable_before_one_append_of_the_events_in_order(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
) -> None:
    receiver, spool, bus = parts
    items = _items(5)
    results = receiver.receive_many(items)
    assert spool.trace == ["spool durable: 5", "append: 5"]
    assert all(isinstance(r, ObjectReceived) for r in results)
    events = _received(bus)
    assert events == results  # the events appended are the ones returned, in the items' order
    assert [e.identity for e in events] == [item.identity for item in items]
    records = bus.read(bus.topic(Topic.RECEIVED))
    assert [r.key for r in records] == [item.identity.study_instance_uid for item in items]
    for event, item in zip(events, items, strict=True):
        assert event.blob.namespace is Namespace.SPOOL
        assert spool.get_verified(event.blob) == item.data
        assert event.source == item.source
    assert len({e.blob.key for e in events}) == 5  # each its own generated spool key


def test_a_bad_item_is_reported_alone_and_the_others_are_received(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
) -> None:
    receiver, spool, bus = parts
    big, failed = 1, 3
    items = _items(5, big=big)
    receiver.max_object_bytes = 20_000  # 64x64: 10 KB, 128x128: 34 KB
    spool.fail_at = {2}  # the third object sent to the spool: item 3, after the big one
    results = receiver.receive_many(items)
    assert isinstance(results[big], ObjectTooLarge) and "exceeds" in str(results[big])
    assert isinstance(results[failed], StorageUnavailable)
    assert "cannot write to the spool: disk full" in str(results[failed])
    announced = [i for i in range(5) if i not in (big, failed)]
    assert [e.identity for e in _received(bus)] == [items[i].identity for i in announced]
    assert [results[i] for i in announced] == _received(bus)
    assert sorted(spool.keys(Namespace.SPOOL)) == sorted(e.blob.key for e in _received(bus))


def test_nothing_is_received_when_the_event_log_refuses_the_append(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
) -> None:
    receiver, spool, bus = parts
    bus.fail = True
    results = receiver.receive_many(_items(3))
    assert all(isinstance(r, StorageUnavailable) for r in results)
    assert "the event bus did not confirm the object" in str(results[0])
    assert _received(bus) == []
    assert list(spool.keys(Namespace.SPOOL)) == []  # the spool objects were freed


def test_no_append_when_no_item_reached_the_spool(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
) -> None:
    receiver, spool, _ = parts
    receiver.max_object_bytes = 10
    results = receiver.receive_many(_items(2))
    assert all(isinstance(r, ObjectTooLarge) for r in results)
    assert spool.trace == ["spool durable: 0"]
    assert receiver.receive_many([]) == []


def _storage(spool: BlobStore, bus: EventBus, tmp_path: Path) -> StorageProcessor:
    return StorageProcessor(
        ProcessorContext(
            settings=Settings(data_dir=tmp_path),
            bus=bus,
            blobs=FilesystemBlobStore(tmp_path / "blobs"),
            spool=spool,
        )
    )


def test_receive_commits_the_event_while_the_object_is_fsynced(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, spool, bus = parts
    first, item = _items(2)
    receiver.receive(first.data, first.identity, first.source)  # starts the spool's name pool
    _wait_for_prepared_names(spool)
    trace: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():  # not the name filler's
            trace.append("fsync")
        real_fsync(fd)

    begin_publish = receiver._producer.begin_publish

    def begin(records: Sequence[OutgoingRecord]) -> Future[None]:
        trace.append("commit begun")
        return begin_publish(records)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(receiver._producer, "begin_publish", begin)
    event = receiver.receive(item.data, item.identity, item.source)
    assert trace == ["commit begun", "fsync"]  # the object's only sync, after the commit began
    assert _received(bus)[-1] == event  # durable, and the very event returned
    assert spool.get_verified(event.blob) == item.data


def _wait_for_prepared_names(spool: FilesystemBlobStore) -> None:
    for _ in range(250):
        if spool._spool_names._names:
            return
        time.sleep(0.02)
    raise AssertionError("the spool prepared no names in 5 s")


def test_an_event_whose_spool_object_failed_is_dead_lettered_with_a_reason(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The price of the overlap: a failed (or, after a crash, missing or incomplete) spool
    object whose event was committed. Nothing was acknowledged for it; the storage processor
    dead-letters the event with its reason and goes on with the others."""
    receiver, spool, bus = parts
    items = _items(3)
    receiver.receive(items[0].data, items[0].identity, items[0].source)
    _wait_for_prepared_names(spool)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(filesystem.os, "fsync", failing_fsync)
        with pytest.raises(StorageUnavailable, match="cannot write to the spool"):
            receiver.receive(items[1].data, items[1].identity, items[1].source)
    last = receiver.receive(items[2].data, items[2].identity, items[2].source)
    records = bus.read(bus.topic(Topic.RECEIVED))
    assert len(records) == 3  # the failed object's event was committed: an orphan
    orphan = decode_event(records[1].value, ObjectReceived)
    assert spool.stat(Namespace.SPOOL, orphan.blob.key) is None
    storage = _storage(spool, bus, tmp_path)
    with pytest.raises(PoisonEvent, match=r"spool object .* is missing"):
        storage.handle(records[1])
    # An incomplete spool object (a crash before its fsync) is refused, not stored.
    path = spool.local_path(Namespace.SPOOL, last.blob.key)
    assert path is not None
    path.write_bytes(items[2].data[:1000])
    with pytest.raises(PoisonEvent, match="spool object is corrupt"):
        storage.handle(records[2])
    assert len(storage.handle(records[0])) == 1  # the others are stored


def test_in_the_same_boot_storage_links_the_spool_copy_without_reading_it(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Both receive paths stamp their records with the boot that wrote the spool copy whole;
    the storage processor of that boot links it unread, its recorded checksum intact."""
    receiver, spool, bus = parts
    one, two = _items(2)
    receiver.receive(one.data, one.identity, one.source)
    receiver.receive_many([two])
    records = bus.read(bus.topic(Topic.RECEIVED))
    boot_id = filesystem.kernel_boot_id()
    assert boot_id and [r.headers for r in records] == [{SPOOL_BOOT_HEADER: boot_id}] * 2
    storage = _storage(spool, bus, tmp_path)

    def no_reads(*args: object) -> bytes:
        raise AssertionError("the spool copy was read")

    monkeypatch.setattr(spool, "get_head", no_reads)
    stored = [decode_event(storage.handle(r)[0].value, ObjectStored) for r in records]
    assert [storage.context.blobs.get_verified(s.blob) for s in stored] == [one.data, two.data]
    assert [storage.context.blobs.stat(Namespace.ORIGINAL, s.blob.key) for s in stored] == [
        s.blob for s in stored
    ]


def test_after_a_crash_of_the_machine_storage_checks_every_spool_copy(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A record from an earlier boot (or with no boot at all) may announce a copy that the
    crash left with the right size and the wrong bytes: read and hashed, it is refused."""
    receiver, spool, bus = parts
    one, two = _items(2)
    for item in (one, two):
        receiver.receive(item.data, item.identity, item.source)
    first, second = bus.read(bus.topic(Topic.RECEIVED))
    for record in (first, second):
        blob = decode_event(record.value, ObjectReceived).blob
        path = spool.local_path(Namespace.SPOOL, blob.key)
        assert path is not None
        path.write_bytes(bytes(len(path.read_bytes())))  # unwritten blocks read as zeros
    unstamped = dataclasses.replace(second, headers={})
    monkeypatch.setattr(spool, "page_cache_boot_id", lambda: "another-boot")
    rebooted = _storage(spool, bus, tmp_path)
    for record in (first, unstamped):
        with pytest.raises(PoisonEvent, match="spool object is corrupt"):
            rebooted.handle(record)
    monkeypatch.setattr(spool, "page_cache_boot_id", lambda: None)  # a store with no such ID
    with pytest.raises(PoisonEvent, match="spool object is corrupt"):
        _storage(spool, bus, tmp_path).handle(second)


def test_every_receive_marks_the_activity_a_refusal_does_not(
    parts: tuple[DurableReceiver, RecordingSpool, RecordingBus], tmp_path: Path
) -> None:
    receiver, _, bus = parts
    path = tmp_path / "receiving"
    receiver.activity = ReceiveActivity(path)
    watcher = ReceiveActivity(path)
    first, second = _items(2)
    receiver.max_object_bytes = 10
    with pytest.raises(ObjectTooLarge):
        receiver.receive(first.data, first.identity, first.source)
    assert receiver.receive_many([second]) and watcher.idle_seconds() == math.inf
    bus.fail = True
    receiver.max_object_bytes = 1_000_000
    receiver.receive_many([second])
    assert watcher.idle_seconds() == math.inf  # the event log refused: nothing was received
    bus.fail = False
    receiver.receive(first.data, first.identity, first.source)
    assert watcher.idle_seconds() < 5
    path.write_bytes(bytes(8))
    receiver.receive_many([second])
    assert watcher.idle_seconds() < 5


def test_the_configured_receiver_marks_this_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_object_bytes=1_000_000)
    bus = EmbeddedBus(settings.data_dir / "events")
    receiver = open_receiver(settings, bus)
    item = _items(1)[0]
    receiver.receive(item.data, item.identity, item.source)
    assert ReceiveActivity(settings.data_dir / "receiving").idle_seconds() < 5
    assert receiver.spool.get_verified(_received(bus)[0].blob) == item.data
    receiver.close()
    bus.close()
