"""The embedded blob store: one file per object under ``<data_dir>/blobs/<namespace>/``.

A write goes to a temporary file in the target folder, is fsync'd, renamed over the final
name and the folder fsync'd, so a reader sees either nothing or the whole object, even after
a crash. Concurrent writers in one folder share their folder fsyncs (group commit): each
still returns only after a fsync of the folder that began after its own rename.

Inside a `batch()` block the fsyncs are deferred: objects are written (or linked) and renamed
into place, and the block's end makes them all durable at once with one `syncfs` of the file
system (Linux; elsewhere a fsync per file and per folder). A processor batch of N objects then
costs one journal commit instead of 4N fsyncs. `put_from` a filesystem store on the same file
system (the spool) hard-links the already-durable object instead of writing it again.

The SHA-256 is kept in a side file so that `stat` needs no full read. Not in the spool: a
spool object is only ever reached through the event that announced it, which carries its
SHA-256 (claim check), so the side file would cost two more fsyncs on the acknowledgement path
for nothing; `stat` of a spool object reads it instead.
"""

import contextlib
import ctypes
import errno
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomflow.kernel.blobs.base import BlobStore, check_key, sha256_of
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BlobNotFound

_SUM_SUFFIX = ".sha256"
# A full disk is the store's condition, not the object's: the write is retried once space is
# freed (a processor must not dead-letter an acknowledged object for it).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# link(2) failures that only mean "copy instead": another file system, no hard links there.
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


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


def sync_files(root: Path, files: Sequence[Path]) -> None:
    """Make `files` (written or linked under `root` without fsync) and their names durable."""
    if _SYNCFS is not None:
        # One journal commit and one cache flush for the whole batch; since Linux 5.8 syncfs
        # reports writeback errors of the file system, so a failed write is not missed.
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            os.close(fd)
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in sorted({path.parent for path in files}):
        fsync_dir(folder)


def _write_unsynced(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, not yet durable (see `sync_files`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link(source: Path, path: Path) -> bool:
    """Atomically replace `path` with a hard link to `source`; False if links cannot be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno in _CANNOT_LINK:
            return False
        raise
    try:
        os.replace(tmp, path)
    finally:
        # rename(2) does nothing when both names already link one file (a redelivered
        # event): then `tmp` is still there.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


class _Deferred(threading.local):
    """The open `batch()` of one thread: its depth and the files it has to make durable."""

    def __init__(self) -> None:
        self.depth = 0
        self.paths: list[Path] = []


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
        self._deferred = _Deferred()

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
        with self._disk_full_is_transient():
            self._write_checksum(namespace, path, digest)
            self._write(path, data)
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=digest)

    def put_from(self, namespace: Namespace, key: str, source: BlobStore, ref: BlobRef) -> BlobRef:
        source_path = (
            source.local_path(ref.namespace, ref.key)
            if isinstance(source, FilesystemBlobStore)
            else None
        )
        if source_path is None:
            return super().put_from(namespace, key, source, ref)
        data = source.get_verified(ref)
        path = self._path(namespace, key)
        with self._disk_full_is_transient():
            self._write_checksum(namespace, path, ref.sha256)
            if not _link(source_path, path):
                self._write(path, data)
            elif self._deferred.depth:
                self._deferred.paths.append(path)
            else:
                # The source's bytes may be waiting for another thread's batch sync.
                sync_files(self.root, [path])
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=ref.sha256)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        state = self._deferred
        state.depth += 1
        try:
            yield
        except BaseException:
            state.depth -= 1
            if not state.depth:
                # Nothing refers to these objects yet; a retried batch writes them again.
                state.paths.clear()
            raise
        state.depth -= 1
        if state.depth or not state.paths:
            return
        paths, state.paths = state.paths, []
        try:
            sync_files(self.root, paths)
        except OSError as exc:
            raise BackendUnavailable(
                f"could not make {len(paths)} objects durable under {self.root}: "
                f"{exc.strerror or exc}"
            ) from exc

    def _write_checksum(self, namespace: Namespace, path: Path, digest: str) -> None:
        if Namespace(namespace) is not Namespace.SPOOL:
            # The checksum file goes first: a crash between the two leaves an absent object
            # with a stale side file, never an object whose recorded checksum is missing.
            self._write(path.with_name(path.name + _SUM_SUFFIX), digest.encode())

    def _write(self, path: Path, data: bytes) -> None:
        if self._deferred.depth:
            _write_unsynced(path, data)
            self._deferred.paths.append(path)
        else:
            write_durably(path, data)

    @contextlib.contextmanager
    def _disk_full_is_transient(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise BackendUnavailable(
                    f"disk full ({exc.strerror}) under {self.root}; free some space"
                ) from exc
            raise

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
