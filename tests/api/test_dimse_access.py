"""Every DIMSE service refuses an AE that is not allowed; every access to originals is audited.

pynetdicom is the SCU; the SCP runs with allowlists for each service and an audit trail on the
embedded bus. Associations that propose only storage go to the fast path, the others to
pynetdicom: both are exercised.
"""

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.indexer.base import SearchRequest, SearchResult, StudyIndex
from dicomflow.ingest.audit import DimseAudit
from dicomflow.kernel.audit import AuditAction, AuditEvent, AuditTrail
from dicomflow.kernel.backends import open_bus
from dicomflow.kernel.exceptions import BackendUnavailable
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance
from tests.api.conftest import Archive, QueryRetrieveSCP, open_archive, running_scp
from tests.api.test_dimse import StorageSCP, identifier
from tests.conftest import free_port

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
ALL_SERVICES = (Verification, CTImageStorage, FIND, MOVE, GET)

NOT_AUTHORIZED = 0x0124
REJECTED_NOT_RECOGNIZED = (1, 1, 3)


@pytest.fixture(scope="module")
def destination() -> Iterator[StorageSCP]:
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    scp = StorageSCP("DEST", [(CTImageStorage, syntaxes), (MRImageStorage, syntaxes)])
    yield scp
    scp.server.shutdown()


def access_settings(folder: Path, destination_port: int, **more: Any) -> Settings:
    return Settings(
        data_dir=folder / "data",
        dicom_port=free_port(),
        http_port=free_port(),
        destinations=f"DEST@127.0.0.1:{destination_port},OTHER@127.0.0.1:{destination_port}",
        dicom_allowed_aes="STORER,FINDER,MOVER,GETTER,ALL,LOCAL@127.0.0.1,FAR@192.0.2.0/24",
        dicom_store_aes="STORER,ALL,LOCAL",
        dicom_find_aes="FINDER,ALL,LOCAL,FAR",
        dicom_retrieve_aes="MOVER,GETTER,ALL",
        dicom_move_destinations="MOVER=DEST;ALL=*",
        **more,
    )


class Secured:
    """The SCP with allowlists, its archive and its audit trail."""

    def __init__(self, scp: QueryRetrieveSCP, archive: Archive, trail: AuditTrail) -> None:
        self.scp, self.archive, self.trail = scp, archive, trail

    def events(self, action: AuditAction) -> list[AuditEvent]:
        return self.trail.search(action=action, limit=1000)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, destination: StorageSCP) -> Iterator[Secured]:
    settings = access_settings(tmp_path_factory.mktemp("access"), destination.port)
    bus = open_bus(settings)
    trail = AuditTrail(bus)
    with open_archive(settings) as archive:
        archive.add(iter_study_tree(patients=2, series_per_study=1, instances_per_series=2))
        with running_scp(archive, audit=DimseAudit(trail)) as scp:
            yield Secured(scp, archive, trail)
    trail.close()
    bus.close()


def associate(port: int, calling: str, *contexts: str) -> Association:
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    roles = [build_role(CTImageStorage, scu_role=True, scp_role=True)] if GET in contexts else []
    return ae.associate("127.0.0.1", port, ae_title="DICOMFLOW", ext_neg=roles)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected, "the association was not rejected"
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    return (primitive.result, primitive.result_source, primitive.diagnostic)


def final_statuses(responses: Any) -> list[Dataset]:
    return [status for status, _ in responses if status.Status not in (0xFF00, 0xFF01)]


def study_query() -> Dataset:
    return identifier("STUDY", StudyInstanceUID="", PatientID="")


def retrieve_query(archive: Archive) -> Dataset:
    """A STUDY level retrieve of the first study stored."""
    first = pydicom.dcmread(BytesIO(next(iter(archive.stored.values()))))
    return identifier("STUDY", StudyInstanceUID=first.StudyInstanceUID)


# --- association level: both acceptors ------------------------------------------------------


@pytest.mark.parametrize(
    "contexts",
    [(Verification,), (CTImageStorage,), (FIND,), (MOVE,), (GET,), ALL_SERVICES],
    ids=["echo", "store-fast-path", "find", "move", "get", "all"],
)
def test_an_ae_not_allowed_is_rejected_on_every_kind_of_association(
    secured: Secured, contexts: tuple[str, ...]
) -> None:
    assoc = associate(secured.scp.port, "STRANGER", *contexts)
    assert rejection(assoc) == REJECTED_NOT_RECOGNIZED


