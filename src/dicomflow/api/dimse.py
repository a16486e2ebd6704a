"""Query/retrieve over DIMSE: C-FIND, C-MOVE and C-GET SCP on the ingest SCP's AE and port.

`QueryRetrieveService.extension()` is a `ServiceExtension` for `start_scp`. It serves the
Patient Root and Study Root information models (FIND, MOVE, GET) over the **original**
namespace (the identified data, as received); the de-identified copies are served by DICOMweb
only (``/dicomweb/deidentified``). docs/conformance.md states the behaviour in full.

- C-FIND answers from the search index only: one `StudyIndex.search` per request, its
  matching keys turned into a query by `qido_to_query` (the very rules of QIDO-RS), its
  return keys asked for as ``include_fields``. Text is read in the identifier's Specific
  Character Set and answered in it when it can hold the values, else in UTF-8 (ISO_IR 192).
  `answer_find` is the one implementation: pynetdicom's EVT_C_FIND handler (`find`) and the
  direct acceptor (`find_encoded`, given as the extension's `FindService`; it serves the
  associations that propose no C-MOVE or C-GET) only encode its answers differently.
- C-MOVE and C-GET find the instances through the index (the unique keys of the identifier)
  and send the originals from the blob store as they were received; pynetdicom runs the
  C-STORE sub-operations and counts them. An instance that cannot be read or sent is
  reported as a failed sub-operation and the others go on.

Index calls run on a small thread pool of their own: both acceptors start a thread per
association and an index may keep a connection per thread.
"""

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from typing import Any, TypeAlias

import pydicom
import pydicom.charset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import format_number_as_ds
from pynetdicom import build_context, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.api.destinations import DestinationRegistry
from dicomflow.api.exceptions import IdentifierError, InvalidDestination
from dicomflow.indexer import open_index
from dicomflow.indexer.base import MAX_LIMIT, InstanceRecord, SearchRequest, StudyIndex
from dicomflow.indexer.deadline import Deadline, call_before
from dicomflow.indexer.documents import empty_element
from dicomflow.indexer.exceptions import InvalidQuery, SearchTimeout
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import Query, qido_to_query
from dicomflow.indexer.values import keyword_of_tag, tag_hex, tag_of_keyword
from dicomflow.ingest.access import NOT_AUTHORIZED, AccessGuard, AccessPolicy, DimseService
from dicomflow.ingest.audit import DimseAudit
from dicomflow.ingest.findpath import EncodedFindResponse, FindRequest, FindService
from dicomflow.ingest.scp import ServiceExtension
from dicomflow.kernel.audit import AuditAction
from dicomflow.kernel.backends import open_blob_store
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.elements import element_header
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BackendUnavailable
from dicomflow.kernel.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = Namespace.ORIGINAL
"""The namespace that the DIMSE query/retrieve services serve: the identified originals."""

# DIMSE statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_UNSUPPORTED_KEYS = 0xFF01  # matches are continuing; optional keys were not supported
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_MATCHES = 0xA701  # retrieve: unable to calculate the number of matches
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

MAX_SUB_OPERATIONS = 65535  # the sub-operation counts are US
MAX_CONTEXTS = 128  # presentation contexts in one association request
INDEX_THREADS = 4

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
UTF8 = "ISO_IR 192"

QR_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)


class InformationModel(StrEnum):
    PATIENT_ROOT = "Patient Root"
    STUDY_ROOT = "Study Root"


FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: InformationModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: InformationModel.STUDY_ROOT,
}
MOVE_MODELS = {
    PatientRootQueryRetrieveInformationModelMove: InformationModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: InformationModel.STUDY_ROOT,
}
GET_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: InformationModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: InformationModel.STUDY_ROOT,
}

LEVELS = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.INSTANCE,
}
LEVEL_NAMES = {level: name for name, level in LEVELS.items()}
MODEL_LEVELS = {
    InformationModel.PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE),
    InformationModel.STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.INSTANCE),
}
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}

_NOT_MATCHED_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})

Status: TypeAlias = int | Dataset
FindResponse: TypeAlias = tuple[Status, Dataset | None]
Answer: TypeAlias = dict[str, Any]
"""One C-FIND answer as DICOM JSON."""


# --- identifiers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FindKeys:
    """What a C-FIND identifier asks: level, matching keys, return keys, character set."""

    level: Level
    matching: list[tuple[str, str]]
    return_tags: list[int]
    charset: list[str]
    unsupported: bool = False
    retrieve_ae_title: bool = False


