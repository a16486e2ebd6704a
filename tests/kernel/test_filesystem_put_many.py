"""`FilesystemBlobStore.put_many` in the spool: the order of its syncs, and failures per item."""

import errno
import os
import stat
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


def test_each_file_is_fsynced_before_its_rename_and_each_folder_once_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    ("call", "error", "reported"),
    [("write", errno.ENOSPC, BackendUnavailable), ("fsync", errno.EIO, OSError)],
)
def test_a_failed_write_or_fsync_fails_its_item_alone_and_leaves_nothing_of_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    error: int,
    reported: type[Exception],
) -> None:
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


def test_a_failed_folder_fsync_reports_no_object_durable_and_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")

    def fsync_dir(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem, "fsync_dir", fsync_dir)
    results = store.put_many(Namespace.SPOOL, ITEMS)
    assert all(isinstance(r, OSError) for r in results)
    assert _files(store.root / "spool") == []
