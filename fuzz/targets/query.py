"""The query parsers, and the SQL they build run against a small embedded index.

Input layouts:

- ``lucene``: one byte choosing the level (and namespace), then the query text (UTF-8, as
  HTTP hands it over: undecodable bytes replaced).
- ``qido``: one byte choosing the level and the study/series scope of the route, then
  ``query string \\n Accept header \\n study UID \\n series UID`` (the last three optional).
- ``cfind``: one byte choosing the information model (bit 0) and the transfer syntax the
  identifier is encoded in (bits 1-2), then the identifier as a C-FIND-RQ carries it.
- ``dicomweb``: one byte choosing the stored transfer syntax, then ``Accept \\n frame list
  \\n window \\n viewport \\n quality \\n accept parameter``: every parameter of the WADO-RS
  routes that is parsed before anything is read.
"""

from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

from fastapi import HTTPException
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import decode, encode
from starlette.requests import Request

from dicomflow.api import rendering
from dicomflow.api.dimse import (
    FIND_MODELS,
    MOVE_MODELS,
    QueryRetrieveService,
    read_retrieve_identifier,
)
from dicomflow.api.exceptions import IdentifierError, NotAcceptable
from dicomflow.api.rendering import RenderParameterError
from dicomflow.api.routes.dicomweb import (
    check_json_accepted,
    negotiate_frames,
    negotiate_objects,
    negotiate_rendered,
    parse_accept,
    parse_frame_numbers,
    qido_search,
)
from dicomflow.indexer.base import Level, SearchRequest
from dicomflow.indexer.embedded import EmbeddedStudyIndex
from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.query import parse_lucene
from dicomflow.ingest.scp import TRANSFER_SYNTAXES
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import InvalidUID
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import iter_study_tree
from fuzz.harness import ErrorLogTrap, MemoryBlobStore

OneInput = Callable[[bytes], None]
LEVELS = list(Level)
NAMESPACES = list(Namespace)

LUCENE_EXAMPLES = [
    "",
    "PatientName:DOE*",
    "PatientName:DOE^JOHN AND StudyDate:[20200101 TO 20241231] AND NOT Modality:SR",
    "StudyDate:>=20200101 AND StudyDate:<2025",
    "StudyDate:{2020 TO *]",
    "ModalitiesInStudy:(CT OR MR) AND PatientSex:F",
    '"ct chest" -brain DOE*',
    "00100010:doe* OR 00100020:PID0001",
    "StudyInstanceUID:2.25.1 OR SeriesNumber:3 OR InstanceNumber:[1 TO 10]",
    "StudyTime:0930 AND AcquisitionDateTime:[20240115101010 TO 20240116]",
    "AccessionNumber:A\\*1* AND StudyDescription:*",
    "PatientName:MÜLLER* OR SliceThickness:1.25",
    "(Modality:CT AND (chest OR PatientID:P1)) OR +brain",
    "PatientName:DOE~2 OR PatientName:/DO./",
]
QIDO_EXAMPLES = [
    b"PatientName=DOE*&StudyDate=20200101-&limit=10&offset=0&includefield=all",
    b"00100010=doe%5Ejohn&ModalitiesInStudy=CT%5CMR&fuzzymatching=true",
    b"StudyInstanceUID=1.2.3,1.2.4&includefield=00081030,StudyDescription",
    b"StudyTime=080000-120000&AcquisitionDateTime=20200101103000-20200102&limit=",
    b"SeriesNumber=3&Modality=CT&Modality=MR&offset=5&includefield=PatientAge",
    b"PatientID=&StudyDate=2020-01-31&NumberOfStudyRelatedInstances=3",
    b"StudyDescription=CHEST,%20ABDOMEN&PatientName=M%C3%9CLLER*&limit=10000",
]
ACCEPT_EXAMPLES = [
    b"application/dicom+json",
    b'multipart/related; type="application/dicom"; transfer-syntax=*',
    b'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
    b"image/png;q=0.5, image/jpeg;q=0.9, */*;q=0.1",
    b'multipart/related; type="image/jls", application/json',
]


