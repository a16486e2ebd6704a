"""C-FIND on the direct acceptor: served there (not by pynetdicom), answering as pynetdicom did.

An association that proposes only C-FIND (and storage, Verification) is served by the direct
acceptor; one that also proposes C-MOVE or C-GET by pynetdicom. Several tests speak DIMSE
over a raw socket, with PDUs and command sets encoded by pynetdicom's own classes (an
encoder independent of the one under test): the very same bytes go to both acceptors and
their responses must be identical.
"""

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_FIND_RQ
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.ingest.audit import DimseAudit
from dicomflow.ingest.findpath import FindRequest, FindService
from dicomflow.ingest.scp import StoreServer
from dicomflow.kernel.audit import AuditAction, AuditTrail
from dicomflow.kernel.backends import open_bus
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import iter_study_tree
from tests.api.conftest import Archive, QueryRetrieveSCP, open_archive, running_scp
from tests.api.test_dimse import UNREADABLE_LEVEL_IDENTIFIER, identifier
from tests.api.test_dimse_access import (
    BrokenTrail,
    SlowIndex,
    StorageSCP,
    access_settings,
    associate,
    final_statuses,
    study_query,
)
from tests.conftest import free_port
from tests.e2e.conftest import dcmtk

FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
PENDING = (0xFF00, 0xFF01)


@pytest.fixture(scope="module")
def destination() -> Iterator[StorageSCP]:
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    scp = StorageSCP("DEST", [(CTImageStorage, syntaxes)])
    yield scp
    scp.server.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, destination: StorageSCP) -> Iterator[Archive]:
    settings = access_settings(tmp_path_factory.mktemp("fastfind"), destination.port)
    with open_archive(settings) as opened:
        # 3 patients x 1 study x 2 series x 3 instances
        opened.add(iter_study_tree(patients=3, series_per_study=2, instances_per_series=3))
        yield opened


@pytest.fixture(scope="module")
def trail(archive: Archive) -> Iterator[AuditTrail]:
    bus = open_bus(archive.settings)
    audit_trail = AuditTrail(bus)
    yield audit_trail
    audit_trail.close()
    bus.close()


@pytest.fixture(scope="module")
def scp(archive: Archive, trail: AuditTrail) -> Iterator[QueryRetrieveSCP]:
    with running_scp(archive, audit=DimseAudit(trail)) as running:
        yield running


def another_port(archive: Archive) -> Settings:
    """The archive's settings with a port of its own (the module's SCP holds the other)."""
    return archive.settings.model_copy(update={"dicom_port": free_port()})


def served_by(scp: QueryRetrieveSCP) -> tuple[int, int]:
    """(associations open on the direct acceptor, on pynetdicom)."""
    server = scp.server
    assert isinstance(server, StoreServer) and server.fast is not None
    pynetdicom = sum(1 for assoc in server.ae.active_associations if assoc.is_acceptor)
    return server.fast.active, pynetdicom


def wait_until_served(scp: QueryRetrieveSCP, expected: tuple[int, int]) -> None:
    deadline = time.monotonic() + 5
    while served_by(scp) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served_by(scp) == expected


# --- which acceptor -------------------------------------------------------------------------


def test_a_find_association_is_served_by_the_direct_acceptor(scp: QueryRetrieveSCP) -> None:
    assoc = associate(scp.port, "FINDER", FIND, PATIENT_FIND, Verification)
    assert assoc.is_established
    try:
        wait_until_served(scp, (1, 0))
        responses = list(assoc.send_c_find(study_query(), FIND))
        assert [s.Status for s, _ in responses] == [0xFF00] * 3 + [0]
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    wait_until_served(scp, (0, 0))


def test_an_association_that_proposes_c_move_goes_to_pynetdicom(scp: QueryRetrieveSCP) -> None:
    assoc = associate(scp.port, "ALL", FIND, MOVE)
    assert assoc.is_established
    try:
        wait_until_served(scp, (0, 1))
        assert len(final_statuses(assoc.send_c_find(study_query(), FIND))) == 1
    finally:
        assoc.release()


@contextmanager
def counting_scp(archive: Archive) -> Iterator[tuple[QueryRetrieveSCP, list[FindRequest]]]:
    """An SCP of its own whose direct acceptor records the requests it hands to the service."""
    calls: list[FindRequest] = []
    with running_scp(archive, another_port(archive)) as running:
        server = running.server
        assert isinstance(server, StoreServer) and server.fast is not None
        original = server.fast.find
        assert original is not None
        assert original.handler == running.service.find_encoded

        def counting(request: FindRequest) -> Any:
            calls.append(request)
            return original.handler(request)

        server.fast.find = FindService(counting, original.contexts)
        yield running, calls


