"""Errors of the serving side (DICOMweb, query/retrieve DIMSE services, administration)."""

from dicomflow.exceptions import DicomflowError


class ApiError(DicomflowError):
    """Base class of the serving side's errors."""


class IdentifierError(ApiError, ValueError):
    """A C-FIND, C-MOVE or C-GET identifier that cannot be answered.

    `status` is the DIMSE failure status to answer with (0xA900: the identifier does not match
    the information model; 0xC000: unable to process, e.g. a malformed value), `offending` the
    tags of the elements at fault, when known.
    """

    def __init__(self, message: str, status: int = 0xA900, offending: tuple[int, ...] = ()):
        super().__init__(message)
        self.status = status
        self.offending = offending


class InvalidDestination(ApiError, ValueError):
    """A C-MOVE destination that is not ``AET@host:port`` with a valid AE title and port."""


class DestinationConflict(ApiError):
    """A destination that exists already, or that only the configuration can change."""


class NotAcceptable(ApiError):
    """No representation that the client accepts can be made of the resource (HTTP 406)."""


class PixelDataError(ApiError):
    """Pixel data that cannot be read, decoded or rendered (no decoder, corrupt, no pixels)."""
