"""The blob store: interface and implementations (filesystem, S3)."""

from dicomflow.kernel.blobs.base import DICOM_CONTENT_TYPE, BlobStore, InvalidBlobKey, check_key

__all__ = ["DICOM_CONTENT_TYPE", "BlobStore", "InvalidBlobKey", "check_key"]