def _index(workdir: Path) -> EmbeddedStudyIndex:
    """A small index: two patients, two series each, in both namespaces."""
    from tests.indexer.index_archive import event_of  # the index tests' event builder

    index = EmbeddedStudyIndex(workdir / "index")
    datasets = list(iter_study_tree(patients=2, instances_per_series=2, rows=2, columns=2))
    for namespace in NAMESPACES:
        index.upsert([event_of(ds, namespace) for ds in datasets])
    return index


def seeds_lucene() -> Iterator[bytes]:
    for n, text in enumerate(LUCENE_EXAMPLES):
        yield bytes((n % 8,)) + text.encode()


def build_lucene(workdir: Path) -> OneInput:
    index = _index(workdir)
    trap = ErrorLogTrap.install()

    def one(data: bytes) -> None:
        if not data:
            return
        level, namespace = LEVELS[data[0] % 4], NAMESPACES[data[0] // 4 % len(NAMESPACES)]
        with trap:
            try:
                query = parse_lucene(data[1:].decode("utf-8", "replace"))
                index.search(SearchRequest(namespace=namespace, level=level, query=query, limit=5))
            except InvalidQuery:
                return

    return one


def seeds_qido() -> Iterator[bytes]:
    for n, query_string in enumerate(QIDO_EXAMPLES):
        accept = ACCEPT_EXAMPLES[n % len(ACCEPT_EXAMPLES)]
        yield bytes((n % 16,)) + query_string + b"\n" + accept
    yield b"\x0e" + QIDO_EXAMPLES[0] + b"\n\n2.25.1\n2.25.2"


_APP = SimpleNamespace(state=SimpleNamespace(dicomflow=SimpleNamespace(settings=Settings())))


def _request(query_string: bytes, accept: bytes) -> Request:
    headers = [(b"accept", accept)] if accept else []
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/dicomweb/studies",
            "query_string": query_string,
            "headers": headers,
            # qido_search reads the query timeout from the app's settings.
            "app": _APP,
        }
    )


def build_qido(workdir: Path) -> OneInput:
    """The QIDO-RS route's work (qido_search) on a request made from the input."""
    index = _index(workdir)
    trap = ErrorLogTrap.install()

    def one(data: bytes) -> None:
        if not data:
            return
        level = LEVELS[data[0] % 4]
        fields = data[1:].split(b"\n", 3) + [b""] * 3
        # Path parameters reach the route URL-decoded, as text.
        study = fields[2].decode("utf-8", "replace") if data[0] & 4 else None
        series = fields[3].decode("utf-8", "replace") if data[0] & 8 else None
        with trap:
            try:
                qido_search(
                    _request(fields[0], fields[1]),
                    index,
                    NAMESPACES[data[0] // 16 % len(NAMESPACES)],
                    level,
                    study,
                    series,
                )
            except (InvalidQuery, InvalidUID, HTTPException):  # 400, 400, 406
                return

    return one


IDENTIFIER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]


def _identifiers() -> Iterator[Dataset]:
    for level, keys in [
        ("STUDY", {"PatientName": "DOE*", "StudyDate": "20200101-", "StudyInstanceUID": ""}),
        (
            "PATIENT",
            {"PatientID": "PID0001", "PatientBirthDate": "", "NumberOfPatientRelatedStudies": ""},
        ),
        ("SERIES", {"StudyInstanceUID": "2.25.1", "Modality": "CT\\MR", "SeriesNumber": "1"}),
        ("IMAGE", {"SOPInstanceUID": "2.25.1\\2.25.2", "InstanceNumber": ""}),
    ]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        query.SpecificCharacterSet = "ISO_IR 192"
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        yield query
    coded = Dataset()
    coded.QueryRetrieveLevel = "STUDY"
    coded.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    coded.PatientName = "Yamada^Tarou=山田^太郎"
    coded.ProcedureCodeSequence = [Dataset()]
    coded.ProcedureCodeSequence[0].CodeValue = "X"
    coded.add_new(0x00091010, "LO", "private")
    coded.RetrieveAETitle = ""
    yield coded