def test_the_fast_path_runs_the_injected_handler(archive: Archive) -> None:
    """The query is the service's (`find_encoded`), reached through the ServiceExtension."""
    with counting_scp(archive) as (running, calls):
        assoc = associate(running.port, "FINDER", FIND)
        responses = list(assoc.send_c_find(study_query(), FIND))
        assoc.release()
    assert len(responses) == 4
    [request] = calls
    assert (request.calling_ae, request.host) == ("FINDER", "127.0.0.1")
    assert request.transfer_syntax == ExplicitVRLittleEndian


# --- the guard, the audit, the limits on the fast path --------------------------------------


def test_an_ae_that_may_not_query_is_rejected_or_refused(scp: QueryRetrieveSCP) -> None:
    # FIND alone: the association is rejected (permanent, service-user, AE not recognized).
    rejected = associate(scp.port, "STORER", FIND)
    assert rejected.is_rejected
    primitive = rejected.acceptor.primitive
    assert primitive is not None
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (1, 1, 3)
    # With storage too it is accepted (STORER may store) and the C-FIND refused: 0x0124.
    assoc = associate(scp.port, "STORER", CTImageStorage, FIND)
    assert assoc.is_established
    try:
        wait_until_served(scp, (1, 0))
        [refused] = final_statuses(assoc.send_c_find(study_query(), FIND))
    finally:
        assoc.release()
    assert refused.Status == 0x0124
    assert "may not query" in refused.ErrorComment


def test_the_query_is_audited(scp: QueryRetrieveSCP, trail: AuditTrail) -> None:
    assoc = associate(scp.port, "LOCAL", FIND)
    list(assoc.send_c_find(identifier("STUDY", PatientID="", StudyInstanceUID=""), FIND))
    assoc.release()
    [query] = [e for e in trail.search(action=AuditAction.QUERY, limit=1000) if e.user == "LOCAL"]
    assert query.channel == "dimse" and query.source == "LOCAL@127.0.0.1"
    assert query.target == "C-FIND Study Root STUDY" and len(query.study_uids) == 3


def test_no_answer_without_an_audit_trail(tmp_path: Path, destination: StorageSCP) -> None:
    settings = access_settings(tmp_path, destination.port)
    with open_archive(settings) as archive:
        archive.add(iter_study_tree(patients=1, series_per_study=1, instances_per_series=1))
        with running_scp(archive, audit=DimseAudit(BrokenTrail())) as running:
            assoc = associate(running.port, "ALL", FIND)
            wait_until_served(running, (1, 0))
            responses = list(assoc.send_c_find(study_query(), FIND))
            assoc.release()
    assert [status.Status for status, _ in responses] == [0xA700]
    assert "audit trail unavailable" in responses[0][0].ErrorComment


def test_a_slow_query_answers_out_of_resources(tmp_path: Path, destination: StorageSCP) -> None:
    settings = access_settings(tmp_path, destination.port, query_timeout=0.3)
    with open_archive(settings) as archive:
        archive.add(iter_study_tree(patients=1, series_per_study=1, instances_per_series=1))
        slow: Any = SlowIndex(archive.index, delay=3)
        with running_scp(archive, index=slow) as running:
            started = time.monotonic()
            assoc = associate(running.port, "ALL", FIND, Verification)
            wait_until_served(running, (1, 0))
            [final] = final_statuses(assoc.send_c_find(study_query(), FIND))
            assert assoc.send_c_echo().Status == 0  # still serving
            assoc.release()
            assert time.monotonic() - started < 3
    assert final.Status == 0xA700
    assert "timed out" in final.ErrorComment


# --- raw DIMSE: the same bytes to both acceptors --------------------------------------------


