"""C-FIND, C-MOVE and C-GET SCP over loopback, with pynetdicom as the SCU and the peers."""

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.api.dimse import (
    InformationModel,
    QueryRetrieveService,
    answer_bytes,
    answer_dataset,
    answer_json,
    encode_answer,
    read_find_identifier,
    read_retrieve_identifier,
)
from dicomflow.api.exceptions import IdentifierError
from dicomflow.indexer.base import SearchRequest
from dicomflow.indexer.levels import Level
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance
from tests.api.conftest import Archive, QueryRetrieveSCP, open_archive, running_scp
from tests.conftest import free_port

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind


def tree() -> list[Dataset]:
    # 3 patients (DOE, ROE, SMITH) x 1 study x 2 series (CT, MR) x 3 instances = 18
    return list(iter_study_tree(patients=3, series_per_study=2, instances_per_series=3))


@pytest.fixture(scope="module")
def destination() -> Iterator["StorageSCP"]:
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    scp = StorageSCP("DEST", [(CTImageStorage, syntaxes), (MRImageStorage, syntaxes)])
    yield scp
    scp.server.shutdown()


@pytest.fixture(autouse=True)
def _nothing_received_yet(request: pytest.FixtureRequest) -> None:
    if "destination" in request.fixturenames:
        request.getfixturevalue("destination").received.clear()


def _settings(folder: Path, destination_port: int) -> Settings:
    return Settings(
        data_dir=folder / "data",
        dicom_port=free_port(),
        http_port=free_port(),
        destinations=f"DEST@127.0.0.1:{destination_port},UNREACHABLE@127.0.0.1:{free_port()}",
    )


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, destination: "StorageSCP"
) -> Iterator[Archive]:
    """One archive for the module's tests: they only read it (or put back what they take)."""
    settings = _settings(tmp_path_factory.mktemp("qr"), destination.port)
    with open_archive(settings) as opened:
        yield opened


@pytest.fixture(scope="module")
def filled(archive: Archive) -> list[Dataset]:
    return archive.add(tree())


@pytest.fixture(scope="module")
def qr_scp(archive: Archive, filled: list[Dataset]) -> Iterator[QueryRetrieveSCP]:
    """The SCP, with DEST (and an unreachable UNREACHABLE) as its configured destinations."""
    with running_scp(archive) as scp:
        yield scp


@pytest.fixture
def fresh(tmp_path: Path, destination: "StorageSCP") -> Iterator[tuple[Archive, QueryRetrieveSCP]]:
    """An empty archive and its SCP, for the tests that add their own data."""
    with (
        open_archive(_settings(tmp_path, destination.port)) as empty,
        running_scp(empty) as scp,
    ):
        yield empty, scp