def seeds_cfind() -> Iterator[bytes]:
    for n, query in enumerate(_identifiers()):
        syntax = IDENTIFIER_SYNTAXES[n % 3]
        encoded = encode(query, syntax.is_implicit_VR, syntax.is_little_endian)
        if encoded is not None:
            yield bytes((n % 2 | IDENTIFIER_SYNTAXES.index(syntax) << 1,)) + encoded


class _FindEvent:
    """What the C-FIND handler reads of pynetdicom's event; the identifier decoded lazily,
    as pynetdicom does (raising if it cannot be decoded)."""

    def __init__(self, model: str, encoded: bytes, syntax: UID) -> None:
        self.request = SimpleNamespace(AffectedSOPClassUID=model)
        self.context = SimpleNamespace(transfer_syntax=syntax)
        self.is_cancelled = False
        self._encoded = encoded

    @property
    def identifier(self) -> Dataset:
        syntax = self.context.transfer_syntax
        return decode(
            BytesIO(self._encoded),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        )


def build_cfind(workdir: Path) -> OneInput:
    """C-FIND identifiers into the Query/Retrieve SCP's find handler (index included), and
    the same identifier as a C-MOVE / C-GET one."""
    settings = Settings(data_dir=workdir / "data", dev_mode=True)
    service = QueryRetrieveService(settings, index=_index(workdir), blobs=MemoryBlobStore())
    find_models, move_models = list(FIND_MODELS), list(MOVE_MODELS.values())
    trap = ErrorLogTrap.install()

    def one(data: bytes) -> None:
        if not data:
            return
        syntax = IDENTIFIER_SYNTAXES[data[0] >> 1 & 3]
        event = _FindEvent(find_models[data[0] & 1], data[1:], syntax)
        with trap:
            for _, answer in service.find(event):
                if answer is not None:
                    encode(answer, syntax.is_implicit_VR, syntax.is_little_endian)
        try:
            identifier = event.identifier
        except Exception:  # the retrieve handlers refuse it as the find handler does
            return
        try:
            read_retrieve_identifier(identifier, move_models[data[0] & 1])
        except (IdentifierError, InvalidQuery):
            return

    return one


def seeds_dicomweb() -> Iterator[bytes]:
    for n, accept in enumerate(ACCEPT_EXAMPLES):
        yield bytes((n,)) + b"\n".join(
            (accept, b"1,3,5", b"40,400", b"256,256,0,0,64,64", b"90", b"image/gif")
        )


def build_dicomweb(workdir: Path) -> OneInput:
    """Content negotiation and the WADO-RS parameters (frames, window, viewport, quality)."""
    expected = (HTTPException, NotAcceptable, RenderParameterError)

    def one(data: bytes) -> None:
        if not data:
            return
        stored = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)]
        text = data[1:].decode("utf-8", "replace").split("\n")
        accept, frames, window, viewport, quality, param = (text + [""] * 6)[:6]
        parse_accept(accept)
        steps: list[Callable[[], object]] = [
            lambda: check_json_accepted(accept),
            lambda: negotiate_objects(accept, {stored}, single_part_allowed=True),
            lambda: negotiate_frames(accept, stored),
            lambda: negotiate_rendered(accept, param or None),
            lambda: parse_frame_numbers(frames),
            lambda: rendering.parse_window(window),
            lambda: rendering.parse_viewport(viewport),
            lambda: rendering.parse_quality(quality),
        ]
        for step in steps:
            try:
                step()
            except expected:
                continue

    return one
