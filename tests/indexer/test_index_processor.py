"""The index processor: a batching sink from the metadata topic into the configured index."""

from pathlib import Path

import pytest
from index_archive import event_of

from dicomflow.indexer import factory, open_index
from dicomflow.indexer.base import SearchRequest
from dicomflow.indexer.embedded import INDEX_FILE, EmbeddedStudyIndex
from dicomflow.indexer.exceptions import IndexBackendUnavailable
from dicomflow.indexer.levels import Level
from dicomflow.indexer.processor import INDEX_EXTRA, IndexProcessor, register_processors
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import Record
from dicomflow.kernel.bus.embedded import EmbeddedBus
from dicomflow.kernel.events import MetadataExtracted, Namespace, Topic, encode_event
from dicomflow.kernel.settings import IndexBackend, Settings
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.runtime import ProcessorRunner, dead_letter_topic, group_name
from dicomflow.synthetic import PatientSpec, make_instance


def context_for(tmp_path: Path, **extras: object) -> ProcessorContext:
    return ProcessorContext(
        settings=Settings(data_dir=tmp_path / "data"),
        bus=EmbeddedBus(tmp_path / "events"),
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        spool=FilesystemBlobStore(tmp_path / "spool"),
        extras=dict(extras),
    )


def record_of(value: bytes, offset: int = 0) -> Record:
    return Record(
        topic="dicomflow.metadata", partition=0, offset=offset, key="k", value=value, timestamp=0
    )


def events(count: int, patient_id: str = "P1") -> list[MetadataExtracted]:
    patient = PatientSpec(name="DOE^JOHN", patient_id=patient_id)
    return [event_of(make_instance(patient, 0, 0, i, rows=4, columns=4)) for i in range(count)]


def test_a_batch_is_indexed_and_poison_records_fail_alone(tmp_path: Path) -> None:
    processor = IndexProcessor(context_for(tmp_path))
    good = [record_of(encode_event(e), i) for i, e in enumerate(events(3))]
    bad_uid = events(1, "P2")[0].model_copy(
        update={"identity": events(1)[0].identity.model_copy(update={"sop_instance_uid": "1.02"})}
    )
    bad = [record_of(b"{truncated", 3), record_of(encode_event(bad_uid), 4)]
    result = processor.handle_batch([*good[:2], *bad, good[2]])
    assert result.publish == []
    assert [record.offset for record, _ in result.failed] == [3, 4]
    assert all(isinstance(exc, PoisonEvent) for _, exc in result.failed)
    assert "not a MetadataExtracted event" in str(result.failed[0][1])
    assert "SOPInstanceUID '1.02' is not a valid UID" in str(result.failed[1][1])
    assert processor.index.counts(Namespace.ORIGINAL)[Level.INSTANCE] == 3
    processor.close()
    assert (tmp_path / "data" / "index" / INDEX_FILE).is_file()


def test_handle_indexes_one_record(tmp_path: Path) -> None:
    index = EmbeddedStudyIndex(tmp_path / "shared")
    processor = IndexProcessor(context_for(tmp_path, **{INDEX_EXTRA: index}))
    assert processor.index is index
    assert processor.handle(record_of(encode_event(events(1)[0]))) == []
    with pytest.raises(PoisonEvent):
        processor.handle(record_of(b"[]"))
    processor.close()  # a shared index stays open for its owner
    assert index.counts(Namespace.ORIGINAL)[Level.INSTANCE] == 1
    index.close()


def test_runs_in_the_runtime_from_the_metadata_topic(tmp_path: Path) -> None:
    context = context_for(tmp_path)
    topic = context.topic(Topic.METADATA)
    producer = context.bus.producer()
    for event in events(5):
        producer.publish(topic, event.identity.study_instance_uid, encode_event(event))
    producer.publish(topic, "x", b"poison")
    processor = IndexProcessor(context)
    consumer = context.bus.consumer(group_name("dicomflow", processor.name), [topic])
    runner = ProcessorRunner(processor, consumer, producer, dead_letter_topic("dicomflow"))
    assert runner.step(timeout=1) == 6
    index = open_index(context.settings)
    result = index.search(SearchRequest(namespace=Namespace.ORIGINAL, level=Level.INSTANCE))
    assert result.total == 5
    assert len(context.bus.read(context.bus.topic(Topic.DEAD_LETTER))) == 1
    index.close()
    processor.close()


def test_open_index_names_a_missing_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(factory, "ELASTICSEARCH_MODULE", "dicomflow.indexer.not_installed")
    settings = Settings(data_dir=tmp_path, index=IndexBackend.ELASTICSEARCH)
    with pytest.raises(IndexBackendUnavailable, match="DICOMFLOW_INDEX=embedded"):
        open_index(settings)


def test_registered_through_the_hook() -> None:
    assert register_processors() == [IndexProcessor]
    assert IndexProcessor.topics == (Topic.METADATA,)
