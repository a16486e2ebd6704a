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
`put_many` in the spool (bulk import) creates each object at its final name (spool keys are
generated, so no reader or other writer knows the name yet) and makes them all durable with one
`syncfs`; nothing announces them before it returns.

The SHA-256 is kept with the file, in its extended attribute ``user.dicomflow.sha256``, so that
`stat` needs no full read. It is set on the file before its name appears (on the temporary file
before the rename; on the spool's file before the link), so a name never shows without its
checksum, and it costs no file of its own: an earlier layout kept it in a side file
(``<name>.sha256``), which doubled the files of an archive and cost a file create per stored
object, the largest part of the storage processor's time on small objects. A file system
without user extended attributes gets the side file still, and `stat` reads either; an object
whose checksum was lost (copied without its attributes) is read and hashed. Not in the spool: a
spool object is only ever reached through the event that announced it, which carries its
SHA-256 (claim check); `stat` of a spool object reads it instead.
"""

import contextlib
import ctypes
import errno
import functools
import os
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomflow.kernel.blobs.base import BlobStore, check_key, new_key, sha256_of
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import (
    BackendUnavailable,
    BlobNotFound,
    ChecksumMismatch,
    KernelError,
)

_SUM_SUFFIX = ".sha256"
_SUM_ATTRIBUTE = "user.dicomflow.sha256"
# setxattr(2) refusals that mean "this file system keeps no user attributes": a side file then.
_NO_ATTRIBUTES = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
# A full disk is the store's condition, not the object's: the write is retried once space is
# freed (a processor must not dead-letter an acknowledged object for it).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# link(2) failures that only mean "copy instead": another file system, no hard links there.
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def reports_writeback_errors(release: str) -> bool:
    """Whether a Linux kernel's syncfs(2) reports writeback errors (5.8 and later).

    Before 5.8 it returned 0 even when the file system failed to write a file's data, so a
    sync that relied on it could call lost bytes durable: those kernels get fsync per file.
    """
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux") or not reports_writeback_errors(os.uname().release):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


@functools.cache
def kernel_boot_id() -> str | None:
    """This boot's ID (Linux: a random UUID per boot, shared by containers on the host)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


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


@dataclass
class _ErrorWatch:
    """A descriptor of the store's file system, opened before a batch's first write.

    syncfs reports the file system's writeback errors that its descriptor has not seen (Linux
    5.8+): one opened after the writes could miss an error that another process's syncfs saw
    first. First in a batch's `pending` list.
    """

    fd: int

    @classmethod
    def open(cls, root: Path) -> "_ErrorWatch":
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY))

    def close(self) -> None:
        os.close(self.fd)


