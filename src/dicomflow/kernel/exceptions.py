"""Errors of the shared kernel: bus, blob store, settings, identifiers."""

from dicomflow.exceptions import DicomflowError


class KernelError(DicomflowError):
    """Base class of the kernel's errors."""


class InvalidUID(KernelError, ValueError):
    """A DICOM UID that is not a valid UID (digits and dots, at most 64 characters)."""


class BlobNotFound(KernelError, KeyError):
    """The blob store has no object under that namespace and key."""


class ChecksumMismatch(KernelError):
    """Stored bytes do not match the checksum recorded when they were written."""


class BackPressure(KernelError):
    """A back end is temporarily unable to take more work; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(KernelError):
    """A back end cannot be reached; the operation did not happen and may be retried."""


class MissingExtra(KernelError, ImportError):
    """An optional back end was configured but its Python package is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with `pip install dicomflow[{extra}]`"
        )
