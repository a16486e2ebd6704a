"""The processor runtime: publish-then-commit, dead letters, retries on back-pressure."""

import errno
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY

from dicomflow.kernel.activity import ReceiveActivity
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.bus.embedded import EmbeddedBus
from dicomflow.kernel.events import DeadLetter, Namespace, Topic, decode_event
from dicomflow.kernel.exceptions import BackPressure
from dicomflow.kernel.settings import Settings
from dicomflow.processors.base import Processor, ProcessorContext
from dicomflow.processors.runtime import Deferral, ProcessorRunner, dead_letter_topic


class Echo(Processor):
    name = "echo"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.RECEIVED,)
    pressure_left = 0

    def handle(self, record: Record) -> list[OutgoingRecord]:
        if record.value.startswith(b"poison"):
            raise ValueError("cannot digest poison")
        if Echo.pressure_left > 0:
            Echo.pressure_left -= 1
            raise BackPressure("index is busy", retry_after=0.01)
        return [OutgoingRecord(self.context.topic(Topic.STORED), record.key, record.value)]


@pytest.fixture
def bus(tmp_path: Path) -> EmbeddedBus:
    return EmbeddedBus(tmp_path / "events")


def _runner(bus: EmbeddedBus, tmp_path: Path) -> ProcessorRunner:
    context = ProcessorContext(
        settings=Settings(data_dir=tmp_path),
        bus=bus,
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        spool=FilesystemBlobStore(tmp_path / "spool"),
    )
    consumer = bus.consumer("dicomflow.echo", [bus.topic(Topic.RECEIVED)])
    return ProcessorRunner(Echo(context), consumer, bus.producer(), dead_letter_topic("dicomflow"))


@pytest.mark.parametrize("poison", [b"poison", b"poison\xff\xfe\x00 not UTF-8"])
def test_poison_goes_to_dead_letters_and_the_stream_moves_on(
    bus: EmbeddedBus, tmp_path: Path, poison: bytes
) -> None:
    topic = bus.topic(Topic.RECEIVED)
    producer = bus.producer()
    for value in (b"a", poison, b"b"):
        producer.publish(topic, "study", value)
    runner = _runner(bus, tmp_path)
    assert runner.step(timeout=1) == 3
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"a", b"b"]
    letters = bus.read(bus.topic(Topic.DEAD_LETTER))
    assert len(letters) == 1
    letter = decode_event(letters[0].value, DeadLetter)
    assert letter.reason == "cannot digest poison"
    assert letter.payload == poison and letter.group == "echo" and letter.offset == 1
    assert runner.consumer.lag() == 0


def test_back_pressure_retries_without_loss_or_commit(bus: EmbeddedBus, tmp_path: Path) -> None:
    topic = bus.topic(Topic.RECEIVED)
    bus.producer().publish(topic, "study", b"x")
    runner = _runner(bus, tmp_path)
    Echo.pressure_left = 2
    assert runner.step(timeout=1) == 0
    assert runner.consumer.lag() == 1
    assert runner.step(timeout=1) == 0
    assert runner.step(timeout=1) == 1
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"x"]
    assert runner.state.retries == 2


class FailingSink(Echo):
    name = "sink"

    def handle_batch(self, records: Sequence[Record]):  # type: ignore[no-untyped-def]
        if any(r.value == b"poison" for r in records):
            raise RuntimeError("bulk write rejected a document")
        return super().handle_batch(records)


def test_a_failing_batch_sink_isolates_the_poison_record(bus: EmbeddedBus, tmp_path: Path) -> None:
    topic = bus.topic(Topic.RECEIVED)
    for value in (b"a", b"poison", b"b"):
        bus.producer().publish(topic, "study", value)
    runner = _runner(bus, tmp_path)
    runner.processor = FailingSink(runner.processor.context)
    assert runner.step(timeout=1) == 3
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"a", b"b"]
    assert len(bus.read(bus.topic(Topic.DEAD_LETTER))) == 1


