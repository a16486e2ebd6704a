"""The event schema of the pipeline: topics, keys and payload models, in one place.

Every event is a pydantic model serialised as JSON with a ``schema_version``. The record key is
the Study Instance UID, so that every event of one study lands in one partition, in order. The
idempotency key of every consumer is the SOP Instance UID (plus the namespace): processing an
event twice overwrites, it never duplicates. docs/events.md describes the same in prose.

Flow::

    ingest (C-STORE, STOW-RS, import) --received--> storage --stored--> metadata --metadata--> index
                                                          \\--stored--> deidentify --deidentified--+
                                                                                                  |
                                                   metadata <-------------------------------------+

Large objects never travel inside events (claim check): the event carries a `BlobRef` to the
bytes, with their size and SHA-256.
"""

import base64
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


class Topic(StrEnum):
    """Logical topic names; the bus prefixes them (``dicomflow.received``...)."""

    RECEIVED = "received"
    STORED = "stored"
    DEIDENTIFIED = "deidentified"
    METADATA = "metadata"
    DEAD_LETTER = "deadletter"
    AUDIT = "audit"


SPOOL_BOOT_HEADER = "dicomflow-spool-boot"
"""Header of a ``received`` record: the boot ID under which its spool object was written whole
before the record was appended (`BlobStore.page_cache_boot_id`). A storage processor in that
same boot links the object without reading it back to check its SHA-256; any other reader (a
record from before a crash of the machine, a record without the header) checks it."""


class Namespace(StrEnum):
    """Where an object lives: the spool, the originals, or the de-identified copies."""

    SPOOL = "spool"
    ORIGINAL = "original"
    DEIDENTIFIED = "deidentified"


class SourceKind(StrEnum):
    DIMSE = "dimse"
    STOW = "stow"
    IMPORT = "import"


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id() -> str:
    return uuid.uuid4().hex


class EventModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=_event_id)


class BlobRef(BaseModel):
    """Where an object's bytes are (claim check), with what is needed to verify them."""

    model_config = ConfigDict(frozen=True)

    namespace: Namespace
    key: str
    size: int
    sha256: str


class Source(BaseModel):
    """Who sent an object and how; the basis of the "top senders" statistics."""

    model_config = ConfigDict(frozen=True)

    kind: SourceKind
    calling_ae: str = ""
    called_ae: str = ""
    address: str = ""
    path: str = ""


class InstanceIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


class ObjectReceived(EventModel):
    """An object was made durable in the spool by an ingest edge. Key: study UID."""

    type: Literal["object.received"] = "object.received"
    identity: InstanceIdentity
    blob: BlobRef
    source: Source
    received_at: datetime = Field(default_factory=_now)


class ObjectStored(EventModel):
    """An object (original or de-identified copy) is in the blob store. Key: study UID."""

    type: Literal["object.stored"] = "object.stored"
    identity: InstanceIdentity
    blob: BlobRef
    source: Source
    received_at: datetime
    stored_at: datetime = Field(default_factory=_now)
    original_sop_instance_uid: str | None = Field(
        None, description="For a de-identified copy: the SOP Instance UID it was made from."
    )


class MetadataExtracted(EventModel):
    """The DICOM JSON model (no bulk data) and normalised search fields of one instance."""

    type: Literal["metadata.extracted"] = "metadata.extracted"
    identity: InstanceIdentity
    namespace: Namespace
    blob: BlobRef
    source: Source
    received_at: datetime
    dicom_json: dict[str, Any]
    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="Normalised search fields by DICOM keyword (dates as ISO dates, numbers as "
        "numbers, person names as {family, given, ...} plus the full string).",
    )


class DeadLetter(EventModel):
    """An event that a processor could not handle, with the reason. Key: the original key.

    Schema version 2: `payload` is base64 in JSON, so that any record can be dead-lettered
    (version 1 wrote it as text, and a payload that was not UTF-8 could not be written at all:
    the stream stopped at it). Version 1 letters are still read.
    """

    model_config = ConfigDict(
        frozen=True, extra="ignore", ser_json_bytes="base64", val_json_bytes="base64"
    )

    schema_version: int = 2
    type: Literal["dead.letter"] = "dead.letter"
    group: str
    topic: str
    partition: int
    offset: int
    key: str | None
    payload: bytes
    error_type: str
    reason: str
    failed_at: datetime = Field(default_factory=_now)

    @model_validator(mode="before")
    @classmethod
    def _payload_as_text(cls, data: Any) -> Any:
        """A version 1 letter's payload is its text: as base64 for the validation above."""
        if (
            isinstance(data, dict)
            and isinstance(data.get("payload"), str)
            and data.get("schema_version", 1) == 1
        ):
            encoded = base64.urlsafe_b64encode(data["payload"].encode()).decode()
            return {**data, "payload": encoded}
        return data


EVENT_TYPES: dict[str, type[EventModel]] = {
    "object.received": ObjectReceived,
    "object.stored": ObjectStored,
    "metadata.extracted": MetadataExtracted,
    "dead.letter": DeadLetter,
}


def encode_event(event: EventModel) -> bytes:
    # The serializer's bytes as they are: `model_dump_json` makes a str of them first.
    return event.__pydantic_serializer__.to_json(event)


E = TypeVar("E", bound=EventModel)


def decode_event(payload: bytes, model: type[E]) -> E:
    """Decode one payload as `model`; raises pydantic.ValidationError on a poison event."""
    return model.model_validate_json(payload)
