"""The metadata processor: every stored object's DICOM JSON and search fields.

Consumes ``stored`` (`ObjectStored`), reads the original from the blob store (checksum
verified), and publishes one `MetadataExtracted` on ``metadata`` for the index. The metadata of
de-identified copies is published by the de-identification processor with `metadata_record`.

`extract_metadata` is the pure part: the DICOM JSON model of PS3.18 F.2 without bulk data,
and the normalised search fields of `dicomflow.indexer.values`. It never fails on a value:
an element that pydicom cannot convert (a DS of ``'abc'``, a bad character set) is kept as
its text, and one that cannot even be read as text is left out.
"""

import base64
import math
import struct
import warnings
from functools import lru_cache
from io import BytesIO
from typing import Any

import pydicom
import pydicom.charset
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json
from pydicom import datadict
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import correct_ambiguous_vr_element

from dicomflow.indexer.values import normalise_fields, tag_hex
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import OutgoingRecord, Record
from dicomflow.kernel.events import (
    BlobRef,
    MetadataExtracted,
    ObjectStored,
    Topic,
    decode_event,
    encode_event,
)
from dicomflow.kernel.exceptions import BlobNotFound, ChecksumMismatch
from dicomflow.processors.base import Processor, ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.hookspecs import hookimpl

BULK_DATA_THRESHOLD = 1024
"""Binary values longer than this many bytes are bulk data: left out of the DICOM JSON."""

MAX_SEQUENCE_DEPTH = 16

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_STRUCT_FORMATS = {
    vr: (fmt, struct.calcsize("<" + fmt))  # standard sizes, not native
    for vr, fmt in {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}.items()
}
_STRUCT_FORMATS.update(SV=("q", 8), UV=("Q", 8))
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS", "UR"})
_CHARSET_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN"})
_SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR"})
_KEEP_LEADING_SPACE_VRS = frozenset({"LT", "ST", "UT", "UC"})
_SPECIFIC_CHARACTER_SET = 0x00080005
_DEFAULT_ENCODING = "iso8859"


def _vr(element: DataElement | RawDataElement) -> str:
    return str(element.VR).split(" ")[0]  # an unresolved "US or SS" takes its first VR


def _text_values(raw: object) -> list[str | None]:
    """The values of an element that pydicom could not convert, as text."""
    parts: list[object]
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        parts = list(text.split("\\"))
    elif isinstance(raw, list | tuple | pydicom.multival.MultiValue):
        parts = list(raw)
    else:
        parts = [raw]
    values: list[str | None] = []
    for part in parts:
        text = str(part).strip(" \x00") if part is not None else ""
        values.append(text or None)
    return values


def _finite(values: list[Any]) -> list[Any]:
    """Values with NaN and infinities as text (JSON has no such numbers)."""
    return [str(v) if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def _encoding_of(ds: Dataset, inherited: str | None) -> str | None:
    """The one Python codec of a dataset's text, or None when pydicom must decode it.

    None means: several character sets (ISO 2022 code extensions) or an unreadable
    Specific Character Set; the slower pydicom conversion handles those.
    """
    raw = ds.get_item(_SPECIFIC_CHARACTER_SET)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes):
        terms = [t.strip(" \x00") for t in value.decode("latin-1").split("\\")]
    elif isinstance(value, str):
        terms = [value.strip()]
    else:
        return None
    terms = [t for t in terms if t]
    if not terms:
        return _DEFAULT_ENCODING
    if len(terms) > 1 or terms[0].startswith("ISO 2022"):
        return None
    try:
        encodings = pydicom.charset.convert_encodings(terms)
    except Exception:  # an unknown character set: let pydicom apply its own fallback
        return None
    return encodings[0] if len(encodings) == 1 else None


