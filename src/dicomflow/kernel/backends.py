"""Builds the configured bus and blob store: configuration chooses, code never does."""

from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.settings import BlobBackend, BusBackend, Settings


def open_bus(settings: Settings) -> EventBus:
    if settings.bus is BusBackend.KAFKA:
        from dicomflow.kernel.bus.kafka import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            partitions=settings.kafka_partitions,
        )
    from dicomflow.kernel.bus.embedded import EmbeddedBus

    return EmbeddedBus(settings.data_dir / "events", topic_prefix=settings.topic_prefix)


def open_blob_store(settings: Settings, backend: BlobBackend | None = None) -> BlobStore:
    if (backend or settings.blobs) is BlobBackend.S3:
        from dicomflow.kernel.blobs.s3 import S3BlobStore

        return S3BlobStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            bucket_prefix=settings.s3_bucket_prefix,
        )
    from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore

    return FilesystemBlobStore(settings.data_dir / "blobs")


def open_spool(settings: Settings) -> BlobStore:
    """The spool: by default local disk next to the ingest edge, whatever the blob store is.

    Then acknowledging an object needs only the local disk and the bus, not the blob store.
    """
    if settings.spool is BlobBackend.S3:
        return open_blob_store(settings, BlobBackend.S3)
    from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore

    return FilesystemBlobStore(settings.data_dir / "spool")
