"""What is particular to the embedded event log: which commits are fsync'd."""

from pathlib import Path

from dicomflow.kernel.bus.base import OutgoingRecord
from dicomflow.kernel.bus.embedded import EmbeddedBus, EmbeddedConsumer

_FULL, _NORMAL = 2, 1


def test_appends_are_fsynced_and_offset_commits_are_not(tmp_path: Path) -> None:
    """A lost offset commit replays batches (idempotent sinks); a lost append would lose data."""
    bus = EmbeddedBus(tmp_path / "events")
    topic = bus.topic("received")
    bus.producer().publish_many([OutgoingRecord(topic, "k", b"x")])
    consumer = bus.consumer("dicomflow.g", [topic])
    assert isinstance(consumer, EmbeddedConsumer)
    assert consumer._conn.execute("PRAGMA synchronous").fetchone() == (_NORMAL,)
    consumer.commit(consumer.poll(10, timeout=1))
    consumer.close()
    bus.close()

    reopened = EmbeddedBus(tmp_path / "events")  # a restarted process still sees the commit
    assert reopened.group_lag("dicomflow.g", [topic]) == 0
    committer = reopened.producer()
    committer.publish_many([OutgoingRecord(topic, "k", b"y")])
    assert reopened.group_lag("dicomflow.g", [topic]) == 1
    assert reopened._committer is not None
    assert reopened._committer._conn.execute("PRAGMA synchronous").fetchone() == (_FULL,)
    reopened.close()