def _number(vr: str, text: str) -> int | float | str:
    """An IS or DS value as a number; text that is no (finite) number stays text."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if vr == "IS":
        return int(number) if number.is_integer() else text
    return number


def _person_name(text: str) -> dict[str, str] | None:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False))
    return {k: v for k, v in groups.items() if v} or None


def _fast_element(
    tag: int, raw: RawDataElement, encoding: str | None, threshold: int
) -> dict[str, Any] | None:
    """The JSON of a raw element decoded directly, or None for pydicom to convert it.

    Covers the common case (text, numbers, short binary in one character set) several
    times faster than pydicom's element conversion.
    """
    vr = raw.VR
    value = raw.value
    if vr is None or vr == "UN":
        vr = _implicit_vr(tag, vr)
        if vr is None:
            return None
    if value is None or vr == "SQ":
        return None
    if not value:
        return {"vr": vr}
    if vr in _ASCII_VRS:
        text = value.decode("latin-1")
    elif vr in _CHARSET_VRS:
        if encoding is None:
            return None
        text = value.decode(encoding, "replace")
    elif vr in _BINARY_VRS:
        if len(value) > threshold:
            return {"vr": vr}  # bulk data: left out
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    elif vr in _STRUCT_FORMATS:
        fmt, size = _STRUCT_FORMATS[vr]
        if len(value) % size:
            return None
        order = "<" if raw.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{len(value) // size}{fmt}", value)
        return {"vr": vr, "Value": _finite(list(numbers))}
    else:
        return None
    if vr in _SINGLE_VALUE_VRS:
        parts = [text.rstrip(" \x00")]
    elif vr in _KEEP_LEADING_SPACE_VRS:
        parts = [p.rstrip(" \x00") for p in text.split("\\")]
    else:
        parts = [p.strip(" \x00") for p in text.split("\\")]
    values: list[Any]
    if vr == "IS" or vr == "DS":
        values = [_number(vr, p) if p else None for p in parts]
    elif vr == "PN":
        values = [_person_name(p) if p else None for p in parts]
    else:
        values = [p or None for p in parts]
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int, vr: str | None) -> str | None:
    """The VR of an element read without one (implicit VR) or as UN, when it is certain.

    A known public attribute takes its dictionary VR (pydicom reads UN values that way too),
    a private creator is LO; ambiguous VRs and other private tags are for pydicom.
    """
    if tag >> 16 & 1:
        return "LO" if 0x10 <= tag & 0xFFFF <= 0xFF else vr
    try:
        known = datadict.dictionary_VR(tag)
    except KeyError:
        return vr
    return None if " " in known else known


def _pixel_vr(ds: Dataset) -> str:
    """The VR of native or encapsulated pixel data (PS3.5 8.2, A.4)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and getattr(syntax, "is_encapsulated", False):
        return "OB"
    return "OW" if ds.get("BitsAllocated", 16) > 8 else "OB"


def _element_json(
    ds: Dataset, tag: int, raw: Any, threshold: int, depth: int, encoding: str | None
) -> dict[str, Any] | None:
    if tag in _PIXEL_TAGS:  # always bulk data, whatever its size
        return {"vr": _vr(raw) if isinstance(raw, RawDataElement) and raw.VR else _pixel_vr(ds)}
    if isinstance(raw, RawDataElement):
        try:
            fast = _fast_element(tag, raw, encoding, threshold)
        except Exception:  # the slow path below decides
            fast = None
        if fast is not None:
            return fast
    try:
        element = ds[tag]
        if " or " in str(element.VR):  # e.g. "OB or OW" of a dataset built in memory
            resolved = correct_ambiguous_vr_element(element, ds, True)
            element = resolved if isinstance(resolved, DataElement) else element
    except Exception:  # an unconvertible value is kept as text, never fatal
        if _vr(raw) in _BINARY_VRS:
            return {"vr": _vr(raw)}
        return {"vr": _vr(raw), "Value": _text_values(raw.value)}
    vr = _vr(element)
    if vr == "SQ":
        if depth >= MAX_SEQUENCE_DEPTH:
            return {"vr": "SQ"}
        items = [dataset_json(item, threshold, depth + 1, encoding) for item in element.value or ()]
        return {"vr": "SQ", "Value": items}
    if vr in _BINARY_VRS:
        value = element.value
        if value is None or len(value) == 0:
            return {"vr": vr}
        if not isinstance(value, bytes | bytearray) or len(value) > threshold:
            return {"vr": vr}  # bulk data: left out
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr in ("IS", "DS"):  # pydicom would turn an IS of "1.5" into 1: parse the text
        texts = _text_values(element.value)
        if all(t is None for t in texts):
            return {"vr": vr}
        return {"vr": vr, "Value": [_number(vr, t) if t else None for t in texts]}
    try:
        result: dict[str, Any] = element.to_json_dict(None, threshold)
    except Exception:  # see above
        return {"vr": vr, "Value": _text_values(raw.value)}
    result["vr"] = vr
    values = result.get("Value")
    if values is not None and any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return {"vr": vr, "Value": _text_values(raw.value)}  # JSON has no NaN: keep the text
    return result


