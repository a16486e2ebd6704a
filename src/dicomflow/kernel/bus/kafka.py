"""The scale-out event bus on Apache Kafka (confluent-kafka).

- Producer: idempotent, ``acks=all``; `publish_many` returns only when every record is
  acknowledged by the broker, and raises `BackendUnavailable` if any is not within
  ``message.timeout.ms``: the caller then must not acknowledge its own client.
- Consumers: one group per processor, auto-commit off, offsets committed synchronously after
  the work is done (at-least-once).
- Topics are created on first use with `partitions` partitions (dead letters: one partition, so
  that they read in one order).
"""

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from dicomflow.kernel.bus.base import Consumer, EventBus, OutgoingRecord, Producer, Record
from dicomflow.kernel.exceptions import BackendUnavailable, MissingExtra

try:
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingExtra("confluent-kafka", "kafka") from exc

log = logging.getLogger(__name__)

_SINGLE_PARTITION_TOPICS = ("deadletter", "audit")
_OFFSET_BEGINNING = confluent_kafka.OFFSET_BEGINNING


def _text(raw: bytes) -> str:
    # Any client may write to a topic: bytes that are not UTF-8 are escaped, not an error,
    # which would fail every poll of the partition instead of dead-lettering one record.
    return raw.decode(errors="backslashreplace")


