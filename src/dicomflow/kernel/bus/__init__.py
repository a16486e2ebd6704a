"""The event bus: interface and implementations (embedded log, Kafka)."""

from dicomflow.kernel.bus.base import (
    Consumer,
    EventBus,
    OutgoingRecord,
    Producer,
    Record,
    partition_for,
)

__all__ = ["Consumer", "EventBus", "OutgoingRecord", "Producer", "Record", "partition_for"]
