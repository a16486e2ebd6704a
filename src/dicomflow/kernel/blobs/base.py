"""The blob store interface: objects by namespace and key, written durably, read verified.

Two implementations: `FilesystemBlobStore` (embedded) and `S3BlobStore`; both pass
tests/kernel/test_blobs_contract.py. Keys are built by the callers from validated UIDs
(`dicomflow.kernel.uids.instance_key`) or generated; each implementation checks them again.
"""

import contextlib
import hashlib
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import ChecksumMismatch, KernelError

_KEY_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# One pattern for the whole key (1 to 8 segments), matched with `fullmatch`: a segment starts
# with a letter or digit, so none is "." or "..", and no newline slips past a "$".
_KEY = re.compile(rf"{_KEY_SEGMENT}(?:/{_KEY_SEGMENT}){{0,7}}")
DICOM_CONTENT_TYPE = "application/dicom"


class InvalidBlobKey(KernelError, ValueError):
    """A key with empty, dot-only or unexpected segments (a path traversal attempt, say)."""


def check_key(key: str) -> str:
    # Called several times per object on every hot path: one regex pass, not one per segment.
    if _KEY.fullmatch(key) is None:
        raise InvalidBlobKey(f"blob key {key[:120]!r} is not a safe relative key")
    return key


def new_key(now: datetime | None = None) -> str:
    """A new unique key in the hourly folder of `now` (UTC): ``YYYYmmdd/HH/<hex>.dcm``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d}/{now:%H}/{uuid.uuid4().hex}.dcm"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _BatchState(threading.local):
    """The open `BlobStore.batch()` of one thread: its nesting depth and what it deferred."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[Any] = []