def dataset_json(
    ds: Dataset,
    threshold: int = BULK_DATA_THRESHOLD,
    depth: int = 0,
    encoding: str | None = _DEFAULT_ENCODING,
) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of `ds` without bulk data, robust to bad values.

    `encoding` is the codec inherited from the enclosing dataset (for sequence items).
    """
    encoding = _encoding_of(ds, encoding)
    result: dict[str, Any] = {}
    for tag, raw in list(ds._dict.items()):  # the raw elements, not converting them
        if tag & 0xFFFF == 0:  # group lengths are not part of the JSON model
            continue
        element = _element_json(ds, tag, raw, threshold, depth, encoding)
        if element is not None:
            result[f"{tag:08X}"] = element
    return result


def _scrub(value: Any) -> Any:
    """`value` with strings that cannot be UTF-8 encoded (lone surrogates) repaired."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def extract_metadata(
    ds: Dataset, *, bulk_data_threshold: int = BULK_DATA_THRESHOLD
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DICOM JSON without bulk data, normalised search fields by keyword) of a dataset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every odd value; we keep them
        dicom_json = dataset_json(ds, bulk_data_threshold)
    try:  # the event is JSON: a lone surrogate from an odd decoder would break it later
        to_json(dicom_json)
    except PydanticSerializationError:
        dicom_json = _scrub(dicom_json)
    return dicom_json, normalise_fields(dicom_json)


def _trailing_pixel_data(stream: BytesIO, ds: Dataset) -> tuple[str, dict[str, Any]] | None:
    """The element where a ``stop_before_pixels`` read stopped, if it is pixel data."""
    header = stream.read(6)
    if len(header) < 6:
        return None
    implicit, little = ds.original_encoding
    group, element = struct.unpack("<HH" if little else ">HH", header[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_TAGS:
        return None
    vr = "OW" if implicit else header[4:6].decode("ascii", "replace")
    return tag_hex(tag), {"vr": vr if vr in _BINARY_VRS else "OW"}


def read_metadata(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """`extract_metadata` of a Part 10 object; pixel data is skipped but noted as bulk data.

    Raises PoisonEvent when `data` is not a readable DICOM object.
    """
    stream = BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(stream, stop_before_pixels=True)
            except InvalidDicomError:  # no preamble or file meta: an old-style file
                stream = BytesIO(data)
                ds = pydicom.dcmread(stream, stop_before_pixels=True, force=True)
                if "SOPInstanceUID" not in ds:
                    raise
    except Exception as exc:
        raise PoisonEvent(f"not a readable DICOM object ({type(exc).__name__}: {exc})") from exc
    dicom_json, fields = extract_metadata(ds)
    try:
        pixel = _trailing_pixel_data(stream, ds)
    except Exception:  # a missing bulk data note is not worth failing over
        pixel = None
    if pixel is not None:
        dicom_json[pixel[0]] = pixel[1]
    return dicom_json, fields


def _read_blob(blobs: BlobStore, ref: BlobRef) -> bytes:
    try:
        return blobs.get_verified(ref)
    except (BlobNotFound, ChecksumMismatch) as exc:
        raise PoisonEvent(f"object {ref.namespace}/{ref.key} cannot be read: {exc}") from exc


def metadata_record(context: ProcessorContext, event: ObjectStored, data: bytes) -> OutgoingRecord:
    """The ``metadata`` record of a stored object whose bytes are `data`."""
    try:
        dicom_json, fields = read_metadata(data)
    except PoisonEvent as exc:
        raise PoisonEvent(f"object {event.blob.namespace}/{event.blob.key}: {exc}") from exc
    extracted = MetadataExtracted(
        identity=event.identity,
        namespace=event.blob.namespace,
        blob=event.blob,
        source=event.source,
        received_at=event.received_at,
        dicom_json=dicom_json,
        fields=fields,
    )
    return OutgoingRecord(
        topic=context.topic(Topic.METADATA),
        key=event.identity.study_instance_uid,
        value=encode_event(extracted),
    )


class MetadataProcessor(Processor):
    """Publishes the metadata of every stored original.

    De-identified copies get theirs from the de-identification processor, which holds the
    copy's bytes when it makes it: the search path reads each received object once.
    """

    name = "metadata"
    topics = (Topic.STORED,)
    description = "Extracts the DICOM JSON and search fields of every stored object."
    batch_size = 64  # a verified read and a parse each

    def handle(self, record: Record) -> list[OutgoingRecord]:
        try:
            event = decode_event(record.value, ObjectStored)
        except ValidationError as exc:
            raise PoisonEvent(f"not an ObjectStored event: {exc}") from exc
        return [metadata_record(self.context, event, _read_blob(self.context.blobs, event.blob))]


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [MetadataProcessor]