class RawAssociation:
    """An association over a plain socket; PDUs and messages encoded by pynetdicom."""

    def __init__(self, port: int, *contexts: tuple[str, list[str]], calling: str = "ALL") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = calling
        primitive.called_ae_title = "DICOMFLOW"
        primitive.presentation_context_definition_list = [
            build_context(abstract, syntaxes) for abstract, syntaxes in contexts
        ]
        for number, context in enumerate(primitive.presentation_context_definition_list):
            context.context_id = 2 * number + 1
        length = MaximumLengthNotification()
        length.maximum_length_received = 16384
        primitive.user_information = [length]
        self.sock.sendall(A_ASSOCIATE_RQ(primitive).encode())
        kind, body = self.read_pdu()
        assert kind == 0x02, f"association not accepted: PDU 0x{kind:02X} {body.hex()}"
        self.message_id = 0

    def _recv(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "the connection was closed"
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes]:
        head = self._recv(6)
        return head[0], self._recv(int.from_bytes(head[2:6], "big"))

    def find_request(self, identifier: bytes, sop_class: str = FIND, context_id: int = 1) -> bytes:
        self.message_id += 1
        request = C_FIND()
        request.MessageID = self.message_id
        request.AffectedSOPClassUID = sop_class
        request.Priority = 2
        request.Identifier = BytesIO(identifier)
        return self._encode(C_FIND_RQ(), request, context_id)

    def cancel_request(self, context_id: int = 1) -> bytes:
        cancel = C_CANCEL()
        cancel.MessageIDBeingRespondedTo = self.message_id
        return self._encode(C_CANCEL_RQ(), cancel, context_id)

    @staticmethod
    def _encode(message: Any, primitive: Any, context_id: int) -> bytes:
        message.primitive_to_message(primitive)
        return b"".join(
            P_DATA_TF(p_data).encode() for p_data in message.encode_msg(context_id, 16384)
        )

    def responses(self) -> list[tuple[bytes, bytes]]:
        """(command set, data set) of every response up to the final one, as received."""
        out: list[tuple[bytes, bytes]] = []
        command, data, command_done, data_done = b"", b"", False, False
        while True:
            kind, body = self.read_pdu()
            assert kind == 0x04, f"PDU 0x{kind:02X} {body.hex()}"
            pos = 0
            while pos < len(body):
                length = int.from_bytes(body[pos : pos + 4], "big")
                header, fragment = body[pos + 5], body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if header & 0x01:
                    command += fragment
                    command_done = bool(header & 0x02)
                else:
                    data += fragment
                    data_done = bool(header & 0x02)
                if command_done and (data_done or not _has_dataset(command)):
                    out.append((command, data))
                    if _status(command) not in PENDING:
                        return out
                    command, data, command_done, data_done = b"", b"", False, False

    def close(self) -> None:
        self.sock.sendall(bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
        assert self.read_pdu()[0] == 0x06
        self.sock.close()


def _command(command: bytes) -> Dataset:
    return read_dataset(BytesIO(command), True, True)


def _has_dataset(command: bytes) -> bool:
    return int(_command(command).CommandDataSetType) != 0x0101


def _status(command: bytes) -> int:
    return int(_command(command).Status)


PATHS = {
    "fast": (FIND, PATIENT_FIND),
    "pynetdicom": (FIND, PATIENT_FIND, MOVE),
}


def exchange(port: int, path: str, identifier: bytes, syntax: str, model: str = FIND) -> Any:
    contexts = [(abstract, [syntax]) for abstract in PATHS[path]]
    raw = RawAssociation(port, *contexts)
    try:
        context_id = 1 if model == FIND else 3
        raw.sock.sendall(raw.find_request(identifier, model, context_id))
        return raw.responses()
    finally:
        raw.close()


QUERIES = {
    "study": (
        identifier("STUDY", StudyInstanceUID="", PatientName="D*", ModalitiesInStudy=""),
        FIND,
    ),
    "image": (identifier("IMAGE", SOPInstanceUID="", InstanceNumber="", Rows=""), FIND),
    "patient": (
        identifier("PATIENT", PatientID="", NumberOfPatientRelatedStudies=""),
        PATIENT_FIND,
    ),
    "unsupported-key": (identifier("STUDY", StudyInstanceUID="", ReferencedStudySequence=[]), FIND),
    "wrong-level": (identifier("PATIENT", PatientID=""), FIND),
    "bad-date": (identifier("STUDY", StudyDate="yesterday"), FIND),
}


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("name", list(QUERIES))
def test_both_acceptors_send_the_same_bytes(scp: QueryRetrieveSCP, name: str, syntax: str) -> None:
    query, model = QUERIES[name]
    little = syntax != ExplicitVRBigEndian
    encoded = encode(query, syntax == ImplicitVRLittleEndian, little)
    assert encoded
    fast = exchange(scp.port, "fast", encoded, syntax, model)
    reference = exchange(scp.port, "pynetdicom", encoded, syntax, model)
    assert fast == reference
    assert len(fast) >= 1


@pytest.mark.parametrize(
    ("identifier_bytes", "status"),
    [
        (UNREADABLE_LEVEL_IDENTIFIER, 0xC000),  # a value pydicom cannot read
        (b"\x08\x00\x52\x00\x43\x53\xff\x00STUDY", None),  # a length past the end
        (b"\x01\x02\x03", None),  # not a dataset
    ],
)
def test_malformed_identifiers_are_answered_as_pynetdicom_does(
    scp: QueryRetrieveSCP, identifier_bytes: bytes, status: int | None
) -> None:
    fast = exchange(scp.port, "fast", identifier_bytes, ExplicitVRLittleEndian)
    reference = exchange(scp.port, "pynetdicom", identifier_bytes, ExplicitVRLittleEndian)
    assert fast == reference
    command, data = fast[-1]
    assert data == b""
    assert _status(command) not in PENDING
    if status is not None:
        assert [_status(command) for command, _ in fast] == [status]


def test_cancel_between_matches(scp: QueryRetrieveSCP) -> None:
    raw = RawAssociation(
        scp.port, (FIND, [ExplicitVRLittleEndian]), (Verification, [ImplicitVRLittleEndian])
    )
    try:
        query = encode(identifier("IMAGE", SOPInstanceUID=""), False, True)
        # The C-CANCEL-RQ follows the request at once: it waits before the first match.
        raw.sock.sendall(raw.find_request(query) + raw.cancel_request())
        responses = raw.responses()
        assert [_status(command) for command, _ in responses] == [0xFE00]
        # A late C-CANCEL-RQ (for a C-FIND answered already) is ignored, and the
        # association goes on.
        raw.sock.sendall(raw.find_request(query))
        assert len(raw.responses()) == 19
        raw.sock.sendall(raw.cancel_request())
        raw.sock.sendall(raw.find_request(encode(study_query(), False, True)))
        assert [_status(command) for command, _ in raw.responses()] == [0xFF00] * 3 + [0]
    finally:
        raw.close()


def test_an_abort_during_the_answers_ends_the_association(scp: QueryRetrieveSCP) -> None:
    raw = RawAssociation(scp.port, (FIND, [ExplicitVRLittleEndian]))
    query = encode(identifier("IMAGE", SOPInstanceUID=""), False, True)
    raw.sock.sendall(raw.find_request(query) + bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
    raw.sock.close()
    wait_until_served(scp, (0, 0))
    assoc = associate(scp.port, "FINDER", FIND)  # the SCP still serves
    assert len(list(assoc.send_c_find(study_query(), FIND))) == 4
    assoc.release()


def test_a_release_during_the_answers_ends_them_and_is_answered(scp: QueryRetrieveSCP) -> None:
    raw = RawAssociation(scp.port, (FIND, [ExplicitVRLittleEndian]))
    query = encode(identifier("IMAGE", SOPInstanceUID=""), False, True)
    raw.sock.sendall(raw.find_request(query) + bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
    kinds = []
    while not kinds or kinds[-1] == 0x04:
        kind, body = raw.read_pdu()
        kinds.append(kind)
        if kind == 0x04 and body[5] & 0x01:  # a response command: never a failure
            assert _status(body[6:]) in PENDING
    raw.sock.close()
    assert kinds[-1] == 0x06  # A-RELEASE-RP
    wait_until_served(scp, (0, 0))


# --- DCMTK findscu --------------------------------------------------------------------------


def test_dcmtk_findscu_is_served_by_the_direct_acceptor(archive: Archive, tmp_path: Path) -> None:
    with counting_scp(archive) as (running, calls):
        keys = [
            "QueryRetrieveLevel=STUDY",
            "PatientName=D*",
            "StudyInstanceUID",
            "ModalitiesInStudy",
        ]
        args = [dcmtk("findscu"), "-v", "-S", "-aet", "FINDER", "-aec", "DICOMFLOW", "-X"]
        args += ["-od", str(tmp_path)]
        for key in keys:
            args += ["-k", key]
        result = subprocess.run(
            [*args, "127.0.0.1", str(running.port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [pydicom.dcmread(path) for path in sorted(tmp_path.glob("rsp*.dcm"))]
    assert len(answers) == 1 and str(answers[0].PatientName).startswith("D")
    assert sorted(answers[0].ModalitiesInStudy) == ["CT", "MR"]
    assert len(calls) == 1 and calls[0].calling_ae == "FINDER"


def test_an_identifier_over_the_size_limit_is_refused(archive: Archive) -> None:
    limited = another_port(archive).model_copy(update={"max_object_bytes": 200})
    with running_scp(archive, limited) as running:
        assoc = associate(running.port, "FINDER", FIND)
        wait_until_served(running, (1, 0))
        [refused] = final_statuses(
            assoc.send_c_find(identifier("STUDY", PatientName="D" * 300), FIND)
        )
        [*answers, final] = list(assoc.send_c_find(study_query(), FIND))  # it goes on
        assoc.release()
    assert refused.Status == 0xA700
    assert "exceeds the limit of 200 bytes" in refused.ErrorComment
    assert len(answers) == 3 and final[0].Status == 0


def test_find_associations_count_against_the_shared_limit(archive: Archive) -> None:
    limited = another_port(archive).model_copy(update={"dicom_max_associations": 2})
    with running_scp(archive, limited) as running:
        held = [associate(running.port, "FINDER", FIND), associate(running.port, "ALL", MOVE)]
        try:
            wait_until_served(running, (1, 1))  # one on each acceptor
            extra = associate(running.port, "FINDER", FIND)
            assert extra.is_rejected
            primitive = extra.acceptor.primitive
            assert primitive is not None
            assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
            assert len(list(held[0].send_c_find(study_query(), FIND))) == 4
        finally:
            for assoc in held:
                assoc.release()