class BlobStore(ABC):
    @abstractmethod
    def put(self, namespace: Namespace, key: str, data: bytes) -> BlobRef:
        """Store `data`; when this returns the object is durable. Overwrites (idempotent)."""

    def put_from(
        self,
        namespace: Namespace,
        key: str,
        source: "BlobStore",
        ref: BlobRef,
        *,
        verify: bool = True,
    ) -> BlobRef:
        """Store a copy of `ref`, an object of `source`, checked against its SHA-256 first.

        Raises BlobNotFound or ChecksumMismatch for the source object. A store that shares a
        file system with the source may link the object instead of writing it again.
        `verify=False` is for a caller that knows the source object to be whole (see
        `page_cache_boot_id`): it is not hashed, only its size is checked.
        """
        if verify:
            return self.put(namespace, key, source.get_verified(ref))
        data = source.get(ref.namespace, ref.key)
        if len(data) != ref.size:
            raise ChecksumMismatch(
                f"{ref.namespace}/{ref.key}: {len(data)} bytes, not the {ref.size} announced"
            )
        return self.put(namespace, key, data)

    def page_cache_boot_id(self) -> str | None:
        """The boot of the kernel whose page cache holds this store's writes, if it has one.

        A store of local files returns the kernel's boot ID: an object whose write had
        returned reads back whole for as long as that kernel runs, fsync'd or not, and only a
        crash of the machine (a new boot ID) can lose what was not yet synced. A writer that
        records this ID with its announcement of an object (the receiver, in its event's
        headers) lets a reader in the same boot skip re-reading the object to check it.
        None (the default, and for remote stores): no such promise.
        """
        return None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """A block whose puts may share one durability point at its end.

        Inside the block `put` may return before its object is durable; every object put in
        the block is durable once the block exits without an exception (a failure to make them
        so raises BackendUnavailable). Nothing may refer to those objects (no event published)
        before the block has exited. Blocks nest; only the outermost one syncs. The processor
        runtime runs each batch of records in one block, so a batch of N objects costs one
        sync instead of N. Subclasses defer in `put` while `_batch().depth` is set, keep
        what they deferred in `_batch().pending`, and settle it in `_end_batch`.
        """
        state = self._batch()
        state.depth += 1
        try:
            yield
        except BaseException:
            state.depth -= 1
            if not state.depth:
                pending, state.pending = state.pending, []
                self._abandon_batch(pending)
            raise
        state.depth -= 1
        if not state.depth and state.pending:
            pending, state.pending = state.pending, []
            self._end_batch(pending)

    def _batch(self) -> "_BatchState":
        """This thread's open `batch()` of this store (created on first use)."""
        state: _BatchState | None = self.__dict__.get("_batch_state")
        if state is None:
            state = self.__dict__.setdefault("_batch_state", _BatchState())
        return state

    def _end_batch(self, pending: list[Any]) -> None:  # noqa: B027 - optional hook
        """Make what a batch deferred durable; raise BackendUnavailable if it cannot be."""

    def _abandon_batch(self, pending: list[Any]) -> None:  # noqa: B027 - optional hook
        """A batch failed: what it deferred will be written again if it is retried."""

    def put_many(
        self, namespace: Namespace, items: Sequence[tuple[str, bytes]]
    ) -> list[BlobRef | Exception]:
        """Store several objects; when this returns, every object reported stored is durable.

        One result per item, in order: its BlobRef, or the exception `put` would have raised
        for it (an invalid key, a full disk, an unreachable store), so that one bad item does
        not fail the others. Implementations may share their syncs across the items.
        """
        results: list[BlobRef | Exception] = []
        for key, data in items:
            try:
                results.append(self.put(namespace, key, data))
            except (OSError, KernelError) as exc:
                results.append(exc)
        return results

    def put_new(
        self,
        namespace: Namespace,
        data: bytes,
        before_sync: Callable[[BlobRef], None] | None = None,
    ) -> BlobRef:
        """Store `data` under a new unique key the store chooses; durable when this returns.

        For objects whose key does not matter (the spool). Keys are ``YYYYmmdd/HH/<hex>.dcm``
        (UTC), hourly folders; an implementation may use names it prepared in advance.
        `before_sync(ref)`, if given, is called once the bytes are written, possibly before
        they are durable (so that the caller's own commit overlaps the store's sync); if
        this then raises, the object is not stored and the caller must deal with what its
        `before_sync` did.
        """
        ref = self.put(namespace, new_key(), data)
        if before_sync is not None:
            before_sync(ref)
        return ref

    def put_file(self, namespace: Namespace, key: str, path: Path) -> BlobRef:
        """Store a local file's content (implementations may avoid reading it into memory)."""
        return self.put(namespace, key, path.read_bytes())

    @abstractmethod
    def get(self, namespace: Namespace, key: str) -> bytes:
        """The object's bytes; raises BlobNotFound."""

    def get_head(self, namespace: Namespace, key: str, size: int) -> bytes:
        """The object's first `size` bytes (all of a shorter one); raises BlobNotFound.

        Not checked against the object's SHA-256, which covers the whole object: for readers
        of a header whose object was verified already (the metadata processor reads a CT
        object's first 64 KB, not its 0.5 MB, right after the storage processor verified it).
        """
        return self.get(namespace, key)[:size]

    def get_verified(self, ref: BlobRef) -> bytes:
        """The bytes of `ref`, checked against its SHA-256; raises ChecksumMismatch."""
        data = self.get(ref.namespace, ref.key)
        if sha256_of(data) != ref.sha256:
            raise ChecksumMismatch(
                f"{ref.namespace}/{ref.key}: content does not match its recorded SHA-256"
            )
        return data

    def drop_cached(self, refs: Sequence[BlobRef]) -> None:  # noqa: B027 - optional hook
        """The caller has read `refs` and expects no one to read them again soon.

        Advisory: a store that keeps objects in a local cache may drop them from it; a later
        read works as usual, only slower. The filesystem store drops their pages from the OS
        page cache, so that a stream of write-once objects (millions a day) does not push the
        search index out of memory. Missing objects are ignored.
        """

    @abstractmethod
    def stat(self, namespace: Namespace, key: str) -> BlobRef | None:
        """Size and checksum of an object, or None if absent."""

    def exists(self, namespace: Namespace, key: str) -> bool:
        return self.stat(namespace, key) is not None

    @abstractmethod
    def delete(self, namespace: Namespace, key: str) -> None:
        """Remove an object; absent objects are not an error."""

    @abstractmethod
    def keys(self, namespace: Namespace, prefix: str = "") -> Iterator[str]:
        """Every key of a namespace that starts with `prefix`."""

    def local_path(self, namespace: Namespace, key: str) -> Path | None:
        """A local file holding the object, when the store has one (lets readers stream)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
