"""The filesystem spool: `put_many` (the order of its syncs, failures per item) and `put_new`
(names prepared in advance)."""

import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomflow.kernel.blobs import filesystem
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable

ITEMS = [(f"20260101/0{i % 2}/{i}.dcm", f"object {i}".encode() * 100) for i in range(6)]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_objects_are_created_in_place_and_made_durable_by_one_syncfs_after_the_last_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    if filesystem._SYNCFS is None:
        pytest.skip("no syncfs here (not Linux)")
    trace: list[tuple[str, str]] = []
    real_open, real_write, real_syncfs = os.open, os.write, filesystem._SYNCFS

    def opened(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        trace.append(("open", str(path)))
        return fd

    def write(fd: int, data: Any) -> int:
        trace.append(("write", os.readlink(f"/proc/self/fd/{fd}")))
        return real_write(fd, data)

    def syncfs(fd: int) -> int:
        trace.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
        return real_syncfs(fd)

    def no_sync(*args: Any) -> None:
        raise AssertionError("a syncfs makes everything durable: no fsync, no folder fsync")

    def no_rename(*args: Any) -> None:
        raise AssertionError("the objects are written at their names: no rename")

    monkeypatch.setattr(filesystem.os, "open", opened)
    monkeypatch.setattr(filesystem.os, "write", write)
    monkeypatch.setattr(filesystem, "_SYNCFS", syncfs)
    monkeypatch.setattr(filesystem.os, "fsync", no_sync)
    monkeypatch.setattr(filesystem, "fsync_dir", no_sync)
    monkeypatch.setattr(filesystem.os, "replace", no_rename)

    results = store.put_many(Namespace.SPOOL, ITEMS)

    spool = store.root / "spool"
    syncs = [i for i, (op, _) in enumerate(trace) if op == "syncfs"]
    assert len(syncs) == 1  # one for the whole call, not one per object or folder
    writes = [i for i, (op, _) in enumerate(trace) if op == "write"]
    assert {trace[i][1] for i in writes} == {str(spool / key) for key, _ in ITEMS}
    assert writes[-1] < syncs[0]  # every byte written before the sync
    # The descriptor synced was opened before the first write: syncfs reports the writeback
    # errors since its open.
    assert trace.index(("open", str(spool))) < writes[0]
    assert trace[syncs[0]][1] == str(spool)
    assert _files(spool) == sorted(key for key, _ in ITEMS)
    for (key, data), ref in zip(ITEMS, results, strict=True):
        assert isinstance(ref, BlobRef) and ref.key == key
        assert store.get_verified(ref) == data


def test_without_syncfs_each_file_is_fsynced_before_its_rename_and_each_folder_once_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "_SYNCFS", None)
    store = FilesystemBlobStore(tmp_path / "blobs")
    trace: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        trace.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: Path) -> None:
        trace.append(("rename", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "replace", replace)
    monkeypatch.setattr(filesystem, "fsync_dir", lambda path: trace.append(("folder", str(path))))

    results = store.put_many(Namespace.SPOOL, ITEMS)

    assert all(isinstance(ref, BlobRef) for ref in results)
    renames = [i for i, (op, _) in enumerate(trace) if op == "rename"]
    assert len(renames) == len(ITEMS)
    for i in renames:  # the temporary file was fsync'd before it got its name
        assert ("fsync", trace[i][1]) in trace[:i]
    folders = [(i, path) for i, (op, path) in enumerate(trace) if op == "folder"]
    assert all(i > renames[-1] for i, _ in folders)  # names made durable after the last rename
    spool = store.root / "spool"
    # One fsync per folder that got a name or a new subfolder, not one per object.
    made = (store.root, spool, spool / "20260101", spool / "20260101/00", spool / "20260101/01")
    assert sorted(path for _, path in folders) == sorted(str(p) for p in made)
    assert _files(spool) == sorted(key for key, _ in ITEMS)
    for (key, data), ref in zip(ITEMS, results, strict=True):
        assert isinstance(ref, BlobRef) and ref.key == key
        assert store.get_verified(ref) == data


def _failing_for_object_3(real: Callable[..., Any], error: int) -> Callable[..., Any]:
    """`os.write` or `os.fsync`, failing with `error` for the temporary file of object 3."""

    def call(fd: int, *args: Any) -> Any:
        if args:  # write(fd, data)
            content = bytes(args[0][:8])
        elif stat.S_ISREG(os.fstat(fd).st_mode):  # fsync(fd) of a file, not of a folder
            content = Path(f"/proc/self/fd/{fd}").read_bytes()[:8]
        else:
            content = b""
        if content == b"object 3":
            raise OSError(error, os.strerror(error))
        return real(fd, *args)

    return call


@pytest.mark.parametrize(
    ("call", "error", "reported", "with_syncfs"),
    [
        ("write", errno.ENOSPC, BackendUnavailable, True),
        ("write", errno.ENOSPC, BackendUnavailable, False),
        ("fsync", errno.EIO, OSError, False),
    ],
)
def test_a_failed_write_or_fsync_fails_its_item_alone_and_leaves_nothing_of_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    error: int,
    reported: type[Exception],
    with_syncfs: bool,
) -> None:
    if with_syncfs and filesystem._SYNCFS is None:
        pytest.skip("no syncfs here (not Linux)")
    if not with_syncfs:
        monkeypatch.setattr(filesystem, "_SYNCFS", None)
    store = FilesystemBlobStore(tmp_path / "blobs")
    monkeypatch.setattr(filesystem.os, call, _failing_for_object_3(getattr(os, call), error))
    results = store.put_many(Namespace.SPOOL, ITEMS)
    assert type(results[3]) is reported
    if reported is BackendUnavailable:
        assert "disk full" in str(results[3])  # the store's condition, retried later
    assert all(isinstance(r, BlobRef) for i, r in enumerate(results) if i != 3)
    assert _files(store.root) == sorted(
        f"spool/{key}" for i, (key, _) in enumerate(ITEMS) if i != 3
    )  # no temporary file left either


