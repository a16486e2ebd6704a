"""The search index: write (the index processor) and query (QIDO-RS, C-FIND, /api/search).

`StudyIndex` is the interface, `open_index` builds the configured one, `parse_lucene` and
`qido_to_query` turn user queries into the `Query` AST that every back end runs.
"""

from dicomflow.indexer.base import (
    InstanceRecord,
    SearchRequest,
    SearchResult,
    SortKey,
    StudyIndex,
    flatten,
)
from dicomflow.indexer.exceptions import IndexerError, InvalidQuery
from dicomflow.indexer.factory import open_index
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import Query, parse_lucene, qido_to_query

__all__ = [
    "IndexerError",
    "InstanceRecord",
    "InvalidQuery",
    "Level",
    "Query",
    "SearchRequest",
    "SearchResult",
    "SortKey",
    "StudyIndex",
    "flatten",
    "open_index",
    "parse_lucene",
    "qido_to_query",
]
