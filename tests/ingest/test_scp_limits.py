"""Limits of the SCP on both acceptors: object size and concurrent associations.

An association that proposes only storage is served by the fast path; one that also proposes
a context the fast path does not take (here C-FIND, which this bare SCP does not support) goes
to pynetdicom. Each refusal is a clear status and the server keeps serving.
"""

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomflow.ingest.receiver import DurableReceiver
from dicomflow.ingest.scp import start_scp
from dicomflow.kernel.backends import open_bus, open_spool
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.events import Topic
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, make_instance

PATHS = {
    "fast-path": (CTImageStorage,),
    "pynetdicom": (CTImageStorage, StudyRootQueryRetrieveInformationModelFind),
}


@pytest.fixture
def limited(settings: Settings) -> Iterator[tuple[Settings, EventBus]]:
    settings = settings.model_copy(
        update={"max_object_bytes": 200_000, "dicom_max_associations": 2}
    )
    bus = open_bus(settings)
    receiver = DurableReceiver(open_spool(settings), bus, settings.max_object_bytes)
    server = start_scp(settings, receiver)
    yield settings, bus
    server.shutdown()
    receiver.close()
    bus.close()


def associate(settings: Settings, contexts: tuple[str, ...]) -> Association:
    ae = AE(ae_title="LIMITS")
    for context in (*contexts, Verification):
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)


def instance(rows: int, number: int = 0) -> Dataset:
    return make_instance(PatientSpec(patient_id="LIMITS"), 0, 0, number, rows=rows, columns=rows)


def spooled(settings: Settings) -> list[str]:
    """Spool files written (not the empty names the spool prepares in advance)."""
    return [str(p) for p in settings.spool_dir.rglob("*") if p.is_file() and p.stat().st_size]


@pytest.mark.parametrize("path", PATHS)
def test_an_object_over_the_limit_is_refused_and_nothing_is_written(
    limited: tuple[Settings, EventBus], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, bus = limited
    # Both acceptors drop the bytes past the limit while receiving: the over-size object
    # never reaches the receiver whole (it would be held in memory first).
    handed: list[int] = []
    receive = DurableReceiver.receive

    def spy(self: DurableReceiver, data: bytes, *args: Any) -> Any:
        handed.append(len(data))
        return receive(self, data, *args)

    monkeypatch.setattr(DurableReceiver, "receive", spy)
    assoc = associate(settings, PATHS[path])
    assert assoc.is_established
    try:
        too_large = assoc.send_c_store(instance(rows=512))  # 512 KiB of pixels
        small = assoc.send_c_store(instance(rows=64, number=1))
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert too_large.Status == 0xA700
    assert "exceeds the limit of 200000 bytes" in too_large.ErrorComment
    assert small.Status == 0x0000  # the same association goes on
    assert len(bus.read(bus.topic(Topic.RECEIVED))) == 1
    assert len(spooled(settings)) == 1  # only the small one: nothing half-written
    assert len(handed) == 1 and handed[0] < settings.max_object_bytes


@pytest.mark.parametrize("path", PATHS)
def test_associations_past_the_limit_are_rejected_and_the_others_served(
    limited: tuple[Settings, EventBus], path: str
) -> None:
    settings, _ = limited
    # Held open: one on each acceptor, so that the count spans both.
    held = [associate(settings, PATHS["fast-path"]), associate(settings, PATHS["pynetdicom"])]
    try:
        assert all(assoc.is_established for assoc in held)
        extra = associate(settings, PATHS[path])
        assert extra.is_rejected
        primitive = extra.acceptor.primitive
        assert primitive is not None
        # rejected-transient, service-provider (presentation), local-limit-exceeded
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
        for assoc in held:
            assert assoc.send_c_store(instance(rows=64)).Status == 0
    finally:
        for assoc in held:
            assoc.release()
    # Freed slots are usable again (an acceptor thread may take a moment to end).
    deadline = time.monotonic() + 10
    again = associate(settings, PATHS[path])
    while again.is_rejected and time.monotonic() < deadline:
        time.sleep(0.1)
        again = associate(settings, PATHS[path])
    assert again.is_established
    again.release()


def test_connections_without_a_request_hold_no_association(
    limited: tuple[Settings, EventBus],
) -> None:
    settings, _ = limited
    for _ in range(5):  # port probes, health checks: connect, close
        with socket.create_connection(("127.0.0.1", settings.dicom_port)):
            pass
        time.sleep(0.05)
    time.sleep(0.5)
    held = [associate(settings, PATHS["fast-path"]), associate(settings, PATHS["pynetdicom"])]
    try:
        assert all(assoc.is_established for assoc in held)
    finally:
        for assoc in held:
            assoc.release()