@pytest.mark.parametrize(
    ("calling", "service"),
    [
        ("FINDER", CTImageStorage),  # the fast path
        ("STORER", FIND),
        ("FINDER", MOVE),
        ("STORER", GET),
    ],
)
def test_an_association_for_services_the_ae_may_not_use_is_rejected(
    secured: Secured, calling: str, service: str
) -> None:
    assert rejection(associate(secured.scp.port, calling, service)) == REJECTED_NOT_RECOGNIZED


def test_verification_alone_is_open_to_every_allowed_ae(secured: Secured) -> None:
    for calling in ("STORER", "FINDER", "GETTER"):
        assoc = associate(secured.scp.port, calling, Verification)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()


def test_an_ae_bound_to_an_address_is_refused_from_elsewhere(secured: Secured) -> None:
    assoc = associate(secured.scp.port, "LOCAL", CTImageStorage)
    assert assoc.is_established
    assoc.release()
    assert rejection(associate(secured.scp.port, "FAR", FIND)) == REJECTED_NOT_RECOGNIZED


# --- operation level: each service on a mixed association -----------------------------------


def test_store_allowed_and_refused(secured: Secured) -> None:
    ct = make_instance(PatientSpec(patient_id="STORE-ACCESS"), 0, 0, 0)
    assoc = associate(secured.scp.port, "STORER", CTImageStorage)  # the fast path
    assert assoc.is_established
    assert assoc.send_c_store(ct).Status == 0
    assoc.release()
    assoc = associate(secured.scp.port, "FINDER", *ALL_SERVICES)  # pynetdicom
    assert assoc.is_established
    refused = assoc.send_c_store(ct)
    assoc.release()
    assert refused.Status == NOT_AUTHORIZED
    assert "not authorized" in refused.ErrorComment


def test_find_allowed_and_refused(secured: Secured) -> None:
    assoc = associate(secured.scp.port, "FINDER", *ALL_SERVICES)
    responses = list(assoc.send_c_find(study_query(), FIND))
    assoc.release()
    assert len(responses) == 3 and responses[-1][0].Status == 0
    assoc = associate(secured.scp.port, "STORER", *ALL_SERVICES)
    refused = final_statuses(assoc.send_c_find(study_query(), FIND))
    assoc.release()
    assert [s.Status for s in refused] == [NOT_AUTHORIZED]
    assert "may not query" in refused[0].ErrorComment


def test_move_allowed_refused_and_destinations(secured: Secured, destination: StorageSCP) -> None:
    query = retrieve_query(secured.archive)

    def move(calling: str, to: str) -> Dataset:
        assoc = associate(secured.scp.port, calling, *ALL_SERVICES)
        assert assoc.is_established
        statuses = final_statuses(assoc.send_c_move(query, to, MOVE))
        assoc.release()
        assert len(statuses) == 1
        return statuses[0]

    destination.received.clear()
    assert move("MOVER", "DEST").Status == 0
    assert len(destination.received) == 2
    assert move("ALL", "OTHER").Status == 0
    assert move("MOVER", "OTHER").Status == 0xA801  # a destination MOVER may not use
    refused = move("FINDER", "DEST")
    assert refused.Status == NOT_AUTHORIZED
    assert "may not retrieve" in refused.ErrorComment
    assert len(destination.received) == 4  # nothing sent for the refusals


def test_get_allowed_and_refused(secured: Secured) -> None:
    query = retrieve_query(secured.archive)

    def get(calling: str) -> tuple[Dataset, int]:
        received: list[Any] = []
        ae = AE(ae_title=calling)
        for context in ALL_SERVICES:
            ae.add_requested_context(context)
        assoc = ae.associate(
            "127.0.0.1",
            secured.scp.port,
            ae_title="DICOMFLOW",
            ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(event) or 0)],
        )
        assert assoc.is_established
        statuses = final_statuses(assoc.send_c_get(query, GET))
        assoc.release()
        return statuses[0], len(received)

    allowed, _ = get("GETTER")
    assert allowed.Status in (0x0000, 0xB000)  # every sub-operation attempted
    refused, sent = get("STORER")
    assert refused.Status == NOT_AUTHORIZED
    assert sent == 0