def status(code: int, comment: str, offending: Sequence[int] = ()) -> Dataset:
    """A status dataset with an ErrorComment (LO, at most 64 characters)."""
    result = Dataset()
    result.Status = code
    result.ErrorComment = comment.replace("\\", "/")[:64]
    if offending:
        result.OffendingElement = list(offending)
    return result


def failure(error: IdentifierError | InvalidQuery) -> Dataset:
    if isinstance(error, IdentifierError):
        return status(error.status, str(error), error.offending)
    return status(UNABLE_TO_PROCESS, str(error))


def _value_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(_value_text(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _element(identifier: Dataset, tag: int) -> DataElement:
    """``identifier[tag]``: pydicom converts a raw element on access, raising many types."""
    try:
        return identifier[tag]
    except Exception as exc:
        raise IdentifierError(
            f"{keyword_of_tag(tag) or Tag(tag)}: unreadable element ({type(exc).__name__})",
            UNABLE_TO_PROCESS,
            (tag,),
        ) from exc


def _element_text(element: DataElement) -> str:
    """An element's value as the text that was sent (``\\`` between values)."""
    try:
        return _value_text(element.value).strip()
    except Exception as exc:  # pydicom raises many types on a value it cannot convert
        raise IdentifierError(
            f"{element.keyword or element.tag}: unreadable value ({type(exc).__name__})",
            UNABLE_TO_PROCESS,
            (int(element.tag),),
        ) from exc


def _charset(identifier: Dataset) -> list[str]:
    if SPECIFIC_CHARACTER_SET not in identifier:
        return []
    raw = _element(identifier, SPECIFIC_CHARACTER_SET).value
    if raw is None:
        return []
    values = raw if isinstance(raw, list | MultiValue) else [raw]
    return [str(v).strip() for v in values]


def _has_values(item: Dataset) -> bool:
    """Whether a sequence item of an identifier holds a value (a matching key)."""
    try:
        return any(
            element.VR != "SQ" and _value_text(element.value).strip() != ""
            for element in item.iterall()
        )
    except Exception:  # an unreadable value: count it as a (not supported) matching key
        return True


def read_level(identifier: Dataset, model: InformationModel) -> Level:
    """The QueryRetrieveLevel of `identifier`, checked against the information model."""
    if QUERY_RETRIEVE_LEVEL not in identifier:
        raise IdentifierError(
            "the identifier has no QueryRetrieveLevel", offending=(QUERY_RETRIEVE_LEVEL,)
        )
    name = _element_text(_element(identifier, QUERY_RETRIEVE_LEVEL)).upper()
    level = LEVELS.get(name)
    if level is None:
        raise IdentifierError(
            f"QueryRetrieveLevel {name[:16]!r} is not PATIENT/STUDY/SERIES/IMAGE",
            offending=(QUERY_RETRIEVE_LEVEL,),
        )
    if level not in MODEL_LEVELS[model]:
        raise IdentifierError(
            "the Study Root model has no PATIENT level (use Patient Root)",
            offending=(QUERY_RETRIEVE_LEVEL,),
        )
    return level


def read_find_identifier(identifier: Dataset, model: InformationModel) -> FindKeys:
    """The keys of a C-FIND identifier (its text decoded with its Specific Character Set).

    Every public attribute is a return key; one with a value is also a matching key.
    Sequences, binary values, private and unknown attributes are not matched on (the
    answers then carry the status Pending 0xFF01); private and unknown ones are not returned.
    """
    level = read_level(identifier, model)
    matching: list[tuple[str, str]] = []
    return_tags: list[int] = []
    unsupported = retrieve_ae_title = False
    for key in list(identifier.keys()):
        tag = int(key)
        group = tag >> 16
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or group in (0, 2):
            continue
        if tag == RETRIEVE_AE_TITLE:
            retrieve_ae_title = True
            continue
        keyword = keyword_of_tag(tag)
        if group % 2 == 1 or not keyword or tag & 0xFFFF == 0:
            unsupported = True
            continue
        element = _element(identifier, tag)
        return_tags.append(tag)
        vr = str(element.VR)
        if vr in _NOT_MATCHED_VRS:
            if vr == "SQ" and any(_has_values(item) for item in element.value or []):
                unsupported = True  # sequence matching is not supported: a return key only
            continue
        text = _element_text(element)
        if text:
            matching.append((keyword, text))
    unique_tag = tag_of_keyword(UNIQUE_KEYS[level])
    if unique_tag is not None and unique_tag not in return_tags:
        return_tags.append(unique_tag)
    return FindKeys(
        level=level,
        matching=matching,
        return_tags=return_tags,
        charset=_charset(identifier),
        unsupported=unsupported,
        retrieve_ae_title=retrieve_ae_title,
    )


def read_retrieve_identifier(identifier: Dataset, model: InformationModel) -> tuple[Level, Query]:
    """The level and query of a C-MOVE / C-GET identifier: its unique keys only.

    The unique key of the retrieve level is required (one value or a list, no wildcards);
    those of the levels above are matched when present; other keys are ignored (PS3.4
    C.4.2.2.1).
    """
    level = read_level(identifier, model)
    params: list[tuple[str, str]] = []
    for above in MODEL_LEVELS[model]:
        if above.depth > level.depth:
            break
        keyword = UNIQUE_KEYS[above]
        tag = tag_of_keyword(keyword)
        assert tag is not None
        text = _element_text(_element(identifier, tag)) if tag in identifier else ""
        if any(char in text for char in "*?"):
            raise IdentifierError(f"{keyword}: no wildcards in a retrieve", offending=(tag,))
        if text:
            params.append((keyword, text))
        elif above is level:
            raise IdentifierError(
                f"a {LEVEL_NAMES[level]} retrieve needs {keyword}", offending=(tag,)
            )
    try:
        return level, qido_to_query(params, Level.SERIES if level is not Level.INSTANCE else level)
    except InvalidQuery as exc:
        raise IdentifierError(str(exc)) from exc


# --- answers --------------------------------------------------------------------------------


def _strings(element: Any) -> Iterator[str]:
    """Every text of a DICOM JSON element (person name groups, sequence items included)."""
    if not isinstance(element, dict):
        return
    for value in element.get("Value", ()):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            if element.get("vr") == "SQ":
                for item in value.values():
                    yield from _strings(item)
            else:
                yield from (v for v in value.values() if isinstance(v, str))


def answer_charset(document: dict[str, Any], requested: list[str]) -> list[str]:
    """The Specific Character Set of an answer: the request's if it can encode every value.

    ASCII answers keep the request's (possibly none); others use a single-byte character set
    of the request when every value fits in it, else UTF-8 (ISO_IR 192).
    """
    texts = [text for element in document.values() for text in _strings(element)]
    if all(text.isascii() for text in texts):
        return requested
    if len(requested) == 1:
        codec = pydicom.charset.python_encoding.get(requested[0])
        if codec is not None:
            try:
                for text in texts:
                    text.encode(codec)
            except UnicodeEncodeError:
                return [UTF8]
            return requested
    return [UTF8]


def answer_json(document: dict[str, Any], keys: FindKeys, ae_title: str) -> dict[str, Any]:
    """One C-FIND answer as DICOM JSON: the requested keys of an index document."""
    selected: dict[str, Any] = {}
    for tag in keys.return_tags:
        key = tag_hex(tag)
        selected[key] = document.get(key) or empty_element(tag)
    charset = answer_charset(selected, keys.charset)
    answer: dict[str, Any] = {}
    if charset:
        answer[tag_hex(SPECIFIC_CHARACTER_SET)] = {"vr": "CS", "Value": charset}
    answer[tag_hex(QUERY_RETRIEVE_LEVEL)] = {"vr": "CS", "Value": [LEVEL_NAMES[keys.level]]}
    if keys.retrieve_ae_title:
        answer[tag_hex(RETRIEVE_AE_TITLE)] = {"vr": "AE", "Value": [ae_title]}
    answer.update(selected)
    return answer


def answer_dataset(answer: dict[str, Any], little_endian: bool = True) -> Dataset:
    """The dataset pynetdicom sends for an answer: raw-encoded when possible."""
    charset = answer.get(tag_hex(SPECIFIC_CHARACTER_SET), {}).get("Value", [])
    encoded = encode_answer(answer, _codec(charset), little_endian)
    return encoded if encoded is not None else _from_json(answer)


def _from_json(answer: dict[str, Any]) -> Dataset:
    """`answer` through pydicom's JSON reader, element by element if one value is odd."""
    try:
        return Dataset.from_json(answer)
    except Exception:  # one odd stored value must not lose the whole answer
        head = {k: v for k, v in answer.items() if k == tag_hex(SPECIFIC_CHARACTER_SET)}
        result = Dataset.from_json(head)
        for key, element in answer.items():
            try:
                result.update(Dataset.from_json({**head, key: element}))
            except Exception:
                result.update(Dataset.from_json({**head, key: {"vr": element.get("vr", "UN")}}))
        return result


# --- encoding answers -----------------------------------------------------------------------

_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}


def _codec(charset: list[str]) -> str:
    """The Python codec of an answer's character set (`answer_charset` chose it to fit)."""
    if len(charset) == 1:
        return pydicom.charset.python_encoding.get(charset[0], "ascii")
    return "ascii"  # no or several character sets: answer_charset kept it ASCII


def _text(value: object, vr: str) -> str:
    if isinstance(value, dict):  # a person name
        groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    if vr == "DS" and isinstance(value, float):
        return format_number_as_ds(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"unexpected {vr} value {value!r}")
    return str(value)


def _raw_elements(
    answer: dict[str, Any], codec: str, little_endian: bool
) -> list[tuple[int, str, bytes]] | None:
    """The (tag, VR, encoded value) of every element of `answer`, or None when an element is
    of a kind not encoded here (sequences, binary values, InlineBinary, BulkDataURI...)."""
    elements: list[tuple[int, str, bytes]] = []
    try:
        for key, element in answer.items():
            vr = element.get("vr", "")
            values = element.get("Value") or []
            if vr == "PN" or vr in _STRING_VRS:
                text = "\\".join(_text(value, vr) for value in values)
                data = text.encode(codec if vr in _CHARSET_VRS else "ascii")
                if len(data) % 2:
                    data += b"\0" if vr == "UI" else b" "
            elif vr in _BINARY_NUMBERS:
                order = "<" if little_endian else ">"
                data = struct.pack(order + _BINARY_NUMBERS[vr] * len(values), *values)
            else:
                return None
            if len(element) > 2 or (len(element) == 2 and "Value" not in element):
                return None
            elements.append((int(key, 16), vr, data))
    except (TypeError, ValueError, UnicodeEncodeError, struct.error):
        return None
    return elements


def encode_answer(answer: dict[str, Any], codec: str, little_endian: bool) -> Dataset | None:
    """`answer` (DICOM JSON) as a dataset of raw, already encoded elements, or None.

    pydicom writes raw elements as they are, which makes an answer about fifteen times
    cheaper to send than through ``Dataset.from_json``. None when an element is of a kind
    this does not encode (sequences, binary values): `_from_json` then does.
    """
    elements = _raw_elements(answer, codec, little_endian)
    if elements is None:
        return None
    ds = Dataset()
    for tag, vr, data in elements:
        ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, True, little_endian)
    return ds


