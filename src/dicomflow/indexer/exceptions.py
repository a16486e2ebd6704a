"""Errors of the search index."""

from dicomflow.exceptions import DicomflowError


class IndexerError(DicomflowError):
    """Base class of the search index's errors."""


class InvalidQuery(IndexerError, ValueError):
    """A query that cannot be run: bad syntax, unknown attribute, malformed value.

    The message says what was wrong; HTTP edges answer it with 400, the C-FIND SCP with
    0xA900 (identifier does not match SOP class).
    """


class IndexBackendUnavailable(IndexerError):
    """The configured index back end is not part of this installation."""


class SearchTimeout(IndexerError):
    """The index did not answer within DICOMFLOW_QUERY_TIMEOUT (HTTP 503, C-FIND 0xA700)."""