@pytest.fixture
def syncfs_store(tmp_path: Path) -> FilesystemBlobStore:
    if filesystem._SYNCFS is None:
        pytest.skip("no syncfs here (not Linux)")
    return FilesystemBlobStore(tmp_path / "blobs")


def _every_item_fails_and_leaves_nothing(store: FilesystemBlobStore, code: int) -> None:
    results = store.put_many(Namespace.SPOOL, ITEMS)
    assert all(isinstance(r, OSError) and r.errno == code for r in results)
    assert _files(store.root / "spool") == []


def test_a_failed_syncfs_reports_no_object_durable_and_removes_them(
    syncfs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def syncfs(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(filesystem, "_SYNCFS", syncfs)
    _every_item_fails_and_leaves_nothing(syncfs_store, errno.EIO)


def test_a_spool_folder_that_cannot_be_opened_fails_every_item(
    syncfs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def out_of_descriptors(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args)

    monkeypatch.setattr(filesystem.os, "open", out_of_descriptors)
    _every_item_fails_and_leaves_nothing(syncfs_store, errno.EMFILE)


def test_without_syncfs_a_failed_folder_fsync_reports_no_object_durable_and_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "_SYNCFS", None)
    store = FilesystemBlobStore(tmp_path / "blobs")

    def fsync_dir(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem, "fsync_dir", fsync_dir)
    results = store.put_many(Namespace.SPOOL, ITEMS)
    assert all(isinstance(r, OSError) for r in results)
    assert _files(store.root / "spool") == []


def _prepared(store: FilesystemBlobStore) -> list[Path]:
    for _ in range(100):  # the filler thread starts with the first put_new
        names = list(store._spool_names._names)
        if names:
            return names
        time.sleep(0.02)
    raise AssertionError("no spool name was prepared")


def test_put_new_writes_into_a_name_made_durable_in_advance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    first = store.put_new(Namespace.SPOOL, b"first")  # no name ready yet: an ordinary put
    assert store.get_verified(first) == b"first"
    prepared = _prepared(store)
    assert all(p.stat().st_size == 0 for p in prepared)
    trace: list[str] = []
    real_fsync, real_fsync_dir, real_replace = os.fsync, filesystem.fsync_dir, os.replace

    def note(what: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def noted(*args: Any) -> Any:
            if threading.current_thread() is threading.main_thread():  # not the filler's
                trace.append(what)
            return call(*args)

        return noted

    monkeypatch.setattr(filesystem, "fsync_dir", note("folder", real_fsync_dir))
    monkeypatch.setattr(filesystem.os, "fsync", note("file", real_fsync))
    monkeypatch.setattr(filesystem.os, "replace", note("rename", real_replace))
    seen: list[BlobRef] = []
    ref = store.put_new(Namespace.SPOOL, b"second", before_sync=seen.append)
    assert trace == ["file"]  # no temporary name, no rename, no folder fsync on the way
    assert seen == [ref]  # called with the reference before the fsync
    assert store.root / "spool" / ref.key in prepared
    assert store.get_verified(ref) == b"second"
    assert ref.key.count("/") == 2 and ref.key.endswith(".dcm")  # YYYYmmdd/HH/<hex>.dcm


def test_unused_prepared_names_are_removed_at_close(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    ref = store.put_new(Namespace.SPOOL, b"kept")
    _prepared(store)
    store.close()
    assert _files(store.root / "spool") == [ref.key]
    assert store.get_verified(store.put_new(Namespace.SPOOL, b"after")) == b"after"


def test_a_failed_put_new_leaves_nothing_of_the_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    kept = store.put_new(Namespace.SPOOL, b"kept")
    _prepared(store)
    monkeypatch.setattr(filesystem.os, "fsync", _failing_for_object_3(os.fsync, errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        store.put_new(Namespace.SPOOL, b"object 3")
    store.close()
    assert _files(store.root / "spool") == [kept.key]