# VRs with a 4-byte value length in explicit VR (PS3.5 7.1.2)
def _write_elements(
    elements: list[tuple[int, str, bytes]], implicit_vr: bool, little_endian: bool
) -> bytes | None:
    """Raw elements written as pydicom writes them (in tag order), or None if one is too long
    for its VR's length field (pydicom decides what to do then)."""
    out: list[bytes] = []
    for tag, vr, data in sorted(elements, key=lambda element: element[0]):
        header = element_header(
            tag, vr, len(data), implicit=implicit_vr, little_endian=little_endian
        )
        if header is None:
            return None
        out.append(header)
        out.append(data)
    return b"".join(out)


def answer_bytes(answer: dict[str, Any], transfer_syntax: str) -> bytes:
    """`answer` encoded in `transfer_syntax`: the bytes pynetdicom sends for `answer_dataset`
    (written directly when its elements allow; b"" if it cannot be encoded)."""
    syntax = UID(transfer_syntax)
    little, implicit = syntax.is_little_endian, syntax.is_implicit_VR
    if not syntax.is_deflated:
        charset = answer.get(tag_hex(SPECIFIC_CHARACTER_SET), {}).get("Value", [])
        elements = _raw_elements(answer, _codec(charset), little)
        written = None if elements is None else _write_elements(elements, implicit, little)
        if written is not None:
            return written
    try:
        encoded = encode(answer_dataset(answer, little), implicit, little, syntax.is_deflated)
    except Exception:  # pydicom raises many types on a value it cannot write
        log.exception("C-FIND: an answer cannot be encoded")
        return b""
    return encoded or b""


