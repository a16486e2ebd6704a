"""The audit trail: who touched identified data or changed the system, what, from where, when.

Each audit event is modelled on the DICOM audit message schema (PS3.15 Annex A.5, the IHE ATNA
record): the action is the EventID, the outcome the EventOutcomeIndicator, the user and source
are the active participants, the studies and patients the participant objects.

Audit events are records of the bus topic ``<prefix>.audit`` (one partition, so one total order).
That makes them durable exactly like every other event (fsync in the embedded log, acks=all on
Kafka) and exportable by construction: a SIEM exporter is one more consumer group on the topic.
Admins query the recent trail through `AuditTrail.search` (GET /api/admin/audit), which scans the
topic backwards; a long-term archive of the trail belongs in a system built for that, fed from
the topic.
"""

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dicomflow.kernel.bus.base import EventBus, Producer
from dicomflow.kernel.events import Topic
from dicomflow.kernel.settings import Settings

log = logging.getLogger(__name__)

AUDIT_SCHEMA_VERSION = 1
AUDIT_KEY = "audit"  # one key, one partition: the trail has a single order on every back end
_SCAN_PAGE = 500


class AuditAction(StrEnum):
    """What happened; the comment names the DICOM audit message EventID it models."""

    QUERY = "query"  # 110112 Query: C-FIND, QIDO-RS, /api/search, UI search
    RETRIEVE = "retrieve"  # 110104 DICOM Instances Transferred: WADO-RS, C-GET, downloads
    EXPORT = "export"  # 110106 Export: CSV/JSON export, C-MOVE to a destination
    STORE = "store"  # 110104 DICOM Instances Transferred (received)
    ADMIN_CHANGE = "admin-change"  # 110100 Application Activity: configuration, tokens, reindex
    LOGIN = "login"  # 110114 User Authentication
    ACCESS_DENIED = "access-denied"  # 110113 Security Alert: refused credentials, roles, AEs


class AuditOutcome(StrEnum):
    """EventOutcomeIndicator (PS3.15 A.5.3)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


AuditChannel = Literal["http", "dimse", "cli"]


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id() -> str:
    return uuid.uuid4().hex


class AuditEvent(BaseModel):
    """One audit record. It never holds a secret; it may hold patient identifiers (the point)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = AUDIT_SCHEMA_VERSION
    type: Literal["audit"] = "audit"
    event_id: str = Field(default_factory=_event_id)
    time: datetime = Field(default_factory=_now)
    action: AuditAction
    outcome: AuditOutcome = AuditOutcome.SUCCESS
    user: str = Field(description="Token name, OIDC subject, or the calling AE title (DIMSE).")
    roles: list[str] = Field(default_factory=list)
    source: str = Field(description="Client IP address (HTTP) or AE@address (DIMSE).")
    channel: AuditChannel
    target: str = Field(description="Route or DIMSE service, e.g. 'GET /dicomweb/studies'.")
    namespace: str | None = None
    study_uids: list[str] = Field(default_factory=list)
    patient_ids: list[str] = Field(default_factory=list)
    query: str | None = None
    detail: str = ""


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, the zone of every audit event."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class AuditTrail:
    """Writes audit events durably to the bus and reads the recent ones back."""

    def __init__(self, bus: EventBus, max_scanned: int = 200_000) -> None:
        self._bus = bus
        self._max_scanned = max_scanned
        self._topic = bus.topic(Topic.AUDIT)
        self._producer: Producer | None = None

    def record(self, event: AuditEvent) -> None:
        """Append `event`; durable when this returns.

        Raises BackendUnavailable when the bus cannot make it durable: the caller should then
        refuse the access rather than serve identified data without a trail.
        """
        if self._producer is None:
            self._producer = self._bus.producer()
        self._producer.publish(self._topic, AUDIT_KEY, event.model_dump_json().encode())

    def search(
        self,
        *,
        user: str | None = None,
        action: AuditAction | None = None,
        study_uid: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """The newest events matching every given filter, newest first.

        Scans at most `DICOMFLOW_AUDIT_MAX_SCAN` records back from the end of the topic, and
        stops at the first event older than `since` (the topic is in time order).
        """
        since, until = _aware(since), _aware(until)
        found: list[AuditEvent] = []
        for scanned, event in enumerate(self._newest_first()):
            if scanned >= self._max_scanned or len(found) >= limit:
                break
            if since is not None and event.time < since:
                break
            if until is not None and event.time > until:
                continue
            if user is not None and event.user != user:
                continue
            if action is not None and event.action != action:
                continue
            if study_uid is not None and study_uid not in event.study_uids:
                continue
            found.append(event)
        return found

    def _newest_first(self) -> Iterator[AuditEvent]:
        end = self._bus.topic_sizes().get(self._topic, 0)
        while end > 0:
            start = max(0, end - _SCAN_PAGE)
            records = [r for r in self._bus.read(self._topic, start, end - start) if r.offset < end]
            for record in reversed(records):
                try:
                    yield AuditEvent.model_validate_json(record.value)
                except ValidationError:
                    log.warning("audit record %d is not an audit event; skipped", record.offset)
            if not records or records[0].offset > start:
                return  # the beginning of the topic, or of what retention kept
            end = start

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


def open_audit_trail(settings: Settings, bus: EventBus) -> AuditTrail:
    """The audit trail of this deployment (on its bus, whichever bus that is)."""
    return AuditTrail(bus, max_scanned=settings.audit_max_scan)