def _headers(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    return {k: _text(v) if isinstance(v, bytes) else ("" if v is None else str(v)) for k, v in raw}


def _to_record(message: Any) -> Record:
    key = message.key()
    timestamp_type, timestamp = message.timestamp()
    return Record(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=_text(key) if isinstance(key, bytes) else key,
        value=message.value() or b"",
        timestamp=timestamp / 1000.0 if timestamp_type else time.time(),
        headers=_headers(message.headers()),
    )


class KafkaProducer(Producer):
    def __init__(self, producer: Any, ensure_topics: Any, timeout: float) -> None:
        self._producer = producer
        self._ensure_topics = ensure_topics
        self._timeout = timeout

    def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        if not records:
            return
        self._ensure_topics({r.topic for r in records})
        errors: list[str] = []
        pending = [len(records)]
        done = threading.Event()

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            pending[0] -= 1
            if pending[0] == 0:
                done.set()

        try:
            for record in records:
                self._produce(record, delivered)
        except (KafkaException, BufferError) as exc:
            raise BackendUnavailable(f"Kafka did not accept the records: {exc}") from exc
        deadline = time.monotonic() + self._timeout
        while not done.is_set():
            if time.monotonic() > deadline:
                raise BackendUnavailable("Kafka did not confirm the records in time")
            self._producer.poll(0.01)
        if errors:
            raise BackendUnavailable(f"Kafka refused records: {errors[0]}")

    def _produce(self, record: OutgoingRecord, delivered: Any) -> None:
        for attempt in range(50):
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key.encode() if record.key is not None else None,
                    headers=list(record.headers.items()) or None,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The local queue is full: back-pressure, wait for deliveries to drain it.
                self._producer.poll(0.1 * (attempt + 1))
        raise BufferError("the Kafka producer queue stayed full")

    def close(self) -> None:
        self._producer.flush(self._timeout)


class KafkaConsumer(Consumer):
    def __init__(self, config: dict[str, Any], topics: Sequence[str], ensure_topics: Any) -> None:
        ensure_topics(set(topics))
        self._consumer = confluent_kafka.Consumer(config)
        self._topics = list(topics)
        self._replay = False
        self._consumer.subscribe(self._topics, on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self._replay:
            for tp in partitions:
                tp.offset = _OFFSET_BEGINNING
            consumer.assign(partitions)

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        try:
            messages = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka consume failed: {exc}") from exc
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_to_record(message))
            elif error.code() not in (
                KafkaError._PARTITION_EOF,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
            ):
                raise BackendUnavailable(f"Kafka consume error: {error}")
        return records

    def commit(self, records: Sequence[Record]) -> None:
        last: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            last[key] = max(last.get(key, -1), record.offset)
        if not last:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka commit failed: {exc}") from exc

    def _seek_all(self, beginning: bool) -> None:
        assignment = self._consumer.assignment()
        if not assignment:
            return
        positions = assignment if beginning else self._consumer.committed(assignment, timeout=10)
        targets = [
            TopicPartition(
                tp.topic,
                tp.partition,
                _OFFSET_BEGINNING if beginning or tp.offset < 0 else tp.offset,
            )
            for tp in positions
        ]
        try:
            for target in targets:
                self._consumer.seek(target)
        except KafkaException as exc:
            # A partition assigned but not fetched yet (right after a rebalance, which a broker
            # restart causes) refuses seek: assign them all from the wanted positions instead.
            # assign() replaces the whole assignment, so it gets every partition, never one
            # alone (which left the others unread until the next rebalance).
            log.warning("Kafka seek failed (%s): re-assigning %d partitions", exc, len(targets))
            self._consumer.assign(targets)

    def seek_to_committed(self) -> None:
        try:
            self._seek_all(beginning=False)
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka seek failed: {exc}") from exc

    def seek_to_beginning(self) -> None:
        self._replay = True
        self._seek_all(beginning=True)

    def lag(self) -> int:
        assignment = self._consumer.assignment()
        if not assignment:
            return 0
        total = 0
        for tp in self._consumer.committed(assignment, timeout=10):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            total += max(0, high - (tp.offset if tp.offset >= 0 else low))
        return total

    def close(self) -> None:
        self._consumer.close()


class KafkaBus(EventBus):
    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "dicomflow",
        partitions: int = 6,
        replication: int = 1,
        delivery_timeout: float = 15.0,
    ) -> None:
        super().__init__(topic_prefix)
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.replication = replication
        self.delivery_timeout = delivery_timeout
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._known_topics: set[str] = set()
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._meta_consumers: dict[str, Any] = {}

    def _ensure_topics(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if not missing:
            return
        with self._lock:
            try:
                existing = set(self._admin.list_topics(timeout=10).topics)
            except KafkaException as exc:
                raise BackendUnavailable(f"Kafka is not reachable: {exc}") from exc
            new = [
                NewTopic(
                    topic,
                    num_partitions=1
                    if topic.rsplit(".", 1)[-1] in _SINGLE_PARTITION_TOPICS
                    else self.partitions,
                    replication_factor=self.replication,
                )
                for topic in missing - existing
            ]
            if new:
                for future in self._admin.create_topics(new).values():
                    try:
                        future.result(timeout=30)
                    except KafkaException as exc:
                        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise BackendUnavailable(f"cannot create topic: {exc}") from exc
            self._known_topics |= missing

    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    confluent_kafka.Producer(
                        {
                            "bootstrap.servers": self.bootstrap,
                            "enable.idempotence": True,
                            "acks": "all",
                            "linger.ms": 2,
                            "message.timeout.ms": int(self.delivery_timeout * 1000),
                            "message.max.bytes": 4 * 1024 * 1024,
                            # A broker's shutdown leaves partitions without a leader in the
                            # producer's metadata; if librdkafka's quick leader queries give up
                            # before it is back, the default refresh (5 min) kept every record
                            # of those partitions timing out (C-STORE refused) that long.
                            "topic.metadata.refresh.interval.ms": 5000,
                        }
                    ),
                    self._ensure_topics,
                    self.delivery_timeout + 5,
                )
            return self._producer

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        return KafkaConsumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
                # A topic created by another process just before this subscription may be missing
                # from the first metadata; the default refresh (5 min) would leave it unread.
                "topic.metadata.refresh.interval.ms": 5000,
                "max.poll.interval.ms": 600000,
            },
            topics,
            self._ensure_topics,
        )

    def _meta_consumer(self, group: str) -> Any:
        with self._lock:
            if group not in self._meta_consumers:
                self._meta_consumers[group] = confluent_kafka.Consumer(
                    {
                        "bootstrap.servers": self.bootstrap,
                        "group.id": group,
                        "enable.auto.commit": False,
                    }
                )
            return self._meta_consumers[group]

    def _partitions(self, topic: str) -> list[Any]:
        try:
            metadata = self._admin.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka is not reachable: {exc}") from exc
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            return []
        return [TopicPartition(topic, p) for p in sorted(info.partitions)]

    def topic_sizes(self) -> dict[str, int]:
        consumer = self._meta_consumer(f"{self.topic_prefix}.__status")
        try:
            names = [
                t
                for t in self._admin.list_topics(timeout=10).topics
                if t.startswith(f"{self.topic_prefix}.")
            ]
            sizes = {}
            for name in names:
                sizes[name] = sum(
                    consumer.get_watermark_offsets(tp, timeout=10)[1]
                    for tp in self._partitions(name)
                )
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka is not reachable: {exc}") from exc
        return sizes

    def group_lag(self, group: str, topics: Sequence[str]) -> int:
        consumer = self._meta_consumer(group)
        partitions = [tp for topic in topics for tp in self._partitions(topic)]
        if not partitions:
            return 0
        try:
            committed = consumer.committed(partitions, timeout=10)
            total = 0
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                total += max(0, high - (tp.offset if tp.offset >= 0 else low))
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka is not reachable: {exc}") from exc
        return total

    def read(self, topic: str, offset: int = 0, limit: int = 100) -> list[Record]:
        partitions = self._partitions(topic)
        if not partitions:
            return []
        reader = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.topic_prefix}.__reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            ends = {}
            for tp in partitions:
                low, high = reader.get_watermark_offsets(tp, timeout=10)
                if high > max(offset, low):
                    ends[tp.partition] = high
            if not ends:
                return []
            reader.assign([TopicPartition(topic, p, max(offset, 0)) for p in ends])
            records: list[Record] = []
            deadline = time.monotonic() + 10
            while ends and len(records) < limit and time.monotonic() < deadline:
                for message in reader.consume(min(500, limit - len(records)), 0.5):
                    if message.error() is None:
                        records.append(_to_record(message))
                    position = message.offset()
                    if position is not None and position + 1 >= ends.get(message.partition(), 0):
                        ends.pop(message.partition(), None)
            return sorted(records, key=lambda r: (r.partition, r.offset))[:limit]
        finally:
            reader.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for consumer in self._meta_consumers.values():
            consumer.close()
        self._meta_consumers.clear()