def identifier(level: str, charset: str | None = None, **keys: object) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(
    scp: QueryRetrieveSCP, query: Dataset, model: str = STUDY_FIND
) -> tuple[list[Dataset], Dataset]:
    """(the answers, the final status) of one C-FIND."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMFLOW")
    assert assoc.is_established
    answers: list[Dataset] = []
    final = Dataset()
    try:
        for status, answer in assoc.send_c_find(query, model):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(answer)
            else:
                final = status
    finally:
        assoc.release()
    return answers, final


def test_study_root_every_level_with_computed_keys(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset]
) -> None:
    studies, final = find(
        qr_scp,
        identifier(
            "STUDY",
            StudyInstanceUID="",
            PatientName="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
            StudyDate="",
        ),
    )
    assert final.Status == 0x0000
    assert len(studies) == 3
    for study in studies:
        assert study.QueryRetrieveLevel == "STUDY"
        assert study.NumberOfStudyRelatedSeries == 2
        assert study.NumberOfStudyRelatedInstances == 6
        assert sorted(study.ModalitiesInStudy) == ["CT", "MR"]
        assert "SeriesInstanceUID" not in study  # only the requested keys come back
    study_uid = filled[0].StudyInstanceUID
    series, _ = find(
        qr_scp,
        identifier(
            "SERIES",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    assert sorted(s.Modality for s in series) == ["CT", "MR"]
    assert all(s.NumberOfSeriesRelatedInstances == 3 for s in series)
    assert all(s.StudyInstanceUID == study_uid for s in series)
    images, _ = find(
        qr_scp,
        identifier(
            "IMAGE",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=filled[0].SeriesInstanceUID,
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
        ),
    )
    assert sorted(i.InstanceNumber for i in images) == [1, 2, 3]
    assert {i.SOPInstanceUID for i in images} == {ds.SOPInstanceUID for ds in filled[:3]}


def test_patient_root_every_level(qr_scp: QueryRetrieveSCP, filled: list[Dataset]) -> None:
    patients, final = find(
        qr_scp,
        identifier(
            "PATIENT",
            PatientName="",
            PatientID="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        PATIENT_FIND,
    )
    assert final.Status == 0x0000
    assert sorted(p.PatientID for p in patients) == ["PID0000", "PID0001", "PID0002"]
    for patient in patients:
        assert patient.NumberOfPatientRelatedStudies == 1
        assert patient.NumberOfPatientRelatedSeries == 2
        assert patient.NumberOfPatientRelatedInstances == 6
    studies, _ = find(
        qr_scp, identifier("STUDY", PatientID="PID0001", StudyInstanceUID=""), PATIENT_FIND
    )
    assert len(studies) == 1
    series, _ = find(
        qr_scp,
        identifier(
            "SERIES",
            PatientID="PID0001",
            StudyInstanceUID=studies[0].StudyInstanceUID,
            SeriesInstanceUID="",
        ),
        PATIENT_FIND,
    )
    assert len(series) == 2
    images, _ = find(
        qr_scp,
        identifier(
            "IMAGE",
            PatientID="PID0001",
            StudyInstanceUID=studies[0].StudyInstanceUID,
            SeriesInstanceUID=series[0].SeriesInstanceUID,
            SOPInstanceUID="",
        ),
        PATIENT_FIND,
    )
    assert len(images) == 3


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "DOE^JOHN0"}, {"PID0000"}),  # single value
        ({"PatientName": "doe^john0"}, {"PID0000"}),  # person names: case-insensitive
        ({"PatientName": "*"}, {"PID0000", "PID0001", "PID0002"}),  # universal
        ({"PatientName": "r?E*"}, {"PID0001"}),  # wildcards
        ({"PatientID": "PID000?"}, {"PID0000", "PID0001", "PID0002"}),
        ({"StudyDate": "20240201-20240331"}, {"PID0001", "PID0002"}),  # date range
        ({"StudyDate": "20240301-"}, {"PID0002"}),
        ({"StudyDate": "-20240131"}, {"PID0000"}),
        ({"ModalitiesInStudy": "CT"}, {"PID0000", "PID0001", "PID0002"}),
        ({"PatientName": "x' OR '1'='1"}, set()),  # an injection attempt is just a value
        ({"PatientName": "%"}, set()),
    ],
)
def test_matching_rules(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset], keys: dict[str, str], expected: set[str]
) -> None:
    studies, final = find(qr_scp, identifier("STUDY", **{"PatientID": "", **keys}))
    assert final.Status == 0x0000, final
    assert {s.PatientID for s in studies} == expected


def test_uid_list_matching(qr_scp: QueryRetrieveSCP, filled: list[Dataset]) -> None:
    uids = sorted({ds.StudyInstanceUID for ds in filled})[:2]
    studies, _ = find(qr_scp, identifier("STUDY", StudyInstanceUID=uids))
    assert sorted(s.StudyInstanceUID for s in studies) == uids


def test_specific_character_set_in_queries_and_answers(
    fresh: tuple[Archive, QueryRetrieveSCP],
) -> None:
    archive, qr_scp = fresh
    archive.add(
        [
            make_instance(
                PatientSpec(name="MÜLLER^JÖRG", patient_id="DE1"), 0, 0, 0, rows=8, columns=8
            ),
            _utf8_instance("山田^太郎", "JP1"),
        ]
    )
    # Latin-1 query, Latin-1 answer.
    [latin], _ = find(qr_scp, identifier("STUDY", "ISO_IR 100", PatientName="müller*"))
    assert latin.SpecificCharacterSet == "ISO_IR 100"
    assert str(latin.PatientName) == "MÜLLER^JÖRG"
    # UTF-8 query; UTF-8 answer.
    [utf8], _ = find(qr_scp, identifier("STUDY", "ISO_IR 192", PatientName="山田*"))
    assert utf8.SpecificCharacterSet == "ISO_IR 192"
    assert str(utf8.PatientName) == "山田^太郎"
    # A Latin-1 query whose answer cannot be Latin-1: the answer is UTF-8.
    answers, _ = find(qr_scp, identifier("STUDY", "ISO_IR 100", PatientName="", PatientID="JP1"))
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(answers[0].PatientName) == "山田^太郎"
    # No character set in the query, non-ASCII answer: declared UTF-8.
    [plain], _ = find(qr_scp, identifier("STUDY", PatientID="DE1", PatientName=""))
    assert plain.SpecificCharacterSet == "ISO_IR 192"
    assert str(plain.PatientName) == "MÜLLER^JÖRG"


def _without_level() -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE*"
    return ds


def _utf8_instance(name: str, patient_id: str) -> Dataset:
    ds = make_instance(PatientSpec(name=name, patient_id=patient_id), 0, 0, 0, rows=8, columns=8)
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


@pytest.mark.parametrize(
    ("query", "model", "status", "comment"),
    [
        (identifier("STUDY", StudyDate="2024-13-45"), STUDY_FIND, 0xC000, "StudyDate"),
        (identifier("STUDY", StudyDate="yesterday"), STUDY_FIND, 0xC000, "StudyDate"),
        (identifier("STUDY", StudyInstanceUID="1.2.*"), STUDY_FIND, 0xC000, "wildcard"),
        (identifier("STUDY", StudyInstanceUID="../../etc"), STUDY_FIND, 0xC000, "UID"),
        (identifier("PATIENT", PatientID=""), STUDY_FIND, 0xA900, "PATIENT"),
        (identifier("WARD", PatientID=""), PATIENT_FIND, 0xA900, "QueryRetrieveLevel"),
        (_without_level(), STUDY_FIND, 0xA900, "QueryRetrieveLevel"),
        (identifier("IMAGE", ImageComments="x*"), STUDY_FIND, 0xC000, "ImageComments"),
    ],
)
def test_bad_queries_get_a_failure_status_with_a_reason(
    qr_scp: QueryRetrieveSCP,
    filled: list[Dataset],
    query: Dataset,
    model: str,
    status: int,
    comment: str,
) -> None:
    answers, final = find(qr_scp, query, model)
    assert answers == []
    assert final.Status == status
    assert comment in final.ErrorComment
    # ... and the SCP still serves.
    assert len(find(qr_scp, identifier("STUDY", StudyInstanceUID=""))[0]) == 3


def test_unsupported_keys_are_flagged_not_fatal(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset]
) -> None:
    query = identifier("STUDY", StudyInstanceUID="")
    query.add_new(0x00091010, "LO", "x")  # private: neither matched nor returned
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate("127.0.0.1", qr_scp.port, ae_title="DICOMFLOW")
    statuses = [status.Status for status, _ in assoc.send_c_find(query, STUDY_FIND)]
    assoc.release()
    assert statuses == [0xFF01, 0xFF01, 0xFF01, 0x0000]


def test_a_repeating_group_return_key_is_answered_empty(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset]
) -> None:
    """Found by fuzzing: a return key of a repeating group (Overlay Rows, 6000,0010, whose
    keyword names no single tag) made the C-FIND handler fail."""
    query = identifier("STUDY", StudyInstanceUID="")
    query.add_new(0x60000010, "US", None)
    answers, final = find(qr_scp, query)
    assert final.Status == 0x0000
    assert len(answers) == 3
    for answer in answers:
        assert answer[0x60000010].VR == "US"
        assert answer[0x60000010].value in (None, b"", [])


# Found by fuzzing: an identifier (explicit VR little endian) whose QueryRetrieveLevel has a
# VR that is no VR ('C\xad'): the lazy decode passed, reading the element raised.
UNREADABLE_LEVEL_IDENTIFIER = bytes.fromhex(
    "08000500435310005c49534f2032303232204952203837200800520043adf500"
    "5354554459200800540041450000080032105351000012000000feff00e00a00"
    "000008000001534802005820090010104c4f0800707269766174652010001000"
    "504e220059616d6164615e5461726f753d1b24423b3345441b28425e1b244242"
    "404f3a1b2842"
)


def test_an_unreadable_identifier_element_is_a_failure_status(
    archive: Archive, filled: list[Dataset]
) -> None:
    """The C-FIND handler failed on it instead of answering a failure status."""
    broken = decode(BytesIO(UNREADABLE_LEVEL_IDENTIFIER), False, True)
    service = QueryRetrieveService(archive.settings, index=archive.index, blobs=archive.blobs)
    try:
        [(final, answer)] = list(service.find(fake_event(broken, PATIENT_FIND)))
    finally:
        service.close()
    assert answer is None
    assert isinstance(final, Dataset)
    assert final.Status == 0xC000
    assert "QueryRetrieveLevel: unreadable element" in final.ErrorComment
    with pytest.raises(IdentifierError, match="QueryRetrieveLevel: unreadable element"):
        read_retrieve_identifier(broken, InformationModel.PATIENT_ROOT)


def test_too_many_matches_answers_the_first_then_out_of_resources(
    archive: Archive, filled: list[Dataset]
) -> None:
    limited = archive.settings.model_copy(update={"dicom_find_max_results": 2})
    service = QueryRetrieveService(limited, index=archive.index, blobs=archive.blobs)
    try:
        responses = list(service.find(fake_event(identifier("IMAGE", SOPInstanceUID=""))))
    finally:
        service.close()
    assert [s for s, _ in responses[:2]] == [0xFF00, 0xFF00]
    final, _ = responses[2]
    assert isinstance(final, Dataset) and final.Status == 0xA700
    assert "18 matches" in final.ErrorComment


def test_cancel_stops_the_answers(archive: Archive, filled: list[Dataset]) -> None:
    service = QueryRetrieveService(archive.settings, index=archive.index, blobs=archive.blobs)
    event = fake_event(identifier("IMAGE", SOPInstanceUID=""))
    try:
        responses = []
        for response in service.find(event):
            responses.append(response)
            event.is_cancelled = True  # the peer sent C-CANCEL after the first answer
    finally:
        service.close()
    assert [status for status, _ in responses] == [0xFF00, 0xFE00]


def fake_event(query: Dataset, model: str = STUDY_FIND) -> Any:
    return SimpleNamespace(
        request=SimpleNamespace(AffectedSOPClassUID=model),
        identifier=query,
        is_cancelled=False,
    )


# --- retrieve -------------------------------------------------------------------------------


class StorageSCP:
    """A pynetdicom Storage SCP that records what it receives."""

    def __init__(self, ae_title: str, contexts: list[tuple[str, list[str]]]) -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        for sop_class, syntaxes in contexts:
            ae.add_supported_context(sop_class, syntaxes)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000


def move(
    scp: QueryRetrieveSCP,
    query: Dataset,
    destination: str = "DEST",
    model: str = StudyRootQueryRetrieveInformationModelMove,
) -> tuple[list[Dataset], Dataset, Dataset | None]:
    """(pending statuses, final status, final identifier) of one C-MOVE."""
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMFLOW")
    assert assoc.is_established
    pending: list[Dataset] = []
    final, final_identifier = Dataset(), None
    try:
        for status, found in assoc.send_c_move(query, destination, model):
            if status.Status == 0xFF00:
                pending.append(status)
            else:
                final, final_identifier = status, found
    finally:
        assoc.release()
    return pending, final, final_identifier


def test_move_a_study_with_counts(
    qr_scp: QueryRetrieveSCP, destination: StorageSCP, archive: Archive, filled: list[Dataset]
) -> None:
    study_uid = filled[0].StudyInstanceUID
    pending, final, _ = move(qr_scp, identifier("STUDY", StudyInstanceUID=study_uid))
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 6
    assert final.NumberOfFailedSuboperations == 0
    assert [p.NumberOfRemainingSuboperations for p in pending] == [5, 4, 3, 2, 1, 0]
    assert [p.NumberOfCompletedSuboperations for p in pending] == [1, 2, 3, 4, 5, 6]
    sent = {ds.SOPInstanceUID: ds for ds in filled if ds.StudyInstanceUID == study_uid}
    assert {ds.SOPInstanceUID for ds in destination.received} == set(sent)
    for ds in destination.received:
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData
        assert ds.PatientName == sent[ds.SOPInstanceUID].PatientName


def test_move_every_level_of_both_models(
    qr_scp: QueryRetrieveSCP, destination: StorageSCP, filled: list[Dataset]
) -> None:
    first = filled[0]
    patient_root = PatientRootQueryRetrieveInformationModelMove
    cases = [
        (identifier("PATIENT", PatientID="PID0001"), patient_root, 6),
        (
            identifier("STUDY", PatientID="PID0000", StudyInstanceUID=first.StudyInstanceUID),
            patient_root,
            6,
        ),
        (
            identifier(
                "SERIES",
                StudyInstanceUID=first.StudyInstanceUID,
                SeriesInstanceUID=first.SeriesInstanceUID,
            ),
            StudyRootQueryRetrieveInformationModelMove,
            3,
        ),
        (
            identifier(
                "IMAGE",
                StudyInstanceUID=first.StudyInstanceUID,
                SeriesInstanceUID=first.SeriesInstanceUID,
                SOPInstanceUID=[filled[0].SOPInstanceUID, filled[2].SOPInstanceUID],
            ),
            StudyRootQueryRetrieveInformationModelMove,
            2,
        ),
    ]
    for query, model, count in cases:
        destination.received.clear()
        _, final, _ = move(qr_scp, query, model=model)
        assert final.Status == 0x0000, query
        assert final.NumberOfCompletedSuboperations == count
        assert len(destination.received) == count


def test_a_failed_sub_operation_is_reported_and_the_rest_continue(
    qr_scp: QueryRetrieveSCP, destination: StorageSCP, archive: Archive, filled: list[Dataset]
) -> None:
    study = [ds for ds in filled if ds.StudyInstanceUID == filled[0].StudyInstanceUID]
    lost = study[1]
    record = archive.index.get_instance(Namespace.ORIGINAL, lost.SOPInstanceUID)
    assert record is not None
    archive.blobs.delete(record.blob.namespace, record.blob.key)
    try:
        _, final, failed = move(qr_scp, identifier("STUDY", StudyInstanceUID=lost.StudyInstanceUID))
    finally:
        archive.blobs.put(
            record.blob.namespace, record.blob.key, archive.stored[lost.SOPInstanceUID]
        )
    assert final.Status == 0xB000  # warning: some sub-operations failed
    assert final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 1
    assert failed is not None and failed.FailedSOPInstanceUIDList == lost.SOPInstanceUID
    assert len(destination.received) == 5


def test_move_refusals(
    qr_scp: QueryRetrieveSCP, destination: StorageSCP, filled: list[Dataset]
) -> None:
    study = identifier("STUDY", StudyInstanceUID=filled[0].StudyInstanceUID)
    assert move(qr_scp, study, destination="NOBODY")[1].Status == 0xA801
    assert move(qr_scp, study, destination="UNREACHABLE")[1].Status == 0xA801
    _, final, _ = move(qr_scp, identifier("STUDY", PatientName="DOE*"))
    assert final.Status == 0xA900 and "StudyInstanceUID" in final.ErrorComment
    _, final, _ = move(qr_scp, identifier("STUDY", StudyInstanceUID="1.2.*"))
    assert final.Status == 0xA900 and "wildcard" in final.ErrorComment
    assert destination.received == []
    _, final, _ = move(qr_scp, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0


def test_move_decompresses_for_a_peer_that_takes_only_uncompressed(
    fresh: tuple[Archive, QueryRetrieveSCP], destination: "StorageSCP"
) -> None:
    archive, qr_scp = fresh
    original = make_instance(PatientSpec(patient_id="RLE1"), 0, 0, 0, rows=16, columns=16)
    compressed = pydicom.dcmread(BytesIO(_part10(original)))
    compressed.compress(RLELossless, generate_instance_uid=False)
    archive.add([compressed])
    _, final, _ = move(qr_scp, identifier("STUDY", StudyInstanceUID=original.StudyInstanceUID))
    assert final.Status == 0x0000
    [received] = destination.received
    assert received.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert received.PixelData == original.PixelData


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def get(
    scp: QueryRetrieveSCP,
    query: Dataset,
    storage: list[str],
    model: str = StudyRootQueryRetrieveInformationModelGet,
) -> tuple[list[Dataset], Dataset, list[Dataset]]:
    """(pending statuses, final status, the datasets C-STOREd back) of one C-GET."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(model)
    for sop_class in storage:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in storage]
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="DICOMFLOW",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    pending: list[Dataset] = []
    final = Dataset()
    try:
        for status, _ in assoc.send_c_get(query, model):
            if status.Status == 0xFF00:
                pending.append(status)
            else:
                final = status
    finally:
        assoc.release()
    return pending, final, received