def sync_files(root: Path, files: Sequence[Path], watch: _ErrorWatch | None = None) -> None:
    """Make `files` (written or linked under `root` without fsync) and their names durable.

    `watch`, opened before the files were written, is what syncfs reports errors through.
    """
    if _SYNCFS is not None:
        # One journal commit and one cache flush for the whole batch.
        through = watch or _ErrorWatch.open(root)
        try:
            if _SYNCFS(through.fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            if watch is None:
                through.close()
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in sorted({path.parent for path in files}):
        fsync_dir(folder)


def _link(source: Path, path: Path) -> bool:
    """Atomically replace `path` with a hard link to `source`; False if links cannot be made."""
    # A new name (nearly every object) is one link(2): its folder made only when missing,
    # no random temporary name, rename or failed unlink (5 system calls before, 1 now).
    try:
        os.link(source, path)
        return True
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _link_anew(source, path)
    except FileExistsError:
        return _link_anew(source, path)
    except OSError as exc:
        if exc.errno in _CANNOT_LINK:
            return False
        raise


def _link_anew(source: Path, path: Path) -> bool:
    """`_link` through a temporary name: replaces an existing `path` atomically."""
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


def _replace(
    path: Path, data: bytes, durable: bool, before_rename: Callable[[int], None] | None = None
) -> None:
    """Atomically replace `path` with `data` (a temporary name, then a rename); `durable`
    also fsyncs the data before the rename and the folder after it (else see `sync_files`).
    `before_rename` gets the temporary file's descriptor once the data is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if before_rename is not None:
                before_rename(handle.fileno())
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _folder_sync.sync(path.parent)


def drop_file_pages(fd: int) -> None:
    """Ask the kernel to drop the open file's clean pages from the page cache (advisory).

    Object files are written once and read a few times within seconds; left in the page cache
    they are as recent as the index's pages, and a bulk import of millions of them pushes the
    index out (study searches right after the bench's import of 1M instances: p95 59 ms
    before, 43 ms with this alone; docs/performance.md, change 23).
    Dirty pages are only queued for writeback, so call this once the file is durable. Call it
    for a batch of files at a time where possible: when a page is still in another CPU's
    per-CPU LRU list (a file another process has just written), the kernel drains the lists
    of every CPU first, which cost the metadata processor ~0.3 ms per object when done one
    object at a time.
    """
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no posix_fadvise here
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def drop_page_cache(path: Path) -> None:
    """`drop_file_pages` of the file at `path`, if it exists."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        drop_file_pages(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, fsync'd (file and folder)."""
    _replace(path, data, durable=True)


def _make_folder(folder: Path, created: set[Path]) -> None:
    """``mkdir -p`` that records the parent of each folder it creates (a new entry there)."""
    if folder.is_dir():
        return
    _make_folder(folder.parent, created)
    try:
        folder.mkdir()
    except FileExistsError:
        return
    created.add(folder.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int], object]:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` where the C library has it.

    It only starts the writeback of a file's dirty pages and guarantees nothing: the fsync
    that follows does (it also reports a writeback error of the range started here). Started
    for every file of a batch before the first fsync, the writes of the whole batch are
    issued together (and on a journalling file system their block allocations share a
    commit), so each fsync mostly finds its data written already: 64 files of 10 KB became
    durable 3-4x faster than with write + fsync file after file. Elsewhere: nothing.
    """
    if not sys.platform.startswith("linux"):
        return lambda fd: None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd: None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return lambda fd: function(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()
# Files of one batch open at once (written, then fsync'd).
_OPEN_FILES = 128
# Spool names prepared at a time (and kept ready) by each process's `_NamePool`.
_POOL_BATCH = 32


def write_many_durably(items: Sequence[tuple[Path, bytes]]) -> list[OSError | None]:
    """Write new files, each atomically and fsync'd, sharing the folder fsyncs.

    Each file is written to a temporary name and fsync'd (the writebacks of up to
    `_OPEN_FILES` files started before their fsyncs, see `_writeback_starter`); then all are
    renamed to their paths, and every folder that received a name (or a new subfolder) is
    fsync'd once. One result per item: None once the file is durable (bytes and name), else
    its error, and then nothing of it is left behind.
    """
    errors: list[OSError | None] = [None] * len(items)
    created: set[Path] = set()
    present: set[Path] = set()  # folders known to exist
    temps: dict[int, str] = {}  # position -> temporary name, until renamed
    try:
        for start in range(0, len(items), _OPEN_FILES):
            opened: list[tuple[int, int]] = []  # (position, fd)
            try:
                for position in range(start, min(start + _OPEN_FILES, len(items))):
                    path, data = items[position]
                    try:
                        if path.parent not in present:
                            _make_folder(path.parent, created)
                            present.add(path.parent)
                        fd, temps[position] = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
                        opened.append((position, fd))
                        _write_all(fd, data)
                        _start_writeback(fd)
                    except OSError as exc:
                        errors[position] = exc
                for position, fd in opened:
                    if errors[position] is None:
                        try:
                            os.fsync(fd)
                        except OSError as exc:
                            errors[position] = exc
            finally:
                for _, fd in opened:
                    os.close(fd)
        renamed: list[int] = []
        for position, temp in list(temps.items()):
            if errors[position] is not None:
                continue
            try:
                os.replace(temp, items[position][0])
            except OSError as exc:
                errors[position] = exc
                continue
            del temps[position]
            renamed.append(position)
        try:
            for folder in sorted(created | {items[p][0].parent for p in renamed}):
                _folder_sync.sync(folder)
        except OSError as exc:  # which names are durable is unknown: none is reported so
            for position in renamed:
                errors[position] = exc
                with contextlib.suppress(OSError):
                    os.unlink(items[position][0])
    finally:
        for temp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    return errors


def create_many_durably(root: Path, items: Sequence[tuple[Path, bytes]]) -> list[OSError | None]:
    """Create new files at their final names under `root`, made durable by one `syncfs`.

    For names that no one else writes (the spool's generated keys): each file is created
    with ``O_EXCL`` where it belongs and written, and one `syncfs` of `root`'s file system
    then makes the bytes and the names (new folders too) durable together: no temporary
    name, rename, per-file fsync or folder fsync. One result per item, as
    `write_many_durably`; a name is only reported durable after the `syncfs` returned
    without error, and nothing of a failed item is left. A crash before that leaves files that
    no event refers to (nothing announces an object before this returns). Without `syncfs`
    (not Linux): `write_many_durably`.
    """
    if _SYNCFS is None:
        return write_many_durably(items)
    errors: list[OSError | None] = [None] * len(items)
    written: list[int] = []
    try:
        root.mkdir(parents=True, exist_ok=True)  # made durable by the syncfs, as the files are
        watch = _ErrorWatch.open(root)  # before the writes, so that their errors are reported
    except OSError as exc:  # one result per item still: each of them failed
        return [exc] * len(items)
    try:
        present: set[Path] = set()  # folders known to exist
        for position, (path, data) in enumerate(items):
            created = False
            try:
                if path.parent not in present:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    present.add(path.parent)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = True
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
                written.append(position)
            except OSError as exc:
                errors[position] = exc
                if created:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        if written:
            try:
                sync_files(root, [items[position][0] for position in written], watch)
            except OSError as failure:
                for position in written:  # which of them reached the disk is unknown: none did
                    errors[position] = failure
                    with contextlib.suppress(OSError):
                        os.unlink(items[position][0])
    finally:
        watch.close()
    return errors


class _NamePool:
    """Spool names made in advance: empty files whose folder entries are already durable.

    A filler thread creates `_POOL_BATCH` empty files at a time in the hourly folder of
    the moment and fsyncs the folder once for them all; `put_new` then writes an object
    into one of them and fsyncs the file only (no temporary name, no rename, no folder
    fsync on its path). A name not used is an empty file nothing refers to: removed at
    close; after a crash, left behind (at most `_POOL_BATCH` * 2 per process).
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._names: list[Path] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def take(self) -> Path | None:
        """A prepared name, or None when none is ready (the caller writes as usual)."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._fill, name="spool-names", daemon=True)
                self._thread.start()
            name = self._names.pop() if self._names else None
            if len(self._names) < _POOL_BATCH:
                self._cond.notify()
            return name

    def _fill(self) -> None:
        while True:
            with self._cond:
                while len(self._names) >= _POOL_BATCH and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                batch = self._create_batch()
            except OSError:
                time.sleep(1.0)  # a full disk, say: `put_new` falls back to `put` meanwhile
                continue
            with self._cond:
                self._names.extend(batch)

    def _create_batch(self) -> list[Path]:
        folder = self._folder / new_key().rsplit("/", 1)[0]
        created: set[Path] = set()
        _make_folder(folder, created)
        batch: list[Path] = []
        try:
            for _ in range(_POOL_BATCH):
                path = folder / f"{uuid.uuid4().hex}.dcm"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                batch.append(path)
            for made in sorted(created | {folder}):
                fsync_dir(made)
        except OSError:
            for path in batch:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return batch

    def _remove(self) -> None:
        for path in self._names:
            with contextlib.suppress(OSError):
                path.unlink()
        self._names.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)  # a batch being made
        with self._cond:
            self._remove()


def _recorded_checksum(path: Path) -> str:
    """The SHA-256 recorded for the object at `path`: its attribute, else its side file (the
    earlier layout, or a file system without attributes), else its bytes hashed again (an
    object copied without its attributes)."""
    try:
        return os.getxattr(path, _SUM_ATTRIBUTE).decode("ascii")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
    except AttributeError:  # no extended attributes on this platform
        pass
    try:
        return path.with_name(path.name + _SUM_SUFFIX).read_text().strip()
    except FileNotFoundError:
        return sha256_of(path.read_bytes())


class FilesystemBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = str(self.root)
        self._root_prefix = os.path.join(self._root_text, "")
        self._spool_names = _NamePool(self.root / Namespace.SPOOL.value)
        # Cleared at the first refusal: this file system keeps checksums in side files.
        self._attributes = hasattr(os, "setxattr")
        self._device = self.root.stat().st_dev

    def _path(self, namespace: Namespace, key: str) -> Path:
        # Lexical, not Path.resolve(): resolving stats every component of the path (a tenth of
        # the storage processor's time); check_key already allows no "." or ".." segment, so
        # the normalised path is the path, and the check below guards against a bug there.
        # On strings: the same with pathlib's operators took 29 us, called 3-4 times per object.
        path = os.path.normpath(
            os.path.join(self._root_text, Namespace(namespace).value, check_key(key))
        )
        if not path.startswith(self._root_prefix):  # defence in depth behind check_key
            raise BlobNotFound(f"{key!r} is outside the blob store")
        return Path(path)

    def put(self, namespace: Namespace, key: str, data: bytes) -> BlobRef:
        path = self._path(namespace, key)
        digest = sha256_of(data)
        with self._disk_full_is_transient():
            self._write(path, data, self._checksum_writer(namespace, path, digest))
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=digest)

    def put_from(
        self,
        namespace: Namespace,
        key: str,
        source: BlobStore,
        ref: BlobRef,
        *,
        verify: bool = True,
    ) -> BlobRef:
        if not isinstance(source, FilesystemBlobStore):
            return super().put_from(namespace, key, source, ref, verify=verify)
        source_path = source._path(ref.namespace, ref.key)
        try:
            source_status = source_path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(f"no object {ref.namespace}/{ref.key}") from None
        if not stat.S_ISREG(source_status.st_mode):
            raise BlobNotFound(f"no object {ref.namespace}/{ref.key}")
        if source_status.st_size != ref.size:
            raise ChecksumMismatch(
                f"{ref.namespace}/{ref.key}: {source_status.st_size} bytes, "
                f"not the {ref.size} announced"
            )
        linkable = source_status.st_dev == self._device
        # Unverified, the object is read only if it must be copied: a CT object's 0.5 MB read
        # and hash were a fifth of the storage processor's time (performance.md, change 38).
        data = source.get_verified(ref) if verify else None
        path = self._path(namespace, key)
        record_checksum = self._checksum_writer(namespace, path, ref.sha256)
        with self._disk_full_is_transient():
            self._watch_errors()
            if linkable and record_checksum is not None:
                # On the source's file, before the link: the name shows with its checksum.
                record_checksum(source_path)
            if not (linkable and _link(source_path, path)):
                if data is None:
                    data = source.get(ref.namespace, ref.key)
                self._write(path, data, record_checksum)
            elif self._batch().depth:
                self._batch().pending.append(path)
            else:
                # The source's bytes may be waiting for another thread's batch sync.
                sync_files(self.root, [path])
        return BlobRef(namespace=namespace, key=key, size=ref.size, sha256=ref.sha256)

    def page_cache_boot_id(self) -> str | None:
        return kernel_boot_id()

    def _watch_errors(self) -> None:
        """Before a batch's first deferred write: the descriptor its syncfs will report through."""
        state = self._batch()
        if state.depth and not state.pending and _SYNCFS is not None:
            try:
                state.pending.append(_ErrorWatch.open(self.root))
            except OSError as exc:  # out of descriptors, say: retried, not the object's fault
                raise BackendUnavailable(f"cannot open {self.root}: {exc}") from exc

    @staticmethod
    def _watch_and_paths(pending: list[Any]) -> tuple[_ErrorWatch | None, list[Path]]:
        """A batch's pending list: its error watch first (`_watch_errors`), then its paths."""
        if pending and isinstance(pending[0], _ErrorWatch):
            return pending[0], pending[1:]
        return None, pending

    def _end_batch(self, pending: list[Any]) -> None:
        watch, paths = self._watch_and_paths(pending)
        try:
            sync_files(self.root, paths, watch)
        except OSError as exc:
            raise BackendUnavailable(
                f"could not make {len(paths)} objects durable under {self.root}: "
                f"{exc.strerror or exc}"
            ) from exc
        finally:
            if watch is not None:
                watch.close()
        for path in paths:
            # A page of memory each, read only by `stat` (a redelivery, an import's duplicate
            # check): a million of them would hold 4 GB of the page cache.
            if path.name.endswith(_SUM_SUFFIX):
                drop_page_cache(path)

    def _abandon_batch(self, pending: list[Any]) -> None:
        watch, _ = self._watch_and_paths(pending)
        if watch is not None:
            watch.close()

    def _checksum_writer(
        self, namespace: Namespace, path: Path, digest: str
    ) -> Callable[[int | Path], None] | None:
        """What records `digest` for the object about to be named `path` (None in the spool).

        Called with the descriptor (or the current path) of the file that will bear the name,
        before the name appears: it sets the file's checksum attribute, or, where the file
        system has none, writes the side file first (a crash between the two then leaves an
        absent object with a stale side file, never an object whose recorded checksum is
        missing).
        """
        if Namespace(namespace) is Namespace.SPOOL:
            return None
        side_file = path.with_name(path.name + _SUM_SUFFIX)

        def record(file: int | Path) -> None:
            if self._attributes:
                try:
                    os.setxattr(file, _SUM_ATTRIBUTE, digest.encode())
                except OSError as exc:
                    if exc.errno not in _NO_ATTRIBUTES:
                        raise
                    self._attributes = False
                else:
                    # A replaced object's side file, from the earlier layout: stale now.
                    with contextlib.suppress(FileNotFoundError):
                        side_file.unlink()
                    return
            self._write(side_file, digest.encode())

        return record

    def _write(
        self, path: Path, data: bytes, before_rename: Callable[[int], None] | None = None
    ) -> None:
        if self._batch().depth:
            self._watch_errors()
            _replace(path, data, durable=False, before_rename=before_rename)
            self._batch().pending.append(path)
        else:
            _replace(path, data, durable=True, before_rename=before_rename)

    @contextlib.contextmanager
    def _disk_full_is_transient(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            error = self._store_error(exc)
            if error is exc:
                raise
            raise error from exc

    def _store_error(self, exc: OSError) -> Exception:
        """A full disk is the store's condition (BackendUnavailable); other errors stay."""
        if exc.errno in _DISK_FULL:
            return BackendUnavailable(
                f"disk full ({exc.strerror}) under {self.root}; free some space"
            )
        return exc

    def put_many(
        self, namespace: Namespace, items: Sequence[tuple[str, bytes]]
    ) -> list[BlobRef | Exception]:
        """Spool objects are created where they belong and share one `syncfs`
        (`create_many_durably`).

        Other namespaces keep their checksum side files and go one object at a time.
        """
        if Namespace(namespace) is not Namespace.SPOOL:
            return super().put_many(namespace, items)
        results: list[BlobRef | Exception] = []
        writes: list[tuple[int, Path, bytes]] = []
        for key, data in items:
            try:
                path = self._path(namespace, key)
            except KernelError as exc:
                results.append(exc)
                continue
            writes.append((len(results), path, data))
            results.append(
                BlobRef(namespace=namespace, key=key, size=len(data), sha256=sha256_of(data))
            )
        # The spool's own folder: its file system is the one to sync, should it be mounted apart.
        failures = create_many_durably(
            self.root / Namespace.SPOOL.value, [(path, data) for _, path, data in writes]
        )
        for (index, _, _), failure in zip(writes, failures, strict=True):
            if failure is not None:
                results[index] = self._store_error(failure)
        return results

    def put_new(
        self,
        namespace: Namespace,
        data: bytes,
        before_sync: Callable[[BlobRef], None] | None = None,
    ) -> BlobRef:
        """In the spool: into a name prepared in advance (`_NamePool`), fsync'd; else `put`.

        `before_sync` runs between the write and the fsync of the object.
        """
        path = self._spool_names.take() if Namespace(namespace) is Namespace.SPOOL else None
        if path is None:
            return super().put_new(namespace, data, before_sync)
        key = path.relative_to(self.root / Namespace.SPOOL.value).as_posix()
        ref = BlobRef(namespace=namespace, key=key, size=len(data), sha256=sha256_of(data))
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                _write_all(fd, data)
                if before_sync is not None:
                    before_sync(ref)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            error = self._store_error(exc)
            if error is exc:
                raise
            raise error from exc
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return ref

    def close(self) -> None:
        self._spool_names.close()

    def get(self, namespace: Namespace, key: str) -> bytes:
        return self.get_head(namespace, key, -1)

    def get_head(self, namespace: Namespace, key: str, size: int) -> bytes:
        """The first `size` bytes; -1: all of them (`get`)."""
        try:
            with self._path(namespace, key).open("rb") as handle:
                return handle.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"no object {namespace}/{key}") from None

    def drop_cached(self, refs: Sequence[BlobRef]) -> None:
        # Not the checksum side files: those written in a batch are dropped when it ends.
        for ref in refs:
            try:
                path = self._path(ref.namespace, ref.key)
            except (KernelError, ValueError):
                continue
            drop_page_cache(path)

    def stat(self, namespace: Namespace, key: str) -> BlobRef | None:
        path = self._path(namespace, key)
        try:
            size = path.stat().st_size
            if Namespace(namespace) is Namespace.SPOOL:
                digest = sha256_of(path.read_bytes())
            else:
                digest = _recorded_checksum(path)
        except FileNotFoundError:
            return None
        return BlobRef(namespace=namespace, key=key, size=size, sha256=digest)

    def delete(self, namespace: Namespace, key: str) -> None:
        path = self._path(namespace, key)
        if Namespace(namespace) is Namespace.SPOOL:  # no side files there (`_checksum_writer`)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
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