class FlakyConsumer:
    """Wraps a consumer so that the bus is 'down' for the next `outages` calls."""

    def __init__(self, inner, outages: int) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.outages = outages

    def _maybe_fail(self) -> None:
        from dicomflow.kernel.exceptions import BackendUnavailable

        if self.outages > 0:
            self.outages -= 1
            raise BackendUnavailable("broker is down")

    def poll(self, max_records: int = 500, timeout: float = 1.0):  # type: ignore[no-untyped-def]
        self._maybe_fail()
        return self.inner.poll(max_records, timeout)

    def seek_to_committed(self) -> None:
        self._maybe_fail()
        self.inner.seek_to_committed()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_an_unreachable_bus_is_retried_not_fatal(bus: EmbeddedBus, tmp_path: Path) -> None:
    topic = bus.topic(Topic.RECEIVED)
    bus.producer().publish(topic, "study", b"x")
    runner = _runner(bus, tmp_path)
    runner.consumer = FlakyConsumer(runner.consumer, outages=3)  # type: ignore[assignment]
    runner._backoff = 0.0
    processed = 0
    for _ in range(6):
        runner._backoff = 0.0  # keep the test fast: no waiting between retries
        processed += runner.step(timeout=0.2)
        if processed:
            break
    assert processed == 1
    assert runner.state.retries == 3
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"x"]


class Archiver(Echo):
    def handle(self, record: Record) -> list[OutgoingRecord]:
        self.context.blobs.put(Namespace.ORIGINAL, f"{record.offset}.dcm", record.value)
        return []


def test_a_full_blob_store_is_retried_never_dead_lettered(
    bus: EmbeddedBus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"acknowledged")
    runner = _runner(bus, tmp_path)
    runner.processor = Archiver(runner.processor.context)

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        # Whichever sync makes the object durable: its own fsync, or its batch's sync.
        patch.setattr("dicomflow.kernel.blobs.filesystem.os.fsync", disk_full)
        patch.setattr("dicomflow.kernel.blobs.filesystem.sync_files", disk_full)
        assert runner.step(timeout=1) == 0
    assert runner.state.retries == 1 and runner.consumer.lag() == 1
    assert bus.read(bus.topic(Topic.DEAD_LETTER)) == []
    assert runner.step(timeout=1) == 1  # space freed: the same record goes through
    assert runner.processor.context.blobs.get(Namespace.ORIGINAL, "0.dcm") == b"acknowledged"


class Picky(Echo):
    batch_size = 3


def test_a_batch_is_at_most_the_processors_batch_size(bus: EmbeddedBus, tmp_path: Path) -> None:
    """Nothing of a batch is published before all of it is done: each processor bounds it."""
    producer = bus.producer()
    producer.publish_many(
        [OutgoingRecord(bus.topic(Topic.RECEIVED), "study", b"x") for _ in range(7)]
    )
    runner = _runner(bus, tmp_path)
    runner.processor = Picky(runner.processor.context)
    assert ProcessorRunner(runner.processor, runner.consumer, producer, "dl").batch_size == 3
    assert runner.batch_size == Echo.batch_size == 100  # the runner of _runner was built for Echo
    runner.batch_size = 3
    assert [runner.step(timeout=1) for _ in range(4)] == [3, 3, 1, 0]


def _deferred_runner(bus: EmbeddedBus, tmp_path: Path, max_delay: float) -> ProcessorRunner:
    runner = _runner(bus, tmp_path)
    activity = ReceiveActivity(tmp_path / "receiving")
    runner.deferral = Deferral(activity, max_delay, quiet=0.5, check_every=0.01)
    return runner


def _deferred_seconds() -> float:
    labels = {"processor": "echo"}
    return REGISTRY.get_sample_value("dicomflow_processor_deferred_seconds_total", labels) or 0.0


def _forget_receives(tmp_path: Path) -> None:
    (tmp_path / "receiving").write_bytes(bytes(8))


def _keep_receiving(tmp_path: Path, seconds: float) -> threading.Thread:
    activity = ReceiveActivity(tmp_path / "receiving")
    activity.mark()  # before the runner looks, however late the thread starts
    end = time.monotonic() + seconds

    def mark() -> None:
        while time.monotonic() < end:
            activity.mark()
            time.sleep(0.02)

    thread = threading.Thread(target=mark, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("receiving_for", "max_delay", "waits_at_least"),
    [
        (0.3, 60.0, 0.3 + 0.5 - 0.1),  # objects stop: done once quiet for half a second
        (3.0, 0.3, 0.2),  # objects keep coming: done once its event is max_delay old
    ],
)
def test_a_background_runner_holds_its_batch_while_objects_arrive(
    bus: EmbeddedBus, tmp_path: Path, receiving_for: float, max_delay: float, waits_at_least: float
) -> None:
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"x")
    runner = _deferred_runner(bus, tmp_path, max_delay=max_delay)
    deferred = _deferred_seconds()
    receiving = _keep_receiving(tmp_path, receiving_for)
    started = time.monotonic()
    assert runner.step(timeout=1) == 1
    assert waits_at_least <= time.monotonic() - started < 2.5
    assert _deferred_seconds() - deferred >= waits_at_least - 0.05  # the metric counts it
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"x"]
    assert runner.consumer.lag() == 0
    receiving.join()


