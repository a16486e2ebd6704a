"""dicomflow: a DICOM archive built as an event-driven streaming pipeline."""

__version__ = "0.1.0"
