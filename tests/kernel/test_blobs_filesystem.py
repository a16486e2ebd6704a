"""What only the filesystem blob store does: links from the spool, one sync per batch,
checksums in an extended attribute (or a side file where the file system has none)."""

import errno
import os
from pathlib import Path

import pytest

from dicomflow.kernel.blobs import filesystem
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BlobNotFound
from tests.pagecache import require_droppable_pages, resident_pages


@pytest.fixture
def stores(tmp_path: Path) -> tuple[FilesystemBlobStore, FilesystemBlobStore]:
    return FilesystemBlobStore(tmp_path / "spool"), FilesystemBlobStore(tmp_path / "blobs")


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = filesystem.sync_files

    def counting(root: Path, files: list[Path], watch: object = None) -> None:
        calls.append(len(files))
        real(root, files, watch)  # type: ignore[arg-type]

    monkeypatch.setattr(filesystem, "sync_files", counting)
    return calls


def _without_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that keeps no user extended attributes (tmpfs before Linux 6.6...)."""

    def refused(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(filesystem.os, "setxattr", refused)


@pytest.fixture
def attributes(tmp_path: Path) -> None:
    """Skip where the file system under the tests keeps no user extended attributes."""
    probe = tmp_path / "probe"
    probe.touch()
    try:
        filesystem.os.setxattr(probe, "user.dicomflow.probe", b"1")
    except (OSError, AttributeError) as exc:
        pytest.skip(f"no user extended attributes under {tmp_path}: {exc}")
    finally:
        probe.unlink()


def _attribute(path: Path) -> str:
    return filesystem.os.getxattr(path, "user.dicomflow.sha256").decode()


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
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], attributes: None
) -> None:
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/x.dcm", b"DICM")
    for _ in range(2):  # a redelivered event: rename(2) of two links to one file does nothing
        blobs.put_from(Namespace.ORIGINAL, "a/b/x.dcm", spool, ref)
    folder = blobs.root / "original" / "a" / "b"
    assert sorted(p.name for p in folder.iterdir()) == ["x.dcm"]
    assert _attribute(folder / "x.dcm") == ref.sha256


def test_a_later_copy_is_linked_over_the_earlier_one(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], attributes: None
) -> None:
    """The same instance sent again with other bytes: its name now links the later copy, and
    the earlier layout's side file of the name is gone."""
    spool, blobs = stores
    earlier = blobs.put_from(
        Namespace.ORIGINAL, "a/b/x.dcm", spool, spool.put(Namespace.SPOOL, "in/1.dcm", b"one")
    )
    folder = blobs.root / "original" / "a" / "b"
    (folder / "x.dcm.sha256").write_text(earlier.sha256)
    later = blobs.put_from(
        Namespace.ORIGINAL, "a/b/x.dcm", spool, spool.put(Namespace.SPOOL, "in/2.dcm", b"two")
    )
    assert sorted(p.name for p in folder.iterdir()) == ["x.dcm"]
    assert blobs.get_verified(later) == b"two" and _attribute(folder / "x.dcm") == later.sha256
    assert blobs.stat(Namespace.ORIGINAL, "a/b/x.dcm") == later