def test_get_sends_back_on_the_same_association(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset]
) -> None:
    study_uid = filled[0].StudyInstanceUID
    pending, final, received = get(
        qr_scp, identifier("STUDY", StudyInstanceUID=study_uid), [CTImageStorage, MRImageStorage]
    )
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 6
    assert len(pending) == 6 and pending[-1].NumberOfRemainingSuboperations == 0
    assert {ds.SOPInstanceUID for ds in received} == {
        ds.SOPInstanceUID for ds in filled if ds.StudyInstanceUID == study_uid
    }
    _, final, received = get(
        qr_scp,
        identifier("PATIENT", PatientID="PID0002"),
        [CTImageStorage, MRImageStorage],
        PatientRootQueryRetrieveInformationModelGet,
    )
    assert final.NumberOfCompletedSuboperations == 6 and len(received) == 6


def test_get_counts_what_the_requestor_cannot_take_as_failed(
    qr_scp: QueryRetrieveSCP, filled: list[Dataset]
) -> None:
    study_uid = filled[0].StudyInstanceUID  # one CT and one MR series
    _, final, received = get(
        qr_scp, identifier("STUDY", StudyInstanceUID=study_uid), [CTImageStorage]
    )
    assert final.Status == 0xB000
    assert final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfFailedSuboperations == 3
    assert len(received) == 3 and all(ds.Modality == "CT" for ds in received)


