"""Errors of processors."""

from dicomflow.exceptions import DicomflowError


class ProcessorError(DicomflowError):
    """Base class of processor errors."""


class PoisonEvent(ProcessorError):
    """This event can never be processed (malformed payload, unreadable object...).

    The runtime sends it to the dead-letter topic with this message as the reason and moves on.
    """


class PluginError(ProcessorError):
    """A plugin could not be loaded or registered a bad processor."""
