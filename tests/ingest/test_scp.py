"""The SCP over loopback with pynetdicom as the SCU: durable success, clear refusals."""

import errno
import time
from collections.abc import Iterator
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomflow.ingest.exceptions import InvalidObject
from dicomflow.ingest.receiver import DurableReceiver, file_meta_bytes, identity_of_file_bytes
from dicomflow.ingest.scp import start_scp, store_encoded
from dicomflow.kernel.backends import open_bus, open_spool
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.events import (
    Namespace,
    ObjectReceived,
    Source,
    SourceKind,
    Topic,
    decode_event,
)
from dicomflow.kernel.settings import Settings


@pytest.fixture
def scp(settings: Settings) -> Iterator[tuple[Settings, EventBus, DurableReceiver]]:
    bus = open_bus(settings)
    receiver = DurableReceiver(open_spool(settings), bus, max_object_bytes=10_000_000)
    server = start_scp(settings, receiver)
    yield settings, bus, receiver
    server.shutdown()
    receiver.close()
    bus.close()


def _send(settings: Settings, ds: Dataset) -> Dataset:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        started = time.monotonic()
        status: Dataset = assoc.send_c_store(ds)
        if "Status" not in status:
            # pynetdicom returns an empty Dataset when no response came: say what happened to
            # the association instead of failing later on a missing attribute.
            pytest.fail(
                f"no C-STORE response after {time.monotonic() - started:.1f} s: "
                f"aborted={assoc.is_aborted} established={assoc.is_established} "
                f"released={assoc.is_released}"
            )
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    return status


def test_store_is_durable_before_success(scp, ct_instance: Dataset) -> None:  # type: ignore[no-untyped-def]
    settings, bus, receiver = scp
    status = _send(settings, ct_instance)
    assert status.Status == 0x0000
    records = bus.read(bus.topic(Topic.RECEIVED))
    assert len(records) == 1
    event = decode_event(records[0].value, ObjectReceived)
    assert records[0].key == ct_instance.StudyInstanceUID
    assert event.identity.sop_instance_uid == ct_instance.SOPInstanceUID
    assert event.source.calling_ae == "TESTSCU"
    data = receiver.spool.get_verified(event.blob)
    assert event.blob.namespace == Namespace.SPOOL
    stored = pydicom.dcmread(BytesIO(data))
    assert stored.PixelData == ct_instance.PixelData
    assert stored.PatientName == ct_instance.PatientName


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "../../x"),
        ("SeriesInstanceUID", "1.2.3/../4"),
        ("StudyInstanceUID", ""),
    ],
)
def test_hostile_uids_are_refused_with_a_reason(  # type: ignore[no-untyped-def]
    scp, ct_instance: Dataset, attribute: str, value: str
) -> None:
    settings, bus, _ = scp
    setattr(ct_instance, attribute, value)
    status = _send(settings, ct_instance)
    assert status.Status == 0xC210
    assert attribute in status.ErrorComment
    assert bus.read(bus.topic(Topic.RECEIVED)) == []


def test_object_over_the_limit_is_refused(scp, ct_instance: Dataset) -> None:  # type: ignore[no-untyped-def]
    settings, bus, receiver = scp
    receiver.max_object_bytes = 1000
    status = _send(settings, ct_instance)
    assert status.Status == 0xA700
    assert "exceeds" in status.ErrorComment
    assert bus.read(bus.topic(Topic.RECEIVED)) == []


def test_an_unreadable_uid_element_is_refused_not_a_processing_failure(  # type: ignore[no-untyped-def]
    scp, ct_instance: Dataset
) -> None:
    """Found by fuzzing: a UID element with a VR that is no VR passed pydicom's lazy decode,
    then raised when read: C-STORE answered "processing failure" and STOW-RS a 500."""
    _, bus, receiver = scp
    encoded = encode(ct_instance, False, True)
    assert encoded is not None
    at = encoded.index(b"\x20\x00\x0e\x00UI")  # SeriesInstanceUID
    broken = encoded[: at + 4] + b"U," + encoded[at + 6 :]
    syntax = "1.2.840.10008.1.2.1"
    status = store_encoded(receiver, broken, syntax, "", "", Source(kind=SourceKind.DIMSE))
    assert isinstance(status, Dataset)
    assert status.Status == 0xC210
    assert "SeriesInstanceUID cannot be read" in status.ErrorComment
    meta = file_meta_bytes(str(ct_instance.SOPClassUID), str(ct_instance.SOPInstanceUID), syntax)
    with pytest.raises(InvalidObject, match="SeriesInstanceUID cannot be read"):
        identity_of_file_bytes(meta + broken)
    assert bus.read(bus.topic(Topic.RECEIVED)) == []


def test_the_file_meta_takes_the_dataset_uids_not_the_command_ones(  # type: ignore[no-untyped-def]
    scp, ct_instance: Dataset
) -> None:
    """Found by fuzzing: a non-ASCII Affected SOP Class UID in the C-STORE command (pynetdicom
    decodes it as given) went into the file meta: a processing failure (0x0110)."""
    _, bus, receiver = scp
    encoded = encode(ct_instance, False, True)
    assert encoded is not None
    source = Source(kind=SourceKind.DIMSE)
    command_class = "1.2.840.10008.5.1.4.1.1.2\u00e4"
    status = store_encoded(receiver, encoded, "1.2.840.10008.1.2.1", command_class, "", source)
    assert status == 0x0000
    [record] = bus.read(bus.topic(Topic.RECEIVED))
    event = decode_event(record.value, ObjectReceived)
    stored = pydicom.dcmread(BytesIO(receiver.spool.get_verified(event.blob)))
    assert stored.file_meta.MediaStorageSOPClassUID == ct_instance.SOPClassUID
    assert stored.file_meta.MediaStorageSOPInstanceUID == ct_instance.SOPInstanceUID


def test_a_full_spool_is_out_of_resources_never_success(  # type: ignore[no-untyped-def]
    scp, ct_instance: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, bus, _receiver = scp

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("dicomflow.kernel.blobs.filesystem.os.fsync", disk_full)
        status = _send(settings, ct_instance)
    assert status.Status == 0xA700
    assert status.ErrorComment.startswith("cannot write to the spool: disk full")
    assert bus.read(bus.topic(Topic.RECEIVED)) == []
    assert _send(settings, ct_instance).Status == 0x0000  # space freed
