"""A ZIP archive of stored objects, streamed: written entry by entry as it is sent.

Entries are stored (DICOM pixel data compresses poorly and deflating costs CPU per download),
each file is read in chunks when the blob store has a local copy, and the archive is never
held whole in memory or on disk. An object that vanished from the blob store is left out and
named in a ``MISSING.txt`` entry at the end, since the HTTP status is sent by then.
"""

import io
import logging
import os
import time
import zipfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dicomflow.indexer.base import InstanceRecord
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.exceptions import BlobNotFound

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_ZIP64_THRESHOLD = (1 << 31) - 1


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file that hands what was written to the generator."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.pending += len(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


def entry_name(record: InstanceRecord) -> str:
    """``<study>/<series>/<sop>.dcm`` (UIDs only: safe in every file system)."""
    return f"{record.study_uid}/{record.series_uid}/{record.sop_uid}.dcm"


def _open(blobs: BlobStore, record: InstanceRecord) -> tuple[int, BinaryIO]:
    """The size of an object and a stream of it (the local file when there is one)."""
    path = blobs.local_path(record.blob.namespace, record.blob.key)
    if path is not None:
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"{record.blob.namespace}/{record.blob.key} is missing") from None
        return os.fstat(stream.fileno()).st_size, stream
    data = blobs.get(record.blob.namespace, record.blob.key)
    return len(data), io.BytesIO(data)


def zip_objects(blobs: BlobStore, records: Iterable[InstanceRecord]) -> Iterator[bytes]:
    """The bytes of a ZIP archive of `records`' objects, in pieces of about a megabyte."""
    sink = _Sink()
    missing: list[str] = []
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for record in records:
            try:
                size, stream = _open(blobs, record)
            except BlobNotFound as exc:
                log.warning("zip download: %s left out: %s", record.sop_uid, exc)
                missing.append(record.sop_uid)
                continue
            info = zipfile.ZipInfo(entry_name(record), date_time=stamp)
            info.compress_type = zipfile.ZIP_STORED
            with stream, archive.open(info, "w", force_zip64=size > _ZIP64_THRESHOLD) as entry:
                while chunk := stream.read(CHUNK):
                    entry.write(chunk)
                    if sink.pending >= CHUNK:
                        yield sink.drain()
            if sink.pending:
                yield sink.drain()
        if missing:
            archive.writestr(
                zipfile.ZipInfo("MISSING.txt", date_time=stamp),
                "These objects are indexed but were not found in the blob store:\n"
                + "\n".join(missing)
                + "\n",
            )
    yield sink.drain()
