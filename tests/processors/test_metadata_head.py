"""The metadata processor reads an object's first bytes when they hold its whole header: the
result must be the whole object's, whatever the head's size, and the object is read whole
(and verified) whenever the head does not end inside its pixel data element."""

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_files

from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.processors import metadata
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.metadata import read_metadata, stored_metadata
from dicomflow.synthetic import PatientSpec, make_instance
from tests.processors.test_metadata_fast import encode

TESTDATA = sorted(path for path in get_testdata_files() if Path(path).is_file())


def _outcome(reader: Any, *args: Any) -> tuple[str, ...]:
    try:
        dicom_json, fields = reader(*args)
    except PoisonEvent as exc:
        return ("poison", str(exc).rsplit(": ", 1)[-1])
    return ("read", json.dumps(dicom_json), json.dumps(fields))


def _stored(tmp_path: Path, data: bytes) -> tuple[BlobStore, BlobRef]:
    store = FilesystemBlobStore(tmp_path / "blobs")
    return store, store.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", data)


@pytest.mark.parametrize("head", [200, 1024, 4096])
@pytest.mark.parametrize("path", TESTDATA, ids=[Path(p).name for p in TESTDATA])
def test_any_head_gives_the_whole_objects_metadata(
    path: str, head: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(path).read_bytes()
    store, ref = _stored(tmp_path, data)
    monkeypatch.setattr(metadata, "HEAD_BYTES", head)
    assert _outcome(stored_metadata, store, ref) == _outcome(read_metadata, data)


def _spy_whole_reads(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> list[BlobRef]:
    reads: list[BlobRef] = []
    real = store.get_verified

    def spy(ref: BlobRef) -> bytes:
        reads.append(ref)
        return real(ref)

    monkeypatch.setattr(store, "get_verified", spy)
    return reads


def test_a_ct_object_is_read_up_to_its_pixel_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(make_instance(PatientSpec(), 0, 0, 0, rows=512, columns=512))
    assert len(data) > 8 * metadata.HEAD_BYTES
    store, ref = _stored(tmp_path, data)
    reads = _spy_whole_reads(store, monkeypatch)
    assert _outcome(stored_metadata, store, ref) == _outcome(read_metadata, data)
    assert reads == []


def test_a_header_longer_than_the_head_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=512, columns=512)
    ds.ImageComments = "x" * (metadata.HEAD_BYTES + 10)  # pushes the pixel data out of the head
    data = encode(ds)
    store, ref = _stored(tmp_path, data)
    reads = _spy_whole_reads(store, monkeypatch)
    assert _outcome(stored_metadata, store, ref) == _outcome(read_metadata, data)
    assert reads == [ref]


@pytest.mark.parametrize("size", [100, metadata.HEAD_BYTES + 1])
def test_a_missing_or_unreadable_object_is_a_poison_event_naming_it(
    tmp_path: Path, size: int
) -> None:
    store, ref = _stored(tmp_path, b"\0" * size)
    with pytest.raises(PoisonEvent) as unreadable:
        stored_metadata(store, ref)
    assert str(unreadable.value).startswith("object original/1.2/1.2.3/1.2.3.4.dcm: ")
    store.delete(ref.namespace, ref.key)
    with pytest.raises(PoisonEvent) as missing:
        stored_metadata(store, ref)
    assert str(missing.value).startswith("object original/1.2/1.2.3/1.2.3.4.dcm cannot be read: ")
    assert ": object " not in str(missing.value)  # named once, not once per layer
