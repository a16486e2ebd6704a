"""Builds the configured search index: configuration chooses, code never does."""

import importlib
from typing import cast

from dicomflow.indexer.base import StudyIndex
from dicomflow.indexer.exceptions import IndexBackendUnavailable
from dicomflow.kernel.settings import IndexBackend, Settings

ELASTICSEARCH_MODULE = "dicomflow.indexer.elasticsearch"


def open_index(settings: Settings, *, writer: bool = False) -> StudyIndex:
    """The index of `settings.index`: embedded (SQLite under data_dir/index) or Elasticsearch.

    `writer` is for the index processor: the embedded index then keeps a larger page cache
    per connection (see `EmbeddedStudyIndex`).

    The Elasticsearch back end is `ElasticsearchStudyIndex(url, prefix=...)` in
    `dicomflow.indexer.elasticsearch`, imported only when configured.
    """
    if settings.index is IndexBackend.ELASTICSEARCH:
        try:
            module = importlib.import_module(ELASTICSEARCH_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != ELASTICSEARCH_MODULE:
                raise
            raise IndexBackendUnavailable(
                "DICOMFLOW_INDEX=elasticsearch, but this installation has no Elasticsearch "
                f"index back end ({ELASTICSEARCH_MODULE}); use DICOMFLOW_INDEX=embedded"
            ) from exc
        return cast(
            StudyIndex,
            module.ElasticsearchStudyIndex(
                settings.elasticsearch_url, prefix=settings.elasticsearch_prefix
            ),
        )
    from dicomflow.indexer.embedded import (
        READER_CACHE_BYTES,
        WRITER_CACHE_BYTES,
        EmbeddedStudyIndex,
    )

    cache = WRITER_CACHE_BYTES if writer else READER_CACHE_BYTES
    return EmbeddedStudyIndex(settings.data_dir / "index", cache_bytes=cache)
