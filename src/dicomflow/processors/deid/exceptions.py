"""Errors of the de-identification engine."""

from dicomflow.processors.exceptions import ProcessorError


class DeidentificationError(ProcessorError, ValueError):
    """An object cannot be de-identified (unreadable, or lacking the UIDs that key it)."""
