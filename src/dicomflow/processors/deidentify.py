"""The de-identification processor: an anonymised copy of every stored original.

It consumes ``stored``, skips everything but originals, applies the PS3.15 Basic Profile
(`dicomflow.processors.deid`) to the object's bytes, stores the result in the ``deidentified``
namespace under its pseudonymous UIDs, announces it on ``deidentified`` and publishes its
metadata on ``metadata`` (the metadata processor handles originals only). The output is a
pure function of the input and the settings, so a redelivered event overwrites the same blob.
"""

from collections.abc import Sequence

from pydantic import ValidationError

from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.events import (
    BlobRef,
    InstanceIdentity,
    Namespace,
    ObjectStored,
    Topic,
    decode_event,
    encode_event,
)
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.base import Processor, ProcessorContext
from dicomflow.processors.deid import (
    DeidentificationError,
    DeidentifyOptions,
    deidentify,
    deidentify_bytes,
    pseudonymous_uid,
)
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.hookspecs import hookimpl
from dicomflow.processors.metadata import metadata_record

__all__ = [
    "DeidentifyOptions",
    "DeidentifyProcessor",
    "deidentify",
    "deidentify_bytes",
    "pseudonymous_uid",
    "register_processors",
]


class DeidentifyProcessor(Processor):
    """Writes a de-identified copy of each original and publishes it on ``deidentified``."""

    name = "deidentify"
    topics = (Topic.STORED,)
    description = (
        "De-identified copy of every original (PS3.15 Basic Profile, keyed-hash pseudonyms)."
    )

    batch_size = 16  # a decode, the profile and an encode each: the costliest processor

    def __init__(self, context: ProcessorContext) -> None:
        super().__init__(context)
        self.options = DeidentifyOptions.from_settings(context.settings)
        self._done: list[BlobRef] = []  # read or written: dropped from the page cache

    def handle(self, record: Record) -> list[OutgoingRecord]:
        try:
            event = decode_event(record.value, ObjectStored)
        except ValidationError as exc:
            raise PoisonEvent(
                f"record at {record.topic}[{record.partition}]@{record.offset} is not an "
                f"object.stored event ({exc.error_count()} validation errors: "
                f"{exc.errors()[0]['msg']})"
            ) from exc
        if event.blob.namespace != Namespace.ORIGINAL:
            return []
        data = self.context.blobs.get_verified(event.blob)
        self._done.append(event.blob)
        try:
            result = deidentify_bytes(data, self.options)
        except DeidentificationError as exc:
            raise PoisonEvent(
                f"{event.blob.namespace}/{event.blob.key} "
                f"(SOP {event.identity.sop_instance_uid}): {exc}"
            ) from exc
        blob = self.context.blobs.put(
            Namespace.DEIDENTIFIED,
            instance_key(
                result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
            ),
            result.data,
        )
        self._done.append(blob)
        stored = ObjectStored(
            identity=InstanceIdentity(
                study_instance_uid=result.study_instance_uid,
                series_instance_uid=result.series_instance_uid,
                sop_instance_uid=result.sop_instance_uid,
                sop_class_uid=event.identity.sop_class_uid,
                transfer_syntax_uid=event.identity.transfer_syntax_uid,
            ),
            blob=blob,
            source=event.source,
            received_at=event.received_at,
            original_sop_instance_uid=event.identity.sop_instance_uid,
        )
        return [
            OutgoingRecord(
                topic=self.context.topic(Topic.DEIDENTIFIED),
                key=result.study_instance_uid,
                value=encode_event(stored),
            ),
            # The copy's metadata too: the metadata processor leaves copies to us, so that
            # the search path of the originals never waits for them.
            metadata_record(self.context, stored, result.data),
        ]

    def after_commit(self, records: Sequence[Record]) -> None:
        # As the metadata processor does with the originals. The copies are durable now
        # (clean pages can be dropped); they are read for exports and retrievals, not soon,
        # and their metadata went out from memory.
        done, self._done = self._done, []
        self.context.blobs.drop_cached(done)


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [DeidentifyProcessor]