def test_get_refuses_a_bad_identifier(qr_scp: QueryRetrieveSCP, filled: list[Dataset]) -> None:
    _, final, received = get(qr_scp, identifier("SERIES", SeriesInstanceUID=""), [CTImageStorage])
    assert final.Status == 0xA900 and "SeriesInstanceUID" in final.ErrorComment
    assert received == []


def test_the_find_handler_uses_one_search_per_request(
    archive: Archive, filled: list[Dataset]
) -> None:
    calls: list[object] = []
    search = archive.index.search

    def counting(request: object) -> object:
        calls.append(request)
        return search(request)  # type: ignore[arg-type]

    archive.index.search = counting  # type: ignore[method-assign]
    service = QueryRetrieveService(archive.settings, index=archive.index, blobs=archive.blobs)
    try:
        answers = list(service.find(fake_event(identifier("IMAGE", SOPInstanceUID=""))))
    finally:
        service.close()
    assert len(answers) == 19 and len(calls) == 1


def test_a_malformed_destination_setting_disables_only_c_move(
    archive: Archive, filled: list[Dataset]
) -> None:
    broken = archive.settings.model_copy(update={"destinations": "not-a-destination"})
    service = QueryRetrieveService(broken, index=archive.index, blobs=archive.blobs)
    try:
        event = SimpleNamespace(
            request=SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelMove),
            move_destination="DEST",
            identifier=identifier("STUDY", StudyInstanceUID=filled[0].StudyInstanceUID),
            is_cancelled=False,
        )
        assert next(service.move(event)) == (None, None)  # 0xA801, and C-FIND still answers
        assert len(list(service.find(fake_event(identifier("STUDY", StudyInstanceUID=""))))) == 4
    finally:
        service.close()


