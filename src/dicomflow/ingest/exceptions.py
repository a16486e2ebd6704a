"""Errors of the ingest edges, each mapped to a DICOM status and an HTTP status."""

from dicomflow.exceptions import DicomflowError


class IngestError(DicomflowError):
    """Base class: an object was refused or could not be made durable."""

    dimse_status = 0xC000  # Error: cannot understand
    http_status = 400


class InvalidObject(IngestError):
    """The object is not valid DICOM, or lacks or mangles an identifying UID."""

    dimse_status = 0xC210  # Cannot understand
    http_status = 400


class ObjectTooLarge(IngestError):
    """The object exceeds DICOMFLOW_MAX_OBJECT_BYTES."""

    dimse_status = 0xA700  # Out of resources
    http_status = 413


class StorageUnavailable(IngestError):
    """The spool or the event bus could not make the object durable; nothing was acknowledged."""

    dimse_status = 0xA700  # Out of resources
    http_status = 503


class AccessConfigError(IngestError, ValueError):
    """A DICOM access setting (AE allowlists, move destinations, TLS files) is malformed."""