# --- retrieve -------------------------------------------------------------------------------

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def storage_contexts(records: Sequence[InstanceRecord]) -> list[PresentationContext]:
    """The contexts to propose to a C-MOVE destination for `records` (at most 128).

    Each SOP class gets an uncompressed context (to which any uncompressed object converts,
    and compressed ones decompress when pydicom can decode them) and one per compressed
    transfer syntax it is stored in.
    """
    syntaxes: dict[str, list[str]] = {}
    for record in records:
        known = syntaxes.setdefault(record.sop_class_uid, [])
        if record.transfer_syntax_uid not in known:
            known.append(record.transfer_syntax_uid)
    contexts = [build_context(sop_class, list(_UNCOMPRESSED)) for sop_class in syntaxes]
    for sop_class, stored in syntaxes.items():
        contexts.extend(
            build_context(sop_class, syntax) for syntax in stored if UID(syntax).is_compressed
        )
    return contexts[:MAX_CONTEXTS]


def _can_send(contexts: Sequence[PresentationContext], sop_class: str, syntax: UID) -> bool:
    """Whether an accepted context takes `sop_class` in `syntax` (uncompressed ones convert)."""
    for context in contexts:
        if context.abstract_syntax != sop_class or not context.as_scu:
            continue
        accepted = UID(context.transfer_syntax[0])
        if accepted == syntax or (not accepted.is_compressed and not syntax.is_compressed):
            return True
    return False


