"""The event bus interface: Kafka's model (topics, partitions, keys, consumer groups, offsets).

Two implementations satisfy it: `EmbeddedBus` (a durable local log in SQLite) and `KafkaBus`.
Both pass tests/kernel/test_bus_contract.py.
"""

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from dicomflow.kernel.exceptions import BackendUnavailable


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: str | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    timestamp: float
    headers: dict[str, str] = field(default_factory=dict)


def partition_for(key: str | None, partitions: int) -> int:
    """Stable partition of a key (same study, same partition, same order)."""
    if key is None or partitions <= 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


class Producer(ABC):
    @abstractmethod
    def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Append records; when this returns, every record is durable (fsync or acks=all).

        Raises BackendUnavailable when that cannot be guaranteed; then none may be assumed
        written, and the caller must not acknowledge anything to its own client.
        """

    def begin_publish(self, records: Sequence[OutgoingRecord]) -> Future[None]:
        """Start appending records: the future's result is None once every record is durable.

        It raises BackendUnavailable as `publish_many` would. Lets a caller overlap the
        append with its own work (the spool fsync of an object); by default the append is
        done before this returns.
        """
        done: Future[None] = Future()
        try:
            self.publish_many(records)
        except BackendUnavailable as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def publish(self, topic: str, key: str | None, value: bytes, **headers: str) -> None:
        self.publish_many([OutgoingRecord(topic, key, value, headers)])

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""


class Consumer(ABC):
    """A member of a consumer group. Offsets are committed explicitly, after the work is done."""

    @abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Up to `max_records` records after the current position, waiting up to `timeout`."""

    @abstractmethod
    def commit(self, records: Sequence[Record]) -> None:
        """Commit the position after the last of `records` in each partition (at-least-once)."""

    @abstractmethod
    def seek_to_committed(self) -> None:
        """Go back to the last committed position (after a failed batch: retry it)."""

    @abstractmethod
    def seek_to_beginning(self) -> None:
        """Replay every topic of this consumer from the earliest retained offset."""

    @abstractmethod
    def lag(self) -> int:
        """Records in the subscribed topics after this group's committed positions."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Leave the group and release resources."""


class EventBus(ABC):
    """Factory of producers and consumers on one bus, and the topic namespace."""

    def __init__(self, topic_prefix: str = "dicomflow") -> None:
        self.topic_prefix = topic_prefix

    def topic(self, name: str) -> str:
        """The full name of a logical topic (``received`` -> ``dicomflow.received``)."""
        return f"{self.topic_prefix}.{name}"

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer: ...

    @abstractmethod
    def topic_sizes(self) -> dict[str, int]:
        """Records appended so far per full topic name (end offsets summed over partitions)."""

    @abstractmethod
    def group_lag(self, group: str, topics: Sequence[str]) -> int:
        """How far a group is behind, without joining it (for status pages)."""

    @abstractmethod
    def read(self, topic: str, offset: int = 0, limit: int = 100) -> list[Record]:
        """Records of a topic from an offset, outside any group (dead letters, audit views)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
