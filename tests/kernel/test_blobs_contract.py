"""The contract every BlobStore implementation passes (filesystem; S3 in integration)."""

import errno
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomflow.kernel.blobs.base import BlobStore, InvalidBlobKey, sha256_of
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BlobNotFound, ChecksumMismatch
from tests.conftest import service_setting


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    blob_store: BlobStore
    if request.param == "s3":
        from dicomflow.kernel.blobs.s3 import S3BlobStore

        blob_store = S3BlobStore(
            endpoint=service_setting("DICOMFLOW_S3_ENDPOINT"),
            access_key=service_setting("DICOMFLOW_S3_ACCESS_KEY"),
            secret_key=service_setting("DICOMFLOW_S3_SECRET_KEY"),
            bucket_prefix=f"t{uuid.uuid4().hex[:10]}",
        )
    else:
        blob_store = FilesystemBlobStore(tmp_path / "blobs")
    yield blob_store
    blob_store.close()


def test_put_get_stat_delete(store: BlobStore) -> None:
    data = b"DICM" * 1000
    ref = store.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", data)
    assert ref.size == len(data) and ref.sha256 == sha256_of(data)
    assert store.get(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm") == data
    assert store.get_verified(ref) == data
    assert store.stat(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm") == ref
    assert list(store.keys(Namespace.ORIGINAL)) == ["1.2/1.2.3/1.2.3.4.dcm"]
    store.delete(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm")
    assert store.stat(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm") is None
    store.delete(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm")  # absent: not an error


def test_namespaces_are_separate_and_overwrite_is_idempotent(store: BlobStore) -> None:
    store.put(Namespace.ORIGINAL, "a/b.dcm", b"one")
    store.put(Namespace.ORIGINAL, "a/b.dcm", b"two")
    assert store.get(Namespace.ORIGINAL, "a/b.dcm") == b"two"
    with pytest.raises(BlobNotFound):
        store.get(Namespace.DEIDENTIFIED, "a/b.dcm")


def test_large_object_round_trip(store: BlobStore) -> None:
    data = bytes(range(256)) * (24 * 1024 * 4)  # 24 MiB
    ref = store.put(Namespace.ORIGINAL, "big/object.dcm", data)
    assert store.get_verified(ref) == data


def test_the_head_of_an_object(store: BlobStore) -> None:
    data = bytes(range(256)) * 400
    store.put(Namespace.ORIGINAL, "1.2/1.2.3/head.dcm", data)
    assert store.get_head(Namespace.ORIGINAL, "1.2/1.2.3/head.dcm", 1000) == data[:1000]
    assert store.get_head(Namespace.ORIGINAL, "1.2/1.2.3/head.dcm", 10**6) == data
    store.put(Namespace.ORIGINAL, "1.2/1.2.3/empty.dcm", b"")
    assert store.get_head(Namespace.ORIGINAL, "1.2/1.2.3/empty.dcm", 1000) == b""
    with pytest.raises(BlobNotFound):
        store.get_head(Namespace.ORIGINAL, "1.2/1.2.3/absent.dcm", 1000)


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "",
        "a//b",
        ".",
        "a/..",
        "a\\b",
        "a/b\n",
        "a/.hidden",
        "a/",
        "/".join("s" * 9),
        "a/" + "x" * 129,
    ],
)
def test_hostile_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKey):
        store.put(Namespace.ORIGINAL, key, b"x")


def test_corruption_is_detected(store: BlobStore, tmp_path: Path) -> None:
    ref = store.put(Namespace.ORIGINAL, "c/d.dcm", b"original bytes")
    if isinstance(store, FilesystemBlobStore):
        (store.root / "original" / "c" / "d.dcm").write_bytes(b"tampered bytes")
    else:
        # Another writer replaces the object behind the reference's back.
        store.put(Namespace.ORIGINAL, "c/d.dcm", b"tampered bytes")
    with pytest.raises(ChecksumMismatch):
        store.get_verified(ref)


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_a_transient_failure_that_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    monkeypatch.setattr("dicomflow.kernel.blobs.filesystem.os.fsync", _disk_full)
    with pytest.raises(BackendUnavailable, match="full"):
        store.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", b"DICM")
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
    with pytest.raises(BlobNotFound):
        store.get(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm")


def test_keys_under_a_prefix(store: BlobStore) -> None:
    for key in ("a/b/c1.dcm", "a/b/c2.dcm", "a/bx/c3.dcm", "a/b/d/e.dcm", "z.dcm"):
        store.put(Namespace.ORIGINAL, key, b"x")
    assert sorted(store.keys(Namespace.ORIGINAL, "a/b/")) == [
        "a/b/c1.dcm",
        "a/b/c2.dcm",
        "a/b/d/e.dcm",
    ]
    assert sorted(store.keys(Namespace.ORIGINAL, "a/b/c")) == ["a/b/c1.dcm", "a/b/c2.dcm"]
    assert sorted(store.keys(Namespace.ORIGINAL, "a/b")) == [
        "a/b/c1.dcm",
        "a/b/c2.dcm",
        "a/b/d/e.dcm",
        "a/bx/c3.dcm",
    ]
    assert len(list(store.keys(Namespace.ORIGINAL))) == 5
    assert list(store.keys(Namespace.ORIGINAL, "nothing/here/")) == []
    assert list(store.keys(Namespace.ORIGINAL, "../../")) == []


def test_put_from_copies_a_verified_object_of_another_store(
    store: BlobStore, tmp_path: Path
) -> None:
    spool = FilesystemBlobStore(tmp_path / "spool")
    ref = spool.put(Namespace.SPOOL, "incoming/x.dcm", b"DICM" * 300)
    stored = store.put_from(Namespace.ORIGINAL, "s/t/x.dcm", spool, ref)
    assert stored.sha256 == ref.sha256 and stored.size == ref.size
    spool.delete(Namespace.SPOOL, "incoming/x.dcm")  # freeing the source leaves the copy
    assert store.get_verified(stored) == b"DICM" * 300
    assert store.stat(Namespace.ORIGINAL, "s/t/x.dcm") == stored

    corrupt = spool.put(Namespace.SPOOL, "incoming/y.dcm", b"original")
    (spool.root / "spool" / "incoming" / "y.dcm").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        store.put_from(Namespace.ORIGINAL, "s/t/y.dcm", spool, corrupt)
    with pytest.raises(BlobNotFound):
        store.put_from(Namespace.ORIGINAL, "s/t/z.dcm", spool, ref)  # deleted above
    assert store.stat(Namespace.ORIGINAL, "s/t/y.dcm") is None


def test_put_from_unverified_copies_a_whole_object_and_refuses_a_wrong_size(
    store: BlobStore, tmp_path: Path
) -> None:
    """`verify=False`: the caller vouches for the content; absence and size still count."""
    spool = FilesystemBlobStore(tmp_path / "spool")
    ref = spool.put(Namespace.SPOOL, "incoming/x.dcm", b"DICM" * 300)
    stored = store.put_from(Namespace.ORIGINAL, "s/t/x.dcm", spool, ref, verify=False)
    assert stored.sha256 == ref.sha256 and stored.size == ref.size
    spool.delete(Namespace.SPOOL, "incoming/x.dcm")
    assert store.get_verified(stored) == b"DICM" * 300
    assert store.stat(Namespace.ORIGINAL, "s/t/x.dcm") == stored
    with pytest.raises(BlobNotFound):
        store.put_from(Namespace.ORIGINAL, "s/t/z.dcm", spool, ref, verify=False)
    short = spool.put(Namespace.SPOOL, "incoming/y.dcm", b"original")
    (spool.root / "spool" / "incoming" / "y.dcm").write_bytes(b"cut")
    with pytest.raises(ChecksumMismatch):
        store.put_from(Namespace.ORIGINAL, "s/t/y.dcm", spool, short, verify=False)
    assert store.stat(Namespace.ORIGINAL, "s/t/y.dcm") is None


def test_objects_put_in_a_batch_are_there_when_it_ends(store: BlobStore, tmp_path: Path) -> None:
    spool = FilesystemBlobStore(tmp_path / "spool")
    ref = spool.put(Namespace.SPOOL, "in/a.dcm", b"linked")
    with store.batch():
        first = store.put(Namespace.ORIGINAL, "b/1.dcm", b"one")
        with store.batch():  # nested blocks sync once, at the outermost end
            second = store.put_from(Namespace.ORIGINAL, "b/2.dcm", spool, ref)
    assert store.get_verified(first) == b"one"
    assert store.get_verified(second) == b"linked"
    assert sorted(store.keys(Namespace.ORIGINAL, "b/")) == ["b/1.dcm", "b/2.dcm"]


def test_many_objects_put_in_one_batch(store: BlobStore) -> None:
    with store.batch():
        refs = [store.put(Namespace.ORIGINAL, f"m/{n}.dcm", b"%d" % n * 1000) for n in range(40)]
    assert [store.get_verified(ref) for ref in refs] == [b"%d" % n * 1000 for n in range(40)]


def test_a_batch_whose_write_fails_raises_at_its_end(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred write that fails is a transient failure of the whole batch, never lost."""
    if isinstance(store, FilesystemBlobStore):
        monkeypatch.setattr("dicomflow.kernel.blobs.filesystem.sync_files", _disk_full)
    else:
        real_put = store._client.put_object  # type: ignore[attr-defined]

        def failing_put(bucket: str, key: str, *args: object, **kwargs: object) -> object:
            if key == "f/2.dcm":
                raise OSError("connection reset by peer")
            return real_put(bucket, key, *args, **kwargs)

        monkeypatch.setattr(store._client, "put_object", failing_put)  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailable), store.batch():
        for n in range(4):
            store.put(Namespace.ORIGINAL, f"f/{n}.dcm", b"x")


def test_put_many_stores_each_item_and_reports_a_bad_one_alone(store: BlobStore) -> None:
    items = [("m/1.dcm", b"one"), ("../escape", b"bad"), ("m/n/2.dcm", b"two" * 1000)]
    results = store.put_many(Namespace.SPOOL, items)
    assert len(results) == 3
    assert isinstance(results[1], InvalidBlobKey)
    for (key, data), ref in zip(items[::2], results[::2], strict=True):
        assert not isinstance(ref, Exception), ref
        assert (ref.key, ref.size, ref.sha256) == (key, len(data), sha256_of(data))
        assert store.get_verified(ref) == data
    assert sorted(store.keys(Namespace.SPOOL)) == ["m/1.dcm", "m/n/2.dcm"]
    assert store.put_many(Namespace.SPOOL, []) == []


def test_put_many_outside_the_spool_keeps_checksums(store: BlobStore) -> None:
    results = store.put_many(Namespace.ORIGINAL, [("a/1.dcm", b"one"), ("a/2.dcm", b"two")])
    assert [store.stat(Namespace.ORIGINAL, k) for k in ("a/1.dcm", "a/2.dcm")] == results


def test_dropping_objects_from_the_cache_is_advisory(store: BlobStore) -> None:
    data = b"DICM" * 5000
    ref = store.put(Namespace.ORIGINAL, "c/d/e.dcm", data)
    missing = ref.model_copy(update={"key": "c/d/absent.dcm"})
    store.drop_cached([ref, missing])  # an absent object is not an error
    assert store.get_verified(ref) == data
    assert store.stat(Namespace.ORIGINAL, "c/d/e.dcm") == ref