@pytest.mark.parametrize("little_endian", [True, False])
def test_answers_are_encoded_as_pydicom_would(
    archive: Archive, filled: list[Dataset], little_endian: bool
) -> None:
    """The raw-encoded answers are the very bytes ``Dataset.from_json`` would have sent."""
    query = identifier(
        "IMAGE",
        "ISO_IR 192",
        PatientName="",
        StudyDate="",
        SOPInstanceUID="",
        InstanceNumber="",
        Rows="",
        ImageType="",
        SliceThickness="",
        PixelSpacing="",
        RetrieveAETitle="",
    )
    keys = read_find_identifier(query, InformationModel.STUDY_ROOT)
    include = [f"{tag:08X}" for tag in keys.return_tags]
    result = archive.index.search(
        SearchRequest(Namespace.ORIGINAL, Level.INSTANCE, limit=3, include_fields=include)
    )
    assert len(result.results) == 3
    for document in result.results:
        answer = answer_json(document, keys, "DICOMFLOW")
        fast = encode_answer(answer, "utf_8", little_endian)
        assert fast is not None
        for implicit in (True, False):
            reference = encode(Dataset.from_json(answer), implicit, little_endian)
            assert encode(fast, implicit, little_endian) == reference
        assert answer_dataset(answer, little_endian).Rows == 64
        # ... and the direct acceptor's bytes are those pynetdicom sends.
        for syntax in SYNTAXES[little_endian]:
            uid = UID(syntax)
            sent = encode(answer_dataset(answer, little_endian), uid.is_implicit_VR, little_endian)
            assert answer_bytes(answer, syntax) == sent


SYNTAXES = {
    True: [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    False: [ExplicitVRBigEndian],
}


def test_answers_with_sequences_go_through_pydicom(archive: Archive, filled: list[Dataset]) -> None:
    query = identifier("STUDY", StudyInstanceUID="", ReferencedStudySequence=[])
    keys = read_find_identifier(query, InformationModel.STUDY_ROOT)
    include = [f"{tag:08X}" for tag in keys.return_tags]
    [document] = archive.index.search(
        SearchRequest(Namespace.ORIGINAL, Level.STUDY, limit=1, include_fields=include)
    ).results
    answer = answer_json(document, keys, "DICOMFLOW")
    assert encode_answer(answer, "ascii", True) is None
    dataset = answer_dataset(answer)
    assert len(dataset.ReferencedStudySequence) == 1
    assert answer_bytes(answer, ExplicitVRLittleEndian) == encode(dataset, False, True)
    deflated = answer_bytes(answer, DeflatedExplicitVRLittleEndian)
    assert decode(BytesIO(deflated), False, True, True).ReferencedStudySequence is not None
