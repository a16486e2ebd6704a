"""The embedded blob store: one file per object under ``<data_dir>/blobs/<namespace>/``.

A write goes to a temporary file in the target folder, is fsync'd, renamed over the final
name and the folder fsync'd, so a reader sees either nothing or the whole object, even after
a crash. Concurrent writers in one folder share their folder fsyncs (group commit): each
still returns only after a fsync of the folder that began after its own rename.

The SHA-256 is kept in a side file so that `stat` needs no full read. Not in the spool: a
spool object is only ever reached through the event that announced it, which carries its
SHA-256 (claim check), so the side file would cost two more fsyncs on the acknowledgement path
for nothing; `stat` of a spool object reads it instead.
"""

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicomflow.kernel.blobs.base import BlobStore, check_key, sha256_of
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BlobNotFound

_SUM_SUFFIX = ".sha256"
# A full disk is the store's condition, not the object's: the write is retried once space is
# freed (a processor must not dead-letter an acknowledged object for it).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _FolderSync:
    requested: int = 0
    done: int = 0
    waiting: int = 0
    running: bool = False


class _GroupFolderSync:
    """Folder fsyncs shared by the threads of a process that renamed files into one folder."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._folders: dict[str, _FolderSync] = {}

    def sync(self, folder: Path) -> None:
        """Return once a fsync of `folder` that started after this call has completed."""
        key = str(folder)
        with self._cond:
            state = self._folders.setdefault(key, _FolderSync())
            state.requested += 1
            ticket = state.requested
            state.waiting += 1
            try:
                while state.done < ticket:
                    if state.running:
                        self._cond.wait()
                        continue
                    state.running = True
                    covered = state.requested  # every rename before now is in this fsync
                    self._cond.release()
                    try:
                        fsync_dir(folder)
                    finally:
                        self._cond.acquire()
                        state.running = False
                        self._cond.notify_all()
                    state.done = max(state.done, covered)
            finally:
                state.waiting -= 1
                if state.waiting == 0 and not state.running:
                    del self._folders[key]


_folder_sync = _GroupFolderSync()


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
    _folder_sync.sync(path.parent)


class FilesystemBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, namespace: Namespace, key: str) -> Path:
        # Lexical, not Path.resolve(): resolving stats every component of the path (a tenth of
        # the storage processor's time); check_key already allows no "." or ".." segment, so
        # the normalised path is the path, and the check below guards against a bug there.
        path = Path(os.path.normpath(self.root / Namespace(namespace).value / check_key(key)))
        if not path.is_relative_to(self.root):  # defence in depth behind check_key
            raise BlobNotFound(f"{key!r} is outside the blob store")
        return path

    def put(self, namespace: Namespace, key: str, data: bytes) -> BlobRef:
        path = self._path(namespace, key)
        digest = sha256_of(data)
        try:
            if Namespace(namespace) is not Namespace.SPOOL:
                # The checksum file goes first: a crash between the two leaves an absent object
                # with a stale side file, never an object whose recorded checksum is missing.
                write_durably(path.with_name(path.name + _SUM_SUFFIX), digest.encode())
            write_durably(path, data)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise BackendUnavailable(
                    f"disk full ({exc.strerror}) under {self.root}; free some space"
                ) from exc
            raise
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
            if Namespace(namespace) is Namespace.SPOOL:
                digest = sha256_of(path.read_bytes())
            else:
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
        # Walk only the folder the prefix names: listing a few keys under "a/b/" must not
        # read the names of every object of the namespace (millions, in an archive).
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.is_dir() or not start.resolve().is_relative_to(base.resolve()):
            return
        for path in sorted(start.rglob("*")):
            if path.is_file() and not path.name.endswith(_SUM_SUFFIX):
                if path.name.startswith(".tmp-"):
                    continue
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def local_path(self, namespace: Namespace, key: str) -> Path | None:
        path = self._path(namespace, key)
        return path if path.is_file() else None
