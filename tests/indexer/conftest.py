"""Fixtures of the index tests: the archive's events and every index implementation."""

import copy
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from index_archive import INDEX_FACTORIES, Archive, IndexFactory, build_archive

from dicomflow.indexer.base import StudyIndex
from dicomflow.kernel.events import MetadataExtracted
from tests.conftest import service_setting


@pytest.fixture(scope="session")
def pristine_archive() -> Archive:
    return build_archive()


@pytest.fixture
def archive(pristine_archive: Archive) -> Archive:
    """The archive, a copy per test: tests change its datasets (``Dataset.copy()`` is shallow,
    so setting an attribute on a copy changes the original's element too)."""
    return copy.deepcopy(pristine_archive)


@pytest.fixture(scope="session")
def archive_events(pristine_archive: Archive) -> list[MetadataExtracted]:
    return pristine_archive.events()


@pytest.fixture
def elasticsearch_factory() -> Iterator[IndexFactory]:
    """Elasticsearch indices under a prefix of their own per test (and per path), deleted after.

    The same path gives the same prefix, so that two handles share the same indices as two
    handles on the same embedded directory do.
    """
    url = service_setting("DICOMFLOW_ELASTICSEARCH_URL")
    from dicomflow.indexer.elasticsearch import ElasticsearchStudyIndex

    run = uuid.uuid4().hex[:8]
    opened: list[ElasticsearchStudyIndex] = []

    def factory(path: Path) -> StudyIndex:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:6]
        index = ElasticsearchStudyIndex(url, prefix=f"dicomflow-test-{run}-{digest}")
        opened.append(index)
        return index

    yield factory
    for prefix in sorted({index.prefix for index in opened}):
        cleanup = ElasticsearchStudyIndex(url, prefix=prefix)
        try:
            cleanup.uninstall()
        finally:
            cleanup.close()


@pytest.fixture(
    params=[
        *sorted(INDEX_FACTORIES),
        pytest.param("elasticsearch", marks=pytest.mark.integration),
    ]
)
def index_factory(request: pytest.FixtureRequest) -> IndexFactory:
    if request.param == "elasticsearch":
        es_factory: IndexFactory = request.getfixturevalue("elasticsearch_factory")
        return es_factory
    factory: IndexFactory = INDEX_FACTORIES[request.param]
    return factory


@pytest.fixture
def index(index_factory: IndexFactory, tmp_path: Path) -> Iterator[StudyIndex]:
    opened = index_factory(tmp_path / "index")
    yield opened
    opened.close()


@pytest.fixture
def loaded(index: StudyIndex, archive_events: list[MetadataExtracted]) -> StudyIndex:
    """The index with the whole archive in it (original namespace)."""
    index.upsert(archive_events)
    return index
