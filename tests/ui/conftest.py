"""Fixtures of the web UI tests: an archive written as the pipeline writes it (blob store,
index, and the events on the bus), and the HTTP app on the same data directory."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from dicomflow.api.app import create_app
from dicomflow.indexer import StudyIndex, open_index
from dicomflow.ingest.receiver import identity_of_file_bytes
from dicomflow.kernel.backends import open_blob_store, open_bus
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.events import (
    BlobRef,
    MetadataExtracted,
    Namespace,
    ObjectReceived,
    ObjectStored,
    Source,
    SourceKind,
    Topic,
    encode_event,
)
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.metadata import read_metadata
from dicomflow.synthetic import iter_study_tree
from tests.conftest import ADMIN_HEADERS


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Archive:
    """Objects stored and indexed directly, with the events the pipeline would have logged."""

    settings: Settings
    index: StudyIndex
    blobs: BlobStore
    bus: EventBus
    stored: dict[str, bytes] = field(default_factory=dict)
    datasets: list[Dataset] = field(default_factory=list)

    def add(
        self,
        datasets: Iterable[Dataset],
        namespace: Namespace = Namespace.ORIGINAL,
        calling_ae: str = "MODALITY1",
    ) -> list[Dataset]:
        added = list(datasets)
        events: list[MetadataExtracted] = []
        producer = self.bus.producer()
        for ds in added:
            data = part10(ds)
            identity = identity_of_file_bytes(data)
            key = instance_key(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
            ref = self.blobs.put(namespace, key, data)
            source = Source(kind=SourceKind.DIMSE, calling_ae=calling_ae, address="127.0.0.1")
            now = datetime.now(UTC)
            spool = BlobRef(namespace=Namespace.SPOOL, key=key, size=ref.size, sha256=ref.sha256)
            received = ObjectReceived(identity=identity, blob=spool, source=source)
            stored = ObjectStored(identity=identity, blob=ref, source=source, received_at=now)
            dicom_json, fields = read_metadata(data)
            event = MetadataExtracted(
                identity=identity,
                namespace=namespace,
                blob=ref,
                source=source,
                received_at=now,
                dicom_json=dicom_json,
                fields=fields,
            )
            key = identity.study_instance_uid
            if namespace is Namespace.ORIGINAL:
                producer.publish(self.bus.topic(Topic.RECEIVED), key, encode_event(received))
                producer.publish(self.bus.topic(Topic.STORED), key, encode_event(stored))
            else:
                producer.publish(self.bus.topic(Topic.DEIDENTIFIED), key, encode_event(stored))
            producer.publish(self.bus.topic(Topic.METADATA), key, encode_event(event))
            events.append(event)
            self.stored[identity.sop_instance_uid] = data
        self.index.upsert(events)
        self.datasets.extend(added)
        return added


@contextmanager
def open_archive(settings: Settings) -> Iterator[Archive]:
    index = open_index(settings)
    blobs = open_blob_store(settings)
    bus = open_bus(settings)
    try:
        yield Archive(settings, index, blobs, bus)
    finally:
        index.close()
        blobs.close()
        bus.close()


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    with open_archive(settings) as opened:
        yield opened


@pytest.fixture
def filled(archive: Archive) -> Archive:
    """Two patients, one study each, two series (CT and MR) of three instances."""
    archive.add(iter_study_tree(patients=2, series_per_study=2, instances_per_series=3))
    return archive


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings), headers=ADMIN_HEADERS) as test_client:
        yield test_client