def test_the_checksum_is_an_attribute_of_the_file_not_a_file(
    tmp_path: Path, attributes: None
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    ref = store.put(Namespace.ORIGINAL, "a/b/x.dcm", b"DICM" * 100)
    path = store.local_path(Namespace.ORIGINAL, ref.key)
    assert path is not None
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.dcm"]
    assert _attribute(path) == ref.sha256
    path.write_bytes(b"changed behind the store's back")  # stat must not read the bytes
    assert store.stat(Namespace.ORIGINAL, ref.key) == ref.model_copy(
        update={"size": path.stat().st_size}
    )


def test_without_attributes_the_checksum_goes_to_a_side_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_attributes(monkeypatch)
    spool = FilesystemBlobStore(tmp_path / "spool")
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    put = blobs.put(Namespace.ORIGINAL, "a/b/x.dcm", b"put")
    linked = blobs.put_from(
        Namespace.ORIGINAL, "a/b/y.dcm", spool, spool.put(Namespace.SPOOL, "in/y.dcm", b"y")
    )
    folder = blobs.root / "original" / "a" / "b"
    assert sorted(p.name for p in folder.iterdir()) == [
        "x.dcm",
        "x.dcm.sha256",
        "y.dcm",
        "y.dcm.sha256",
    ]
    assert blobs.stat(Namespace.ORIGINAL, "a/b/x.dcm") == put
    assert blobs.stat(Namespace.ORIGINAL, "a/b/y.dcm") == linked
    assert list(blobs.keys(Namespace.ORIGINAL)) == ["a/b/x.dcm", "a/b/y.dcm"]
    blobs.delete(Namespace.ORIGINAL, "a/b/x.dcm")
    assert sorted(p.name for p in folder.iterdir()) == ["y.dcm", "y.dcm.sha256"]


def test_an_archive_of_the_side_file_layout_is_read_and_rewritten(
    tmp_path: Path, attributes: None
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    folder = store.root / "original" / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "x.dcm").write_bytes(b"old")
    (folder / "x.dcm.sha256").write_text("f" * 64 + "\n")  # as the earlier layout wrote it
    assert store.stat(Namespace.ORIGINAL, "a/b/x.dcm") == BlobRef(
        namespace=Namespace.ORIGINAL, key="a/b/x.dcm", size=3, sha256="f" * 64
    )
    assert list(store.keys(Namespace.ORIGINAL)) == ["a/b/x.dcm"]
    new = store.put(Namespace.ORIGINAL, "a/b/x.dcm", b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["x.dcm"]  # the stale side file went
    assert store.stat(Namespace.ORIGINAL, "a/b/x.dcm") == new


def test_an_object_copied_without_its_checksum_is_hashed(tmp_path: Path, attributes: None) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    ref = store.put(Namespace.ORIGINAL, "a/b/x.dcm", b"DICM" * 100)
    path = store.local_path(Namespace.ORIGINAL, ref.key)
    assert path is not None
    filesystem.os.removexattr(path, "user.dicomflow.sha256")  # cp without --preserve=xattr
    assert store.stat(Namespace.ORIGINAL, ref.key) == ref


@pytest.mark.parametrize("why", ["another file system", "no hard links there"])
def test_an_object_that_cannot_be_linked_is_copied_with_its_checksum(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore],
    monkeypatch: pytest.MonkeyPatch,
    attributes: None,
    why: str,
) -> None:
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/x.dcm", b"bytes")
    if why == "another file system":
        monkeypatch.setattr(blobs, "_device", blobs._device + 1)
    else:

        def cross_device(source: Path, target: Path) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(filesystem.os, "link", cross_device)
    stored = blobs.put_from(Namespace.ORIGINAL, "a/b/x.dcm", spool, ref)
    target = blobs.local_path(Namespace.ORIGINAL, "a/b/x.dcm")
    assert target is not None and target.stat().st_nlink == 1
    assert blobs.get_verified(stored) == b"bytes"
    assert _attribute(target) == ref.sha256
    assert blobs.stat(Namespace.ORIGINAL, "a/b/x.dcm") == stored


def test_a_batch_makes_its_objects_durable_with_one_sync(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore],
    monkeypatch: pytest.MonkeyPatch,
    attributes: None,
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
    # 5 links + 1 object (their checksums are attributes of the files), one sync.
    assert calls == [6]


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

    def io_error(root: Path, files: list[Path], watch: object = None) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem, "sync_files", io_error)
    with pytest.raises(BackendUnavailable, match="durable"), blobs.batch():
        blobs.put(Namespace.ORIGINAL, "a/b/c.dcm", b"x")


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_batch_syncs_through_a_descriptor_opened_before_its_first_write(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs reports the writeback errors its descriptor has not seen: one opened after the
    writes could miss an error another process's syncfs saw first."""
    if filesystem._SYNCFS is None:
        pytest.skip("no syncfs here (not Linux)")
    spool, blobs = stores
    ref = spool.put(Namespace.SPOOL, "in/0.dcm", b"linked")
    trace: list[tuple[str, int]] = []
    real_open, real_syncfs, real_replace = os.open, filesystem._SYNCFS, filesystem._replace

    def opened(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if str(path) == str(blobs.root):
            trace.append(("open root", fd))
        return fd

    def replace(*args: object, **kwargs: object) -> None:
        trace.append(("write", -1))
        real_replace(*args, **kwargs)  # type: ignore[arg-type]

    def syncfs(fd: int) -> int:
        trace.append(("syncfs", fd))
        return real_syncfs(fd)

    monkeypatch.setattr(filesystem.os, "open", opened)
    monkeypatch.setattr(filesystem, "_replace", replace)
    monkeypatch.setattr(filesystem, "_SYNCFS", syncfs)
    before = _open_descriptors()
    with blobs.batch():
        blobs.put(Namespace.DEIDENTIFIED, "c/d/e.dcm", b"copy")
        blobs.put_from(Namespace.ORIGINAL, "a/b/0.dcm", spool, ref)
    assert [op for op, _ in trace] == ["open root", "write", "syncfs"]
    assert trace[0][1] == trace[2][1]  # the one opened first
    assert _open_descriptors() == before
    # A batch that fails closes its descriptor too.
    with pytest.raises(RuntimeError), blobs.batch():
        blobs.put(Namespace.ORIGINAL, "a/b/c.dcm", b"x")
        raise RuntimeError("the batch is retried")
    assert _open_descriptors() == before


def test_without_syncfs_every_file_and_folder_is_fsynced(
    stores: tuple[FilesystemBlobStore, FilesystemBlobStore],
    monkeypatch: pytest.MonkeyPatch,
    attributes: None,
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
    # 2 objects, then their one folder.
    assert len(synced) == 3


def test_dropped_objects_leave_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_droppable_pages(tmp_path)
    _without_attributes(monkeypatch)  # the side file's pages too
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The storage processor links the spool's copy in a batch; the metadata processor reads
    # that object next, so its pages stay, while the checksum file is not read again soon.
    require_droppable_pages(tmp_path)
    _without_attributes(monkeypatch)
    spool = FilesystemBlobStore(tmp_path / "spool")
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    data = b"DICM" * 10_000
    spooled = spool.put_new(Namespace.SPOOL, data)
    with blobs.batch():
        ref = blobs.put_from(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", spool, spooled)
    path = blobs.local_path(Namespace.ORIGINAL, ref.key)
    assert path is not None
    assert resident_pages(path) > 0
    assert resident_pages(path.with_name(path.name + ".sha256")) == 0


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../../x", "../../blobs-2/x"])
def test_a_key_that_escapes_the_store_is_refused_even_past_check_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    monkeypatch.setattr(filesystem, "check_key", lambda key: key)  # as if it had a bug
    with pytest.raises(BlobNotFound, match="outside the blob store"):
        store.get(Namespace.ORIGINAL, key)
    assert store._path(Namespace.ORIGINAL, "1.2/3.4/5.6.dcm") == (
        tmp_path / "blobs" / "original" / "1.2" / "3.4" / "5.6.dcm"
    )


@pytest.mark.parametrize(
    ("release", "reports"),
    [
        ("6.18.44-fc-v595", True),
        ("5.8.0", True),
        ("5.10.0-23-amd64", True),
        ("5.7.19", False),
        ("4.18.0-477.el8.x86_64", False),  # RHEL 8: fsync per file, not syncfs
        ("garbage", False),
    ],
)
def test_syncfs_is_used_only_where_it_reports_write_errors(release: str, reports: bool) -> None:
    assert filesystem.reports_writeback_errors(release) is reports
