"""The one durable receive path shared by C-STORE, STOW-RS and bulk import.

`DurableReceiver.receive` writes the object to the spool (fsync'd), appends its ``received``
event to the bus (durable), and only then returns: the caller may acknowledge its client.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomflow.ingest.exceptions import InvalidObject, ObjectTooLarge, StorageUnavailable
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import EventBus, OutgoingRecord, Producer
from dicomflow.kernel.events import (
    InstanceIdentity,
    Namespace,
    ObjectReceived,
    Source,
    Topic,
    encode_event,
)
from dicomflow.kernel.exceptions import BackendUnavailable, InvalidUID
from dicomflow.kernel.uids import validate_uid

_REQUIRED = (
    ("StudyInstanceUID", "study_instance_uid"),
    ("SeriesInstanceUID", "series_instance_uid"),
    ("SOPInstanceUID", "sop_instance_uid"),
    ("SOPClassUID", "sop_class_uid"),
)


def identity_of(ds: Dataset, transfer_syntax_uid: str) -> InstanceIdentity:
    """The validated UIDs of a dataset; raises InvalidObject naming what is missing or bad."""
    values: dict[str, str] = {}
    for keyword, field in _REQUIRED:
        raw = ds.get(keyword)
        if raw is None or str(raw).strip() == "":
            raise InvalidObject(f"the dataset has no {keyword}")
        try:
            values[field] = validate_uid(str(raw).strip().rstrip("\0"), keyword)
        except InvalidUID as exc:
            raise InvalidObject(str(exc)) from exc
    try:
        values["transfer_syntax_uid"] = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
    except InvalidUID as exc:
        raise InvalidObject(str(exc)) from exc
    return InstanceIdentity(**values)


def parse_header(data: bytes | BinaryIO) -> Dataset:
    """Parse a DICOM Part 10 object up to its pixel data; raises InvalidObject."""
    stream = BytesIO(data) if isinstance(data, bytes) else data
    try:
        return pydicom.dcmread(stream, stop_before_pixels=True)
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidObject(f"not a readable DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidObject(f"malformed DICOM object: {type(exc).__name__}: {exc}") from exc


def identity_of_file_bytes(data: bytes) -> InstanceIdentity:
    """Identity of a Part 10 file (preamble, meta, dataset) held in memory."""
    ds = parse_header(data)
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not syntax:
        raise InvalidObject("the object has no file meta TransferSyntaxUID")
    return identity_of(ds, syntax)


@dataclass
class DurableReceiver:
    """Spool + received event, durable before returning."""

    spool: BlobStore
    bus: EventBus
    max_object_bytes: int

    def __post_init__(self) -> None:
        self._producer: Producer = self.bus.producer()
        self._topic = self.bus.topic(Topic.RECEIVED)

    def receive(self, data: bytes, identity: InstanceIdentity, source: Source) -> ObjectReceived:
        """Make one Part 10 object durable and announce it. Raises IngestError subclasses."""
        if len(data) > self.max_object_bytes:
            raise ObjectTooLarge(
                f"object of {len(data)} bytes exceeds the limit of {self.max_object_bytes} bytes"
            )
        now = datetime.now(UTC)
        # The spool key is generated, never taken from the dataset.
        key = f"{now:%Y%m%d}/{now:%H}/{uuid.uuid4().hex}.dcm"
        try:
            ref = self.spool.put(Namespace.SPOOL, key, data)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write to the spool: {exc.strerror or exc}") from exc
        event = ObjectReceived(identity=identity, blob=ref, source=source, received_at=now)
        try:
            self._producer.publish_many(
                [OutgoingRecord(self._topic, identity.study_instance_uid, encode_event(event))]
            )
        except BackendUnavailable as exc:
            self.spool.delete(Namespace.SPOOL, key)
            raise StorageUnavailable(f"the event bus did not confirm the object: {exc}") from exc
        return event

    def receive_file_bytes(self, data: bytes, source: Source) -> ObjectReceived:
        return self.receive(data, identity_of_file_bytes(data), source)

    def close(self) -> None:
        self._producer.close()
