"""The index processor: a batching sink from the metadata topic into the search index."""

from collections.abc import Sequence

from pydantic import ValidationError

from dicomflow.indexer.base import StudyIndex
from dicomflow.indexer.factory import open_index
from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.events import MetadataExtracted, Topic, decode_event
from dicomflow.kernel.uids import is_valid_uid
from dicomflow.processors.base import BatchResult, Processor, ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.hookspecs import hookimpl

INDEX_EXTRA = "index"
"""Key of `ProcessorContext.extras` under which a runtime may hand over an open index."""


def _decode(record: Record) -> MetadataExtracted:
    try:
        event = decode_event(record.value, MetadataExtracted)
    except ValidationError as exc:
        raise PoisonEvent(f"not a MetadataExtracted event: {exc}") from exc
    identity = event.identity
    for name, uid in (
        ("StudyInstanceUID", identity.study_instance_uid),
        ("SeriesInstanceUID", identity.series_instance_uid),
        ("SOPInstanceUID", identity.sop_instance_uid),
    ):
        if not is_valid_uid(uid):
            raise PoisonEvent(f"{name} {uid[:80]!r} is not a valid UID")
    return event


class IndexProcessor(Processor):
    """Writes every batch of metadata events into the search index in one transaction."""

    name = "index"
    topics = (Topic.METADATA,)
    description = "Makes every object searchable (QIDO-RS, C-FIND, /api/search)."
    batch_size = 500  # one bulk write per batch; well under a millisecond per document

    def __init__(self, context: ProcessorContext) -> None:
        super().__init__(context)
        shared = context.extras.get(INDEX_EXTRA)
        self._owns_index = not isinstance(shared, StudyIndex)
        self.index = (
            shared if isinstance(shared, StudyIndex) else open_index(context.settings, writer=True)
        )

    def handle(self, record: Record) -> list[OutgoingRecord]:
        self.index.upsert([_decode(record)])
        return []

    def handle_batch(self, records: Sequence[Record]) -> BatchResult:
        """One upsert for the whole batch; undecodable records fail alone.

        Should the upsert fail for another reason than a transient one, the runtime retries
        the records one by one, so that only the bad one is dead-lettered.
        """
        result = BatchResult()
        events: list[MetadataExtracted] = []
        for record in records:
            try:
                events.append(_decode(record))
            except PoisonEvent as exc:
                result.failed.append((record, exc))
        if events:
            self.index.upsert(events)
        return result

    def close(self) -> None:
        if self._owns_index:
            self.index.close()


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [IndexProcessor]
