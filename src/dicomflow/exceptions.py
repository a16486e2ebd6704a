"""The one exception root of dicomflow; each package derives its own errors from it."""


class DicomflowError(Exception):
    """Base class of every error that dicomflow raises on purpose."""
