"""A minimal processor plugin: writes each instance's DICOM JSON to ``<data_dir>/json-export``.

It shows the whole contract: a Processor subclass with a name and the topics it consumes, an
idempotent `handle` (one file per namespace and SOP Instance UID, overwritten on re-delivery),
and a `register_processors` hook implementation found through the entry point in pyproject.
"""

from typing import ClassVar

from dicomflow.kernel.blobs.filesystem import write_durably
from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.events import MetadataExtracted, Topic, decode_event
from dicomflow.kernel.uids import validate_uid
from dicomflow.processors.base import Processor
from dicomflow.processors.hookspecs import hookimpl


class JsonExportProcessor(Processor):
    name = "json-export"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.METADATA,)
    description = "Example plugin: exports each instance's DICOM JSON as a file."

    def handle(self, record: Record) -> list[OutgoingRecord]:
        event = decode_event(record.value, MetadataExtracted)
        sop = validate_uid(event.identity.sop_instance_uid, "SOPInstanceUID")
        target = self.context.settings.data_dir / "json-export" / event.namespace / f"{sop}.json"
        write_durably(target, event.model_dump_json(include={"identity", "dicom_json"}).encode())
        return []


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [JsonExportProcessor]
