"""The audit trail on every bus: durable records, newest-first search with filters."""

from datetime import UTC, datetime, timedelta

from dicomflow.kernel.audit import AuditAction, AuditEvent, AuditOutcome, AuditTrail
from dicomflow.kernel.bus.base import OutgoingRecord
from dicomflow.kernel.events import Topic
from tests.kernel.conftest import BusFactory


def _event(n: int, **fields: object) -> AuditEvent:
    values: dict[str, object] = {
        "action": AuditAction.QUERY,
        "user": f"user{n % 3}",
        "source": "127.0.0.1",
        "channel": "http",
        "target": "GET /dicomweb/studies",
        "namespace": "original",
        "study_uids": [f"1.2.3.{n}"],
        "query": f"PatientID=P{n}",
    }
    values.update({k: v for k, v in fields.items() if v is not None})
    return AuditEvent.model_validate(values)


def test_recorded_events_come_back_newest_first(bus_factory: BusFactory) -> None:
    trail = AuditTrail(bus_factory())
    for n in range(5):
        trail.record(_event(n))
    found = trail.search()
    assert [e.query for e in found] == [f"PatientID=P{n}" for n in reversed(range(5))]
    assert found[0].schema_version == 1 and found[0].channel == "http"


def test_filters_combine(bus_factory: BusFactory) -> None:
    trail = AuditTrail(bus_factory())
    for n in range(9):
        trail.record(_event(n, action=AuditAction.RETRIEVE if n % 2 else AuditAction.QUERY))
    assert [e.study_uids for e in trail.search(user="user1")] == [
        ["1.2.3.7"],
        ["1.2.3.4"],
        ["1.2.3.1"],
    ]
    assert len(trail.search(action=AuditAction.RETRIEVE)) == 4
    assert [e.user for e in trail.search(study_uid="1.2.3.5")] == ["user2"]
    assert trail.search(user="user1", action=AuditAction.QUERY)[0].study_uids == ["1.2.3.4"]
    assert len(trail.search(limit=2)) == 2


def test_search_pages_back_over_many_records_and_stops_at_since(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    trail = AuditTrail(bus)
    old = datetime.now(UTC) - timedelta(days=2)
    producer = bus.producer()
    topic = bus.topic(Topic.AUDIT)
    producer.publish_many(
        [
            OutgoingRecord(
                topic, "audit", _event(n, time=old if n < 600 else None).model_dump_json().encode()
            )
            for n in range(1200)
        ]
    )
    first = trail.search(study_uid="1.2.3.3")
    assert [e.study_uids for e in first] == [["1.2.3.3"]]
    recent = trail.search(since=datetime.now(UTC) - timedelta(hours=1), limit=1000)
    assert len(recent) == 600
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    assert len(trail.search(since=naive, limit=1000)) == 600
    assert len(trail.search(until=old + timedelta(seconds=1), limit=1000)) == 600


def test_a_record_that_is_not_an_audit_event_is_skipped(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    trail = AuditTrail(bus)
    trail.record(_event(1))
    bus.producer().publish(bus.topic(Topic.AUDIT), "audit", b"not json")
    trail.record(_event(2, outcome=AuditOutcome.SERIOUS_FAILURE))
    found = trail.search()
    assert [e.outcome for e in found] == [AuditOutcome.SERIOUS_FAILURE, AuditOutcome.SUCCESS]


def test_an_empty_trail_finds_nothing(bus_factory: BusFactory) -> None:
    assert AuditTrail(bus_factory()).search() == []
