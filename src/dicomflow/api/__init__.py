"""The HTTP API: DICOMweb, free-text search, pipeline status and metrics."""
