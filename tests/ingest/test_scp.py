"""The SCP over loopback with pynetdicom as the SCU: durable success, clear refusals."""

import errno
from collections.abc import Iterator
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomflow.ingest.receiver import DurableReceiver
from dicomflow.ingest.scp import start_scp
from dicomflow.kernel.backends import open_bus, open_spool
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.events import Namespace, ObjectReceived, Topic, decode_event
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
        status: Dataset = assoc.send_c_store(ds)
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
