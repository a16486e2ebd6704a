"""Kernel fixtures: every bus implementation behind one factory (Kafka in integration runs)."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.bus.embedded import EmbeddedBus
from tests.conftest import service_setting

BusFactory = Callable[[], EventBus]


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.integration)])
def bus_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusFactory]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    opened: list[EventBus] = []
    bootstrap = service_setting("DICOMFLOW_KAFKA_BOOTSTRAP") if request.param == "kafka" else ""

    def factory() -> EventBus:
        bus: EventBus
        if request.param == "kafka":
            from dicomflow.kernel.bus.kafka import KafkaBus

            bus = KafkaBus(bootstrap, topic_prefix=prefix, partitions=3)
        else:
            bus = EmbeddedBus(tmp_path / "events", topic_prefix=prefix)
        opened.append(bus)
        return bus

    yield factory
    for bus in opened:
        bus.close()