# --- audit ----------------------------------------------------------------------------------


def test_refusals_and_accesses_are_audited(secured: Secured) -> None:
    assoc = associate(secured.scp.port, "AUDITED", Verification)
    assert assoc.is_rejected
    assoc = associate(secured.scp.port, "ALL", *ALL_SERVICES)
    list(assoc.send_c_find(identifier("STUDY", PatientID="", StudyInstanceUID=""), FIND))
    query = retrieve_query(secured.archive)
    final_statuses(assoc.send_c_move(query, "DEST", MOVE))
    assoc.release()

    denied = [e for e in secured.events(AuditAction.ACCESS_DENIED) if e.user == "AUDITED"]
    assert denied and denied[0].channel == "dimse"
    assert denied[0].source == "AUDITED@127.0.0.1"
    assert "ALLOWED_AES" in denied[0].detail
    queries = [e for e in secured.events(AuditAction.QUERY) if e.user == "ALL"]
    assert queries and queries[0].namespace == "original"
    assert queries[0].target.startswith("C-FIND")
    assert queries[0].query is not None and queries[0].query.startswith("STUDY")
    assert len(queries[0].study_uids) == 2
    exports = [e for e in secured.events(AuditAction.EXPORT) if e.user == "ALL"]
    assert exports and exports[0].target == "C-MOVE to DEST"
    assert exports[0].study_uids == [query.StudyInstanceUID]
    assert f"StudyInstanceUID={query.StudyInstanceUID}" in (exports[0].query or "")
    gets = secured.events(AuditAction.RETRIEVE)
    assert gets and all(e.target.startswith("C-GET") for e in gets)


# --- limits: query timeout, audit trail unavailable -----------------------------------------


class SlowIndex:
    """An index whose searches take `delay` seconds (the rest is the real index)."""

    def __init__(self, index: StudyIndex, delay: float) -> None:
        self._index, self.delay = index, delay

    def search(self, request: SearchRequest) -> SearchResult:
        time.sleep(self.delay)
        return self._index.search(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


class BrokenTrail(AuditTrail):
    def __init__(self) -> None:
        pass

    def record(self, event: AuditEvent) -> None:
        raise BackendUnavailable("the bus is down")


def test_a_slow_query_answers_out_of_resources_not_a_hang(
    tmp_path: Path, destination: StorageSCP
) -> None:
    settings = access_settings(tmp_path, destination.port, query_timeout=0.3)
    with open_archive(settings) as archive:
        archive.add(iter_study_tree(patients=1, series_per_study=1, instances_per_series=1))
        slow: Any = SlowIndex(archive.index, delay=3)
        with running_scp(archive, index=slow) as scp:
            started = time.monotonic()
            assoc = associate(scp.port, "ALL", *ALL_SERVICES)
            [final] = final_statuses(assoc.send_c_find(study_query(), FIND))
            assert final.Status == 0xA700
            assert "timed out" in final.ErrorComment
            [moved] = final_statuses(assoc.send_c_move(retrieve_query(archive), "DEST", MOVE))
            assert moved.Status == 0xA701
            assert "timed out" in moved.ErrorComment
            assert assoc.send_c_echo().Status == 0  # still serving
            assoc.release()
            assert time.monotonic() - started < 3


def test_no_identified_data_without_an_audit_trail(tmp_path: Path, destination: StorageSCP) -> None:
    settings = access_settings(tmp_path, destination.port)
    with open_archive(settings) as archive:
        archive.add(iter_study_tree(patients=1, series_per_study=1, instances_per_series=1))
        with running_scp(archive, audit=DimseAudit(BrokenTrail())) as scp:
            assoc = associate(scp.port, "ALL", *ALL_SERVICES)
            responses = list(assoc.send_c_find(study_query(), FIND))
            destination.received.clear()
            [moved] = final_statuses(assoc.send_c_move(retrieve_query(archive), "DEST", MOVE))
            assoc.release()
    assert [status.Status for status, _ in responses] == [0xA700]
    assert "audit trail unavailable" in responses[0][0].ErrorComment
    assert moved.Status == 0xA700
    assert destination.received == []