def test_a_runner_stopped_while_holding_its_batch_commits_nothing(
    bus: EmbeddedBus, tmp_path: Path
) -> None:
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"x")
    runner = _deferred_runner(bus, tmp_path, max_delay=60)
    ReceiveActivity(tmp_path / "receiving").mark()
    threading.Timer(0.1, runner.stop).start()
    assert runner.step(timeout=1) == 0
    assert runner.consumer.lag() == 1 and bus.read(bus.topic(Topic.STORED)) == []
    runner._stop.clear()
    _forget_receives(tmp_path)  # nothing arrives any more: the batch is read again and done
    assert runner.step(timeout=1) == 1
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"x"]


def test_without_receives_or_a_deferral_nothing_waits(bus: EmbeddedBus, tmp_path: Path) -> None:
    producer = bus.producer()
    producer.publish(bus.topic(Topic.RECEIVED), "study", b"x")
    assert _deferred_runner(bus, tmp_path, max_delay=60).step(timeout=1) == 1
    producer.publish(bus.topic(Topic.RECEIVED), "study", b"y")
    ReceiveActivity(tmp_path / "receiving").mark()
    runner = _runner(bus, tmp_path)  # the search path's runners have none
    assert runner.deferral is None
    started = time.monotonic()
    assert runner.step(timeout=1) == 1
    assert time.monotonic() - started < 0.4


def _publish_later(bus: EmbeddedBus, values: list[bytes], after: float) -> threading.Thread:
    def publish() -> None:
        time.sleep(after)
        for value in values:
            bus.producer().publish(bus.topic(Topic.RECEIVED), "study", value)

    thread = threading.Thread(target=publish)
    thread.start()
    return thread


@pytest.mark.parametrize("linger", [0.0, 2.0])
def test_a_short_batch_waits_up_to_the_linger_for_more(
    bus: EmbeddedBus, tmp_path: Path, linger: float
) -> None:
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"first")
    runner = _runner(bus, tmp_path)
    runner.batch_size, runner.linger = 3, linger
    late = _publish_later(bus, [b"second", b"third", b"fourth"], after=0.1)
    handled = runner.step(timeout=1)
    late.join()
    # With a linger the batch is topped up to its size (and no further); without, it is what
    # the first poll found.
    assert handled == (3 if linger else 1)
    assert [r.value for r in bus.read(bus.topic(Topic.STORED))] == [b"first", b"second", b"third"][
        :handled
    ]
    assert runner.consumer.lag() == 4 - handled


def test_the_linger_is_a_bound_and_a_full_batch_does_not_wait(
    bus: EmbeddedBus, tmp_path: Path
) -> None:
    runner = _runner(bus, tmp_path)
    runner.batch_size, runner.linger = 2, 0.3
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"alone")
    started = time.monotonic()
    assert runner.step(timeout=1) == 1  # nothing more came: handled once the linger is over
    assert 0.3 <= time.monotonic() - started < 5
    runner.linger = 60.0
    for value in (b"a", b"b"):
        bus.producer().publish(bus.topic(Topic.RECEIVED), "study", value)
    started = time.monotonic()
    assert runner.step(timeout=1) == 2
    assert time.monotonic() - started < 5


def test_a_stopped_runner_does_not_linger(bus: EmbeddedBus, tmp_path: Path) -> None:
    runner = _runner(bus, tmp_path)
    runner.batch_size, runner.linger = 10, 60.0
    bus.producer().publish(bus.topic(Topic.RECEIVED), "study", b"x")
    threading.Timer(0.1, runner.stop).start()
    started = time.monotonic()
    assert runner.step(timeout=1) == 1  # what it has is still handled and committed
    assert time.monotonic() - started < 5
    assert runner.consumer.lag() == 0