def _unsendable(record: InstanceRecord) -> Dataset:
    """A stand-in that pynetdicom fails to send: it counts a failed sub-operation for it.

    It has no file meta, so ``send_c_store`` raises and the SOP Instance UID goes to the
    FailedSOPInstanceUIDList of the final response.
    """
    stand_in = Dataset()
    stand_in.SOPClassUID = record.sop_class_uid
    stand_in.SOPInstanceUID = record.sop_uid
    return stand_in


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Requestor:
    """Who asks: the calling AE title and the peer's address."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def of(cls, event: Any) -> "Requestor":
        requestor = getattr(getattr(event, "assoc", None), "requestor", None)
        if requestor is None:  # a handler called directly, not over the network
            return cls("", "", 0)
        return cls(str(requestor.ae_title).strip(), str(requestor.address), int(requestor.port))


def query_text(level: Level, keys: Sequence[tuple[str, str]]) -> str:
    """The matching keys of a request as audit text (``STUDY PatientID=123 Modality=CT``)."""
    return " ".join([LEVEL_NAMES[level], *(f"{keyword}={value}" for keyword, value in keys)])


def _study_uids(documents: Sequence[dict[str, Any]]) -> list[str]:
    return [uid for uid in (_first(document, "0020000D") for document in documents) if uid]


def find_request(event: Any) -> FindRequest:
    """The request of a pynetdicom EVT_C_FIND event (or of a stand-in with its attributes)."""
    who = Requestor.of(event)
    context = getattr(event, "context", None)
    return FindRequest(
        sop_class=str(event.request.AffectedSOPClassUID),
        transfer_syntax=str(context.transfer_syntax if context else ExplicitVRLittleEndian),
        calling_ae=who.ae_title,
        host=who.host,
        port=who.port,
        identifier=lambda: event.identifier,
        is_cancelled=lambda: bool(event.is_cancelled),
    )


class QueryRetrieveService:
    """C-FIND, C-MOVE and C-GET SCP handlers over one index and one blob store."""

    def __init__(
        self,
        settings: Settings,
        *,
        index: StudyIndex | None = None,
        blobs: BlobStore | None = None,
        destinations: DestinationRegistry | None = None,
        guard: AccessGuard | None = None,
        audit: DimseAudit | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard or AccessGuard(AccessPolicy.from_settings(settings))
        self.audit = audit
        self.destinations = destinations
        if destinations is None:
            try:
                self.destinations = DestinationRegistry(settings)
            except InvalidDestination as exc:  # C-STORE must not stop for a C-MOVE setting
                log.error("C-MOVE is disabled until DICOMFLOW_DESTINATIONS is fixed: %s", exc)
        self._index = index
        self._blobs = blobs
        self._owned: list[StudyIndex | BlobStore] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(INDEX_THREADS, thread_name_prefix="dicomflow-qr-index")

    def extension(self) -> ServiceExtension:
        models = [*FIND_MODELS, *MOVE_MODELS, *GET_MODELS]
        return ServiceExtension(
            contexts=[(model, QR_TRANSFER_SYNTAXES) for model in models],
            handlers=[
                (evt.EVT_C_FIND, self.find),
                (evt.EVT_C_MOVE, self.move),
                (evt.EVT_C_GET, self.get),
            ],
            configure=accept_retrieve_roles,
            find=FindService(
                self.find_encoded,
                {str(model): [str(ts) for ts in QR_TRANSFER_SYNTAXES] for model in FIND_MODELS},
            ),
        )

    # back ends, opened on first use: the SCP starts (and stores) even if they are down

    @property
    def index(self) -> StudyIndex:
        with self._lock:
            if self._index is None:
                self._index = open_index(self.settings)
                self._owned.append(self._index)
            return self._index

    @property
    def blobs(self) -> BlobStore:
        with self._lock:
            if self._blobs is None:
                self._blobs = open_blob_store(self.settings)
                self._owned.append(self._blobs)
            return self._blobs

    def _call(
        self, deadline: Deadline, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """An index call on the service's pool; SearchTimeout once `deadline` passes."""
        return call_before(deadline, self._pool, function, *args, **kwargs)

    def _deadline(self) -> Deadline:
        return Deadline.after(self.settings.query_timeout)

    def _audit(self, action: AuditAction, who: Requestor, target: str, **details: Any) -> None:
        """Record an access to the originals; raises BackendUnavailable if it is not durable."""
        if self.audit is not None:
            self.audit.accessed(action, who.ae_title, who.host, target, **details)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            owned, self._owned = self._owned, []
        for backend in owned:
            backend.close()

    # C-FIND

    def find(self, event: Any) -> Iterator[FindResponse]:
        """EVT_C_FIND (pynetdicom): yields (Pending, answer) per match, then the final status."""
        request = find_request(event)
        little = UID(request.transfer_syntax).is_little_endian
        for code, answer in self.answer_find(request):
            yield code, None if answer is None else answer_dataset(answer, little)

    def find_encoded(self, request: FindRequest) -> Iterator[EncodedFindResponse]:
        """C-FIND on the direct acceptor: the responses of `find`, each answer encoded in the
        request's transfer syntax (b"" if it cannot be)."""
        for code, answer in self.answer_find(request):
            yield code, None if answer is None else answer_bytes(answer, request.transfer_syntax)

    def answer_find(self, request: FindRequest) -> Iterator[tuple[Status, Answer | None]]:
        """A C-FIND: (Pending, answer as DICOM JSON) per match, then the final status.

        The access guard first (0x0124), then the identifier (0xA900 / 0xC000), one index
        search per request within DICOMFLOW_QUERY_TIMEOUT (0xA700), the audit record before
        any answer (0xA700 if it cannot be written), C-CANCEL checked before each answer.
        """
        started = time.monotonic()
        model = FIND_MODELS[request.sop_class]
        who = Requestor(request.calling_ae, request.host, request.port)
        if not self.guard.permits(DimseService.FIND, who.ae_title, who.host, who.port):
            yield status(NOT_AUTHORIZED, f"{who.ae_title} may not query (not authorized)"), None
            return
        try:
            try:
                identifier = request.identifier()
            except Exception as exc:
                raise IdentifierError(f"the identifier cannot be decoded: {exc}") from exc
            keys = read_find_identifier(identifier, model)
            query = qido_to_query(keys.matching, keys.level)
        except (IdentifierError, InvalidQuery) as exc:
            log.info("C-FIND refused (%s): %s", model, exc)
            yield failure(exc), None
            return
        pending = PENDING_UNSUPPORTED_KEYS if keys.unsupported else PENDING
        maximum = self.settings.dicom_find_max_results
        include = [tag_hex(tag) for tag in keys.return_tags]
        deadline = self._deadline()
        sent = total = 0
        while sent < maximum:
            search = SearchRequest(
                namespace=NAMESPACE,
                level=keys.level,
                query=query,
                limit=min(MAX_LIMIT, maximum - sent),
                offset=sent,
                include_fields=include,
            )
            try:
                result = self._call(deadline, self.index.search, search)
                self._audit(
                    AuditAction.QUERY,
                    who,
                    f"C-FIND {model} {LEVEL_NAMES[keys.level]}",
                    study_uids=_study_uids(result.results),
                    query=query_text(keys.level, keys.matching),
                    detail=f"{len(result.results)} of {result.total} matches",
                )
            except InvalidQuery as exc:
                yield status(UNABLE_TO_PROCESS, str(exc)), None
                return
            except SearchTimeout as exc:
                log.warning("C-FIND from %s: %s", who.ae_title, exc)
                yield status(OUT_OF_RESOURCES, "query timed out: narrow it or retry later"), None
                return
            except BackendUnavailable as exc:
                log.error("C-FIND refused: the audit trail is unavailable: %s", exc)
                yield status(OUT_OF_RESOURCES, "audit trail unavailable: retry later"), None
                return
            except Exception as exc:
                log.exception("C-FIND: the index failed")
                yield status(OUT_OF_RESOURCES, f"the index failed: {type(exc).__name__}"), None
                return
            total = result.total
            for document in result.results:
                if request.is_cancelled():
                    yield CANCEL, None
                    return
                yield pending, answer_json(document, keys, self.settings.ae_title)
            sent += len(result.results)
            if not result.results or sent >= total:
                break
        log.info(
            "C-FIND %s %s: %d of %d matches in %.1f ms",
            model,
            LEVEL_NAMES[keys.level],
            sent,
            total,
            (time.monotonic() - started) * 1000,
        )
        if total > sent:
            yield (
                status(OUT_OF_RESOURCES, f"{total} matches, only {sent} sent: narrow the query"),
                None,
            )
            return
        yield SUCCESS, None

    # retrieve: the instances of an identifier

    def retrieve_plan(self, identifier: Dataset, model: InformationModel) -> list[InstanceRecord]:
        """The instances that a C-MOVE / C-GET identifier names, series by series."""
        level, query = read_retrieve_identifier(identifier, model)
        deadline = self._deadline()
        search_level = Level.INSTANCE if level is Level.INSTANCE else Level.SERIES
        series: dict[tuple[str, str], None] = {}
        wanted: set[str] = set()
        offset = 0
        while True:
            request = SearchRequest(
                namespace=NAMESPACE,
                level=search_level,
                query=query,
                limit=MAX_LIMIT,
                offset=offset,
                include_fields=list(UNIQUE_KEYS.values())[1:],
            )
            result = self._call(deadline, self.index.search, request)
            for document in result.results:
                study = _first(document, "0020000D")
                series_uid = _first(document, "0020000E")
                if study and series_uid:
                    series[(study, series_uid)] = None
                if search_level is Level.INSTANCE:
                    wanted.add(_first(document, "00080018"))
            offset += len(result.results)
            if offset >= MAX_SUB_OPERATIONS:
                raise IdentifierError(
                    f"more than {MAX_SUB_OPERATIONS} matches: retrieve in smaller parts",
                    OUT_OF_RESOURCES_MATCHES,
                )
            if not result.results or offset >= result.total:
                break
        records: list[InstanceRecord] = []
        for study, series_uid in series:
            found = self._call(
                deadline, self.index.instances, NAMESPACE, study, series_uid, with_json=False
            )
            records.extend(r for r in found if not wanted or r.sop_uid in wanted)
            if len(records) > MAX_SUB_OPERATIONS:
                raise IdentifierError(
                    f"more than {MAX_SUB_OPERATIONS} instances: retrieve in smaller parts",
                    OUT_OF_RESOURCES_MATCHES,
                )
        return records

    def _plan(
        self, event: Any, model: InformationModel, action: AuditAction, target: str
    ) -> list[InstanceRecord] | Dataset:
        """The instances to send (the access audited), or the failure status to answer with."""
        who = Requestor.of(event)
        try:
            try:
                identifier = event.identifier
            except Exception as exc:
                raise IdentifierError(f"the identifier cannot be decoded: {exc}") from exc
            plan = self.retrieve_plan(identifier, model)
            level = read_level(identifier, model)
            self._audit(
                action,
                who,
                target,
                study_uids=[record.study_uid for record in plan],
                query=query_text(level, _unique_keys(identifier, model, level)),
                detail=f"{len(plan)} instances",
            )
            return plan
        except IdentifierError as exc:
            log.info("retrieve refused (%s): %s", model, exc)
            return failure(exc)
        except SearchTimeout as exc:
            log.warning("retrieve from %s: %s", who.ae_title, exc)
            return status(OUT_OF_RESOURCES_MATCHES, "lookup timed out: narrow it or retry later")
        except BackendUnavailable as exc:
            log.error("retrieve refused: the audit trail is unavailable: %s", exc)
            return status(OUT_OF_RESOURCES, "audit trail unavailable: retry later")
        except Exception as exc:
            log.exception("retrieve: the index failed")
            return status(OUT_OF_RESOURCES_MATCHES, f"the index failed: {type(exc).__name__}")

    def load(self, record: InstanceRecord, contexts: Sequence[PresentationContext]) -> Dataset:
        """The dataset to send for `record`, decompressed if the peer takes only uncompressed.

        Returns an `_unsendable` stand-in (a failed sub-operation) when the object cannot be
        read or converted.
        """
        try:
            data = self.blobs.get_verified(record.blob)
            ds = pydicom.dcmread(BytesIO(data))
            syntax = UID(ds.file_meta.TransferSyntaxUID)
            sop_class = str(ds.SOPClassUID)
            if (
                contexts
                and syntax.is_compressed
                and not _can_send(contexts, sop_class, syntax)
                and _can_send(contexts, sop_class, ExplicitVRLittleEndian)
            ):
                ds.decompress(generate_instance_uid=False)
        except Exception as exc:
            log.warning("retrieve: cannot send %s: %s: %s", record.sop_uid, type(exc).__name__, exc)
            return _unsendable(record)
        return ds

    def _sub_operations(
        self,
        event: Any,
        records: list[InstanceRecord],
        contexts: Callable[[], Sequence[PresentationContext]],
    ) -> Iterator[tuple[int, Dataset | None]]:
        for record in records:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self.load(record, contexts())

    # C-MOVE

    def move(self, event: Any) -> Iterator[Any]:
        """EVT_C_MOVE: the destination, the number of sub-operations, then the datasets."""
        model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
        who = Requestor.of(event)
        title = str(event.move_destination or "").strip()
        try:
            destination = self.destinations.get(title) if self.destinations else None
        except InvalidDestination as exc:
            log.error("C-MOVE: the destinations cannot be read: %s", exc)
            destination = None
        if destination is None:
            log.info("C-MOVE refused: unknown destination %r", title)
            yield None, None  # pynetdicom answers 0xA801: move destination unknown
            return
        plan: list[InstanceRecord] | Dataset
        if not self.guard.permits(DimseService.MOVE, who.ae_title, who.host, who.port):
            # Only a failure after associating with the destination carries a status of its
            # own; nothing but Verification is proposed to it.
            plan = status(NOT_AUTHORIZED, f"{who.ae_title} may not retrieve (not authorized)")
        elif not self.guard.permits_move(who.ae_title, who.host, who.port, title):
            yield None, None  # 0xA801: not a destination this AE may move to
            return
        else:
            plan = self._plan(event, model, AuditAction.EXPORT, f"C-MOVE to {title}")
        accepted: list[Any] = []
        options: dict[str, Any] = {
            "contexts": (
                storage_contexts(plan)
                if isinstance(plan, list) and plan
                else [build_context(Verification)]
            ),
            "evt_handlers": [(evt.EVT_ACCEPTED, lambda e: accepted.append(e.assoc))],
        }
        yield destination.host, destination.port, options
        if isinstance(plan, Dataset):
            # A failure needs one sub-operation: pynetdicom only answers it after associating.
            yield 1
            yield plan, None
            return
        log.info("C-MOVE of %d instances to %s", len(plan), destination.ae_title)
        yield len(plan)
        yield from self._sub_operations(
            event, plan, lambda: accepted[0].accepted_contexts if accepted else []
        )

    # C-GET

    def get(self, event: Any) -> Iterator[Any]:
        """EVT_C_GET: the number of sub-operations, then the datasets to C-STORE back."""
        model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
        who = Requestor.of(event)
        plan: list[InstanceRecord] | Dataset
        if self.guard.permits(DimseService.GET, who.ae_title, who.host, who.port):
            plan = self._plan(event, model, AuditAction.RETRIEVE, f"C-GET {model}")
        else:
            plan = status(NOT_AUTHORIZED, f"{who.ae_title} may not retrieve (not authorized)")
        if isinstance(plan, Dataset):
            yield 1
            yield plan, None
            return
        log.info("C-GET of %d instances", len(plan))
        yield len(plan)
        yield from self._sub_operations(event, plan, lambda: event.assoc.accepted_contexts)


