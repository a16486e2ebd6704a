import json
from datetime import UTC, datetime
from pathlib import Path

from dicomflow_example_plugin import JsonExportProcessor

from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import Record
from dicomflow.kernel.bus.embedded import EmbeddedBus
from dicomflow.kernel.events import (
    BlobRef,
    InstanceIdentity,
    MetadataExtracted,
    Namespace,
    Source,
    SourceKind,
    encode_event,
)
from dicomflow.kernel.settings import Settings
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.plugins import plugin_manager, processor_classes


def test_the_plugin_is_discovered_through_its_entry_point() -> None:
    classes = processor_classes(plugin_manager(plugins="json_export"))
    assert classes["json-export"] is JsonExportProcessor
    assert {"storage", "metadata", "deidentify", "index"} <= set(classes)
    assert "json-export" not in processor_classes(plugin_manager(plugins="-"))


def test_the_plugin_exports_idempotently(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    context = ProcessorContext(
        settings=settings,
        bus=EmbeddedBus(tmp_path / "events"),
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        spool=FilesystemBlobStore(tmp_path / "spool"),
    )
    identity = InstanceIdentity(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    event = MetadataExtracted(
        identity=identity,
        namespace=Namespace.ORIGINAL,
        blob=BlobRef(namespace=Namespace.ORIGINAL, key="k.dcm", size=1, sha256="0" * 64),
        source=Source(kind=SourceKind.IMPORT),
        received_at=datetime.now(UTC),
        dicom_json={"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}},
    )
    record = Record("dicomflow.metadata", 0, 0, "1.2.3", encode_event(event), 0.0)
    processor = JsonExportProcessor(context)
    assert processor.handle(record) == []
    assert processor.handle(record) == []
    [written] = (tmp_path / "json-export" / "original").iterdir()
    assert json.loads(written.read_text())["dicom_json"]["00100010"]["vr"] == "PN"
