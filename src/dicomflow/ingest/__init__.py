"""Edges that receive objects: the DICOM SCP, STOW-RS and bulk import."""
