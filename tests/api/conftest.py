"""Fixtures of the serving side: an archive filled directly (blob store + index, no pipeline),
the SCP with the query/retrieve services on a free port, and the HTTP app on the same data."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom.transport import ThreadedAssociationServer

from dicomflow.api.app import create_app
from dicomflow.api.dimse import QueryRetrieveService
from dicomflow.indexer import StudyIndex, open_index
from dicomflow.ingest.access import AccessGuard, AccessPolicy
from dicomflow.ingest.audit import DimseAudit
from dicomflow.ingest.receiver import DurableReceiver, identity_of_file_bytes
from dicomflow.ingest.scp import start_scp
from dicomflow.kernel.backends import open_blob_store, open_bus, open_spool
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.events import MetadataExtracted, Namespace, Source, SourceKind
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.metadata import read_metadata
from tests.conftest import ADMIN_HEADERS


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Archive:
    """Stored originals and their index entries, written as the pipeline would write them."""

    settings: Settings
    index: StudyIndex
    blobs: BlobStore
    stored: dict[str, bytes] = field(default_factory=dict)

    def add(self, datasets: Iterable[Dataset]) -> list[Dataset]:
        added = list(datasets)
        events = []
        for ds in added:
            data = part10(ds)
            identity = identity_of_file_bytes(data)
            key = instance_key(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
            ref = self.blobs.put(Namespace.ORIGINAL, key, data)
            dicom_json, fields = read_metadata(data)
            events.append(
                MetadataExtracted(
                    identity=identity,
                    namespace=Namespace.ORIGINAL,
                    blob=ref,
                    source=Source(kind=SourceKind.IMPORT),
                    received_at=datetime.now(UTC),
                    dicom_json=dicom_json,
                    fields=fields,
                )
            )
            self.stored[identity.sop_instance_uid] = data
        self.index.upsert(events)
        return added


@contextmanager
def open_archive(settings: Settings) -> Iterator[Archive]:
    index = open_index(settings)
    blobs = open_blob_store(settings)
    try:
        yield Archive(settings, index, blobs)
    finally:
        index.close()
        blobs.close()


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    with open_archive(settings) as opened:
        yield opened


@dataclass
class QueryRetrieveSCP:
    settings: Settings
    service: QueryRetrieveService
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return self.settings.dicom_port


@contextmanager
def running_scp(
    archive: Archive,
    settings: Settings | None = None,
    audit: DimseAudit | None = None,
    index: StudyIndex | None = None,
) -> Iterator[QueryRetrieveSCP]:
    """The SCP with the query/retrieve services over `archive` (`settings` may add some),
    its access guard reporting refusals to `audit`; `index` stands in for the archive's."""
    settings = settings or archive.settings
    bus = open_bus(settings)
    receiver = DurableReceiver(open_spool(settings), bus, settings.max_object_bytes)
    guard = AccessGuard(
        AccessPolicy.from_settings(settings), on_denied=audit.denied if audit else None
    )
    service = QueryRetrieveService(
        settings, index=index or archive.index, blobs=archive.blobs, guard=guard, audit=audit
    )
    server = start_scp(settings, receiver, extensions=[service.extension()], guard=guard)
    try:
        yield QueryRetrieveSCP(settings, service, server)
    finally:
        server.shutdown()
        service.close()
        receiver.close()
        bus.close()


@pytest.fixture
def qr_scp(archive: Archive) -> Iterator[QueryRetrieveSCP]:
    with running_scp(archive) as scp:
        yield scp


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings), headers=ADMIN_HEADERS) as test_client:
        yield test_client
