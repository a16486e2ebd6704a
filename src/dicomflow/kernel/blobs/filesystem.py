"""The embedded blob store: one file per object under ``<data_dir>/blobs/<namespace>/``.

A write goes to a temporary file in the target folder, is fsync'd, renamed over the final
name and the folder fsync'd, so a reader sees either nothing or the whole object, even after
a crash. The SHA-256 is kept in a side file so that `stat` needs no full read.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dicomflow.kernel.blobs.base import BlobStore, check_key, sha256_of
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BlobNotFound

_SUM_SUFFIX = ".sha256"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, fsync'd (file and folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class FilesystemBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, namespace: Namespace, key: str) -> Path:
        path = (self.root / Namespace(namespace).value / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # defence in depth behind check_key
            raise BlobNotFound(f"{key!r} is outside the blob store")
        return path

    def put(self, namespace: Namespace, key: str, data: bytes) -> BlobRef:
        path = self._path(namespace, key)
        digest = sha256_of(data)
        # The checksum file goes first: a crash between the two leaves an absent object with a
        # stale side file, never an object whose recorded checksum is missing.
        write_durably(path.with_name(path.name + _SUM_SUFFIX), digest.encode())
        write_durably(path, data)
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=digest)

    def get(self, namespace: Namespace, key: str) -> bytes:
        try:
            return self._path(namespace, key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"no object {namespace}/{key}") from None

    def stat(self, namespace: Namespace, key: str) -> BlobRef | None:
        path = self._path(namespace, key)
        try:
            size = path.stat().st_size
            digest = path.with_name(path.name + _SUM_SUFFIX).read_text().strip()
        except FileNotFoundError:
            return None
        return BlobRef(namespace=namespace, key=key, size=size, sha256=digest)

    def delete(self, namespace: Namespace, key: str) -> None:
        path = self._path(namespace, key)
        for victim in (path, path.with_name(path.name + _SUM_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()

    def keys(self, namespace: Namespace, prefix: str = "") -> Iterator[str]:
        base = self.root / Namespace(namespace).value
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(_SUM_SUFFIX):
                if path.name.startswith(".tmp-"):
                    continue
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def local_path(self, namespace: Namespace, key: str) -> Path | None:
        path = self._path(namespace, key)
        return path if path.is_file() else None
