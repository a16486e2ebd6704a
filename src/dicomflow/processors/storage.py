"""The storage processor: moves each received object from the spool into the blob store.

The original is stored byte for byte under a key built from validated UIDs
(``<study>/<series>/<sop>.dcm`` in the ``original`` namespace), then announced on the
``stored`` topic, which the metadata and de-identification processors consume. The spool copy
is freed only after that announcement is durable and the offset committed.
"""

import logging
from collections.abc import Sequence

from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.events import (
    SPOOL_BOOT_HEADER,
    BlobRef,
    Namespace,
    ObjectReceived,
    ObjectStored,
    Topic,
    decode_event,
    encode_event,
)
from dicomflow.kernel.exceptions import BlobNotFound, ChecksumMismatch, InvalidUID
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.base import Processor, ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.hookspecs import hookimpl

log = logging.getLogger(__name__)


class StorageProcessor(Processor):
    name = "storage"
    topics = (Topic.RECEIVED,)
    description = "Stores each received original in the blob store, keyed by its UIDs."
    batch_size = 64  # a link and its checksum attribute each, one sync for all

    def __init__(self, context: ProcessorContext) -> None:
        super().__init__(context)
        self._boot_id = context.spool.page_cache_boot_id()

    def handle(self, record: Record) -> list[OutgoingRecord]:
        try:
            event = decode_event(record.value, ObjectReceived)
        except ValueError as exc:
            raise PoisonEvent(f"not an ObjectReceived event: {exc}") from exc
        identity = event.identity
        try:
            key = instance_key(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
        except InvalidUID as exc:
            raise PoisonEvent(str(exc)) from exc
        # Written whole before its record, in this boot: the spool copy needs no re-read.
        whole = self._boot_id is not None and record.headers.get(SPOOL_BOOT_HEADER) == self._boot_id
        stored = self._store(event, key, verify=not whole)
        if stored is None:
            return []
        out = ObjectStored(
            identity=identity,
            blob=stored,
            source=event.source,
            received_at=event.received_at,
        )
        return [
            OutgoingRecord(
                self.context.topic(Topic.STORED), identity.study_instance_uid, encode_event(out)
            )
        ]

    def _store(self, event: ObjectReceived, key: str, verify: bool) -> BlobRef | None:
        try:
            # On one file system this links the spool's durable copy instead of writing it again.
            return self.context.blobs.put_from(
                Namespace.ORIGINAL, key, self.context.spool, event.blob, verify=verify
            )
        except BlobNotFound:
            # Re-delivery after the spool copy was freed: the original is already stored.
            existing = self.context.blobs.stat(Namespace.ORIGINAL, key)
            if existing is not None and existing.sha256 == event.blob.sha256:
                return existing
            if existing is not None:
                log.info("%s: superseded by a later copy of the same instance", key)
                return None
            raise PoisonEvent(
                f"spool object {event.blob.key} of {event.identity.sop_instance_uid} is missing"
            ) from None
        except ChecksumMismatch as exc:
            raise PoisonEvent(f"spool object is corrupt: {exc}") from exc

    def after_commit(self, records: Sequence[Record]) -> None:
        for record in records:
            try:
                event = decode_event(record.value, ObjectReceived)
            except ValueError:
                continue
            self.context.spool.delete(Namespace.SPOOL, event.blob.key)


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [StorageProcessor]
