"""What only the filesystem blob store does: links from the spool, one sync per batch."""

import errno
from pathlib import Path

import pytest

from dicomflow.kernel.blobs import filesystem
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BackendUnavailable
from tests.pagecache import require_droppable_pages, resident_pages


@pytest.fixture
def stores(tmp_path: Path) -> tuple[FilesystemBlobStore, FilesystemBlobStore]:
    return FilesystemBlobStore(tmp_path / "spool"), FilesystemBlobStore(tmp_path / "blobs")


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = filesystem.sync_files

    def counting(root: Path, files: list[Path]) -> None:
        calls.append(len(files))
        real(root, files)

    monkeypatch.setattr(filesystem, "sync_files", counting)
    return calls


def test_an_object_of_the_spool_is_linked_not_written_again(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore],
) -> None:
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/x.dcm", b"DICM" * 1000)
    stored = blobs.put_from(Namespace.ORIGINAL, "a/b/x.dcm", spool, ref)
    source = spool.local_path(Namespace.SPOOL, "in/x.dcm")
    target = blobs.local_path(Namespace.ORIGINAL, "a/b/x.dcm")
    assert source is not None and target is not None
    assert source.stat().st_ino == target.stat().st_ino
    spool.delete(Namespace.SPOOL, "in/x.dcm")
    assert blobs.get_verified(stored) == b"DICM" * 1000
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]


def test_linking_the_same_object_again_leaves_no_temporary_name(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore],
) -> None:
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/x.dcm", b"DICM")
    for _ in range(2):  # a redelivered event: rename(2) of two links to one file does nothing
        blobs.put_from(Namespace.ORIGINAL, "a/b/x.dcm", spool, ref)
    folder = blobs.root / "original" / "a" / "b"
    assert sorted(p.name for p in folder.iterdir()) == ["x.dcm", "x.dcm.sha256"]


def test_a_store_that_cannot_link_copies(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/x.dcm", b"bytes")

    def cross_device(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(filesystem.os, "link", cross_device)
    stored = blobs.put_from(Namespace.ORIGINAL, "a/b/x.dcm", spool, ref)
    target = blobs.local_path(Namespace.ORIGINAL, "a/b/x.dcm")
    assert target is not None and target.stat().st_nlink == 1
    assert blobs.get_verified(stored) == b"bytes"


def test_a_batch_makes_its_objects_durable_with_one_sync(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, blobs = stores
    refs = [spool.put(Namespace.SPOOL, f"in/{n}.dcm", b"x%d" % n) for n in range(5)]
    calls = _count_syncs(monkeypatch)
    monkeypatch.setattr(filesystem.os, "fsync", _no_fsync_expected)
    with blobs.batch():
        for n, ref in enumerate(refs):
            blobs.put_from(Namespace.ORIGINAL, f"a/b/{n}.dcm", spool, ref)
        blobs.put(Namespace.DEIDENTIFIED, "c/d/e.dcm", b"copy")
        assert calls == []
    # 5 links + 5 checksum files + 1 object + 1 checksum file, one sync.
    assert calls == [12]


def _no_fsync_expected(fd: int) -> None:
    raise AssertionError("a put inside a batch must not fsync on its own")


def test_a_batch_that_fails_does_not_sync(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = stores
    calls = _count_syncs(monkeypatch)
    with pytest.raises(RuntimeError), blobs.batch():
        blobs.put(Namespace.ORIGINAL, "a/b/c.dcm", b"x")
        raise RuntimeError("the batch is retried")
    with blobs.batch():
        pass
    assert calls == []


def test_a_failed_sync_is_a_transient_failure(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = stores

    def io_error(root: Path, files: list[Path]) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem, "sync_files", io_error)
    with pytest.raises(BackendUnavailable, match="durable"), blobs.batch():
        blobs.put(Namespace.ORIGINAL, "a/b/c.dcm", b"x")


def test_without_syncfs_every_file_and_folder_is_fsynced(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = stores
    monkeypatch.setattr(filesystem, "_SYNCFS", None)
    synced: list[int] = []
    real_fsync = filesystem.os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(filesystem.os, "fsync", counting_fsync)
    with blobs.batch():
        blobs.put(Namespace.ORIGINAL, "a/b/1.dcm", b"1")
        blobs.put(Namespace.ORIGINAL, "a/b/2.dcm", b"2")
    # 2 objects + 2 checksum files, then their one folder.
    assert len(synced) == 5


def test_dropped_objects_leave_the_page_cache(tmp_path: Path) -> None:
    require_droppable_pages(tmp_path)
    store = FilesystemBlobStore(tmp_path / "blobs")
    ref = store.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", b"DICM" * 10_000)
    path = store.local_path(Namespace.ORIGINAL, ref.key)
    assert path is not None
    side = path.with_name(path.name + ".sha256")
    store.get_verified(ref)
    store.stat(Namespace.ORIGINAL, ref.key)
    assert resident_pages(path) > 0 and resident_pages(side) == 1
    store.drop_cached([ref])
    assert resident_pages(path) == 0
    assert resident_pages(side) == 1  # outside a batch: the side file is left alone
    assert store.get_verified(ref) == b"DICM" * 10_000  # read again from disk


def test_a_batch_drops_the_checksum_files_it_wrote_but_keeps_linked_objects(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], tmp_path: Path
) -> None:
    # The storage processor links the spool's copy in a batch; the metadata processor reads
    # that object next, so its pages stay, while the checksum file is not read again soon.
    require_droppable_pages(tmp_path)
    spool, blobs = stores
    data = b"DICM" * 10_000
    spooled = spool.put_new(Namespace.SPOOL, data)
    with blobs.batch():
        ref = blobs.put_from(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", spool, spooled)
    path = blobs.local_path(Namespace.ORIGINAL, ref.key)
    assert path is not None
    assert resident_pages(path) > 0
    assert resident_pages(path.with_name(path.name + ".sha256")) == 0