def _unique_keys(
    identifier: Dataset, model: InformationModel, level: Level
) -> list[tuple[str, str]]:
    """The unique keys of a retrieve identifier down to its level, as (keyword, text)."""
    keys: list[tuple[str, str]] = []
    for above in MODEL_LEVELS[model]:
        if above.depth > level.depth:
            break
        keyword = UNIQUE_KEYS[above]
        tag = tag_of_keyword(keyword)
        if tag is not None and tag in identifier:
            keys.append((keyword, _element_text(identifier[tag])))
    return [(keyword, text) for keyword, text in keys if text]


def _first(document: dict[str, Any], tag: str) -> str:
    values = document.get(tag, {}).get("Value") or [""]
    return str(values[0])


def accept_retrieve_roles(ae: ApplicationEntity) -> None:
    """Accept the SCP role that a C-GET requestor proposes for the storage SOP classes.

    With both roles accepted, a requestor still gets what it proposes: the SCU role (it
    stores to us), the SCP role (we store to it during C-GET), or both.
    """
    skip = {Verification, *FIND_MODELS, *MOVE_MODELS, *GET_MODELS}
    for context in ae.supported_contexts:  # the AE's own context objects
        if context.abstract_syntax not in skip:
            context.scu_role = True
            context.scp_role = True
