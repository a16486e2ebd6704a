"""The contract every EventBus implementation passes (embedded log; Kafka in integration)."""

import threading
import uuid

import pytest

from dicomflow.kernel.bus.base import OutgoingRecord
from tests.conftest import service_setting
from tests.kernel.conftest import BusFactory


def _drain(consumer, want: int, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    got = []
    for _ in range(100):
        got.extend(consumer.poll(500, timeout=timeout / 100))
        if len(got) >= want:
            break
    return got


def test_published_records_are_consumed_in_key_order(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")
    producer = bus.producer()
    producer.publish_many(
        [OutgoingRecord(topic, f"study{i % 3}", f"v{i}".encode(), {"n": str(i)}) for i in range(30)]
    )
    consumer = bus.consumer(f"{bus.topic_prefix}.g1", [topic])
    records = _drain(consumer, 30)
    assert len(records) == 30
    for key in ("study0", "study1", "study2"):
        values = [int(r.value[1:]) for r in records if r.key == key]
        assert values == sorted(values)
    assert {r.headers["n"] for r in records} == {str(i) for i in range(30)}


def test_committed_offsets_survive_a_new_consumer(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")
    bus.producer().publish_many([OutgoingRecord(topic, "k", str(i).encode()) for i in range(10)])
    group = f"{bus.topic_prefix}.g"
    first = bus.consumer(group, [topic])
    records = _drain(first, 10)
    first.commit(records[:4])
    first.close()
    second = bus.consumer(group, [topic])
    rest = _drain(second, 6)
    assert [r.value for r in rest] == [str(i).encode() for i in range(4, 10)]
    assert second.lag() == 6
    second.commit(rest)
    assert second.lag() == 0


def test_uncommitted_records_are_delivered_again(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")
    bus.producer().publish_many([OutgoingRecord(topic, "k", str(i).encode()) for i in range(5)])
    consumer = bus.consumer(f"{bus.topic_prefix}.g", [topic])
    first = _drain(consumer, 5)
    consumer.seek_to_committed()
    again = _drain(consumer, 5)
    assert [r.value for r in again] == [r.value for r in first]


def test_groups_are_independent_and_replay_from_the_beginning(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("stored")
    bus.producer().publish_many([OutgoingRecord(topic, "k", str(i).encode()) for i in range(7)])
    a = bus.consumer(f"{bus.topic_prefix}.a", [topic])
    a.commit(_drain(a, 7))
    b = bus.consumer(f"{bus.topic_prefix}.b", [topic])
    assert len(_drain(b, 7)) == 7
    a.seek_to_beginning()
    assert len(_drain(a, 7)) == 7
    assert bus.group_lag(f"{bus.topic_prefix}.a", [topic]) == 0
    assert bus.group_lag(f"{bus.topic_prefix}.b", [topic]) == 7


def test_concurrent_publishers_lose_nothing(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")

    def publish(worker: int) -> None:
        producer = bus.producer()
        for i in range(50):
            producer.publish(topic, f"s{worker}", f"{worker}:{i}".encode())

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    consumer = bus.consumer(f"{bus.topic_prefix}.g", [topic])
    values = {r.value for r in _drain(consumer, 400)}
    assert len(values) == 400
    assert bus.topic_sizes()[topic] == 400


def test_records_survive_reopening(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")
    bus.producer().publish(topic, "k", b"durable")
    bus.close()
    reopened = bus_factory()
    assert [r.value for r in reopened.read(topic)] == [b"durable"]


def test_begin_publish_is_done_once_the_records_are_durable(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    topic = bus.topic("received")
    producer = bus.producer()
    pending = producer.begin_publish(
        [OutgoingRecord(topic, "s", f"v{i}".encode()) for i in range(3)]
    )
    assert pending.result(timeout=30) is None
    assert [r.value for r in bus.read(topic)] == [b"v0", b"v1", b"v2"]


@pytest.mark.integration
def test_a_foreign_record_of_any_bytes_is_delivered_to_be_dead_lettered() -> None:
    """Any Kafka client may write to a topic. A key or header that is not UTF-8 is delivered
    escaped, so that the processor dead-letters the record; it does not fail every poll."""
    from confluent_kafka import Producer as ForeignProducer

    from dicomflow.kernel.bus.kafka import KafkaBus

    bootstrap = service_setting("DICOMFLOW_KAFKA_BOOTSTRAP")
    bus = KafkaBus(bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=1)
    try:
        topic = bus.topic("received")
        bus.producer().publish_many([OutgoingRecord(topic, "k", b"ours")])  # makes the topic
        foreign = ForeignProducer({"bootstrap.servers": bootstrap})
        foreign.produce(topic, key=b"\xff\xfek", value=b"\x00\xff", headers=[("h", b"\xfe")])
        foreign.produce(topic, key=None, value=b"after", headers=[("none", None)])
        assert foreign.flush(30) == 0
        consumer = bus.consumer(f"{bus.topic_prefix}.g", [topic])
        records = _drain(consumer, 3)
        assert [r.value for r in records] == [b"ours", b"\x00\xff", b"after"]
        assert records[1].key == "\\xff\\xfek" and records[1].headers == {"h": "\\xfe"}
        assert records[2].key is None and records[2].headers == {"none": ""}
    finally:
        bus.close()


@pytest.mark.integration
def test_going_back_to_the_commit_keeps_every_partition_when_seek_cannot() -> None:
    """After a broker outage a processor goes back to its last commit while its partitions are
    assigned but not fetched, where Kafka's seek fails (`_STATE`, "Erroneous state"). It must
    still read all of them: the fallback once re-assigned one partition alone and left the
    others unread, a pipeline that never caught up."""
    from confluent_kafka import KafkaError, KafkaException

    from dicomflow.kernel.bus.kafka import KafkaBus, KafkaConsumer

    bus = KafkaBus(
        service_setting("DICOMFLOW_KAFKA_BOOTSTRAP"),
        topic_prefix=f"t{uuid.uuid4().hex[:8]}",
        partitions=4,
    )
    try:
        topic = bus.topic("received")
        bus.producer().publish_many(
            [OutgoingRecord(topic, f"study{i}", str(i).encode()) for i in range(40)]
        )
        consumer = bus.consumer(f"{bus.topic_prefix}.g", [topic])
        assert isinstance(consumer, KafkaConsumer)
        first = _drain(consumer, 40)
        assert {r.partition for r in first} == {0, 1, 2, 3}
        consumer.commit([r for r in first if r.partition == 0])
        real = consumer._consumer

        class NotFetching:
            """The real consumer, whose seek fails as it does in that state (the window is
            milliseconds on a healthy broker, too short to hit on purpose)."""

            def seek(self, partition: object) -> None:
                raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        consumer._consumer = NotFetching()
        consumer.seek_to_committed()
        consumer._consumer = real
        assert sorted(tp.partition for tp in real.assignment()) == [0, 1, 2, 3]
        uncommitted = sorted(r.value for r in first if r.partition != 0)
        assert sorted(r.value for r in _drain(consumer, len(uncommitted))) == uncommitted
    finally:
        bus.close()


def test_the_kafka_producer_refreshes_partition_leaders_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker restart left partitions leaderless in the producer's metadata; with the default
    refresh (5 min) every C-STORE was refused that long (CI, the Kafka outage test)."""
    from dicomflow.kernel.bus import kafka

    configs: list[dict[str, object]] = []
    monkeypatch.setattr(
        kafka.confluent_kafka, "Producer", lambda config: configs.append(config) or object()
    )
    kafka.KafkaBus("127.0.0.1:1").producer()
    [config] = configs
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    refresh = config["topic.metadata.refresh.interval.ms"]
    assert isinstance(refresh, int) and refresh <= 10_000
