"""Dead letters as people see them (newest first, with what the payload refers to) and their
retry: the original payload re-published to its source topic, for every group reading it.

A retried record is an ordinary record of the source topic: the processors handle it again,
idempotently (keyed by SOP Instance UID), and dead-letter it again if it still fails. Other
groups of that topic see it too, which the same idempotency makes harmless.
"""

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dicomflow.api.exceptions import ApiError
from dicomflow.kernel.bus.base import EventBus, OutgoingRecord
from dicomflow.kernel.events import DeadLetter, Topic, decode_event

RETRY_HEADER = "dicomflow-retry-of"


class DeadLetterNotFound(ApiError, LookupError):
    """No dead letter at this offset (never written, or aged out of the topic)."""


class DeadLetterNotRetryable(ApiError, ValueError):
    """A dead letter whose source topic is not a topic of this deployment."""


@dataclass(frozen=True)
class DeadLetterView:
    """One dead letter: where it failed, why, and what its payload refers to."""

    offset: int
    group: str
    topic: str
    partition: int
    source_offset: int
    key: str | None
    error_type: str
    reason: str
    failed_at: str
    payload_type: str
    payload_ref: str
    payload_bytes: int


def payload_reference(payload: bytes) -> tuple[str, str]:
    """The event type of a payload and what it refers to (SOP Instance UID, blob)."""
    try:
        document: Any = json.loads(payload)
    except ValueError:
        return "undecodable", f"{len(payload)} bytes that are not JSON"
    if not isinstance(document, dict):
        return "unknown", "a JSON value that is not an event"
    parts: list[str] = []
    identity = document.get("identity")
    if isinstance(identity, dict) and identity.get("sop_instance_uid"):
        parts.append(f"SOP {identity['sop_instance_uid']}")
    blob = document.get("blob")
    if isinstance(blob, dict) and blob.get("key"):
        parts.append(f"blob {blob.get('namespace', '?')}/{blob['key']}")
    return str(document.get("type", "unknown")), ", ".join(parts) or "(no reference)"


def view(offset: int, letter: DeadLetter) -> DeadLetterView:
    payload_type, payload_ref = payload_reference(letter.payload)
    return DeadLetterView(
        offset=offset,
        group=letter.group,
        topic=letter.topic,
        partition=letter.partition,
        source_offset=letter.offset,
        key=letter.key,
        error_type=letter.error_type,
        reason=letter.reason,
        failed_at=letter.failed_at.isoformat(timespec="seconds"),
        payload_type=payload_type,
        payload_ref=payload_ref,
        payload_bytes=len(letter.payload),
    )


def count(bus: EventBus) -> int:
    return bus.topic_sizes().get(bus.topic(Topic.DEAD_LETTER), 0)


def latest(bus: EventBus, limit: int = 50, before: int | None = None) -> list[DeadLetterView]:
    """Up to `limit` dead letters, newest first (those at offsets below `before`, if given).

    A record that is not a DeadLetter is left out (it cannot be retried anyway).
    """
    end = count(bus) if before is None else before
    start = max(0, end - limit)
    if end <= start:
        return []
    records = bus.read(bus.topic(Topic.DEAD_LETTER), start, end - start)
    out: list[DeadLetterView] = []
    for record in records:
        try:
            out.append(view(record.offset, decode_event(record.value, DeadLetter)))
        except ValidationError:
            continue
    return sorted(out, key=lambda item: -item.offset)


def get(bus: EventBus, offset: int) -> DeadLetter:
    """The dead letter at `offset`; raises DeadLetterNotFound."""
    records = bus.read(bus.topic(Topic.DEAD_LETTER), offset, 1) if offset >= 0 else []
    if not records or records[0].offset != offset:
        raise DeadLetterNotFound(f"no dead letter at offset {offset}")
    try:
        return decode_event(records[0].value, DeadLetter)
    except ValidationError as exc:
        raise DeadLetterNotFound(f"the record at offset {offset} is not a dead letter") from exc


def retry(bus: EventBus, offset: int) -> DeadLetter:
    """Re-publish the payload of the dead letter at `offset` to its source topic, durably.

    Raises DeadLetterNotFound, DeadLetterNotRetryable, or BackendUnavailable.
    """
    letter = get(bus, offset)
    dead_letter_topic = bus.topic(Topic.DEAD_LETTER)
    if not letter.topic.startswith(bus.topic_prefix + ".") or letter.topic == dead_letter_topic:
        raise DeadLetterNotRetryable(
            f"dead letter {offset} came from topic {letter.topic!r}, which is not a topic of "
            f"this deployment (prefix {bus.topic_prefix!r}); it cannot be retried here"
        )
    producer = bus.producer()
    producer.publish_many(
        [
            OutgoingRecord(
                letter.topic,
                letter.key,
                letter.payload,
                {RETRY_HEADER: f"{dead_letter_topic}:{offset}"},
            )
        ]
    )
    return letter
