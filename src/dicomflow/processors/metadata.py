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
from collections.abc import Sequence
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
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from dicomflow.indexer.values import normalise_field, normalise_fields, tag_hex
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
# What the metadata processor reads of an object first: a CT or MR header takes a few KB.
HEAD_BYTES = 64 * 1024

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
        return _charset_encoding(value)
    if isinstance(value, str):
        return _encoding_of_terms((value.strip(),))
    return None


@lru_cache(maxsize=256)
def _charset_encoding(value: bytes) -> str | None:
    """`_encoding_of` a raw Specific Character Set value (a handful of distinct ones)."""
    return _encoding_of_terms(tuple(t.strip(" \x00") for t in value.decode("latin-1").split("\\")))


def _encoding_of_terms(terms: tuple[str, ...]) -> str | None:
    found = [t for t in terms if t]
    if not found:
        return _DEFAULT_ENCODING
    if len(found) > 1 or found[0].startswith("ISO 2022"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns before its own fallback
            encodings = pydicom.charset.convert_encodings(found)
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
    return _fast_value(tag, raw.VR, raw.value, raw.is_little_endian, encoding, threshold)


def _fast_value(
    tag: int,
    vr: str | None,
    value: bytes | None,
    little_endian: bool,
    encoding: str | None,
    threshold: int,
) -> dict[str, Any] | None:
    """`_fast_element` of a raw element given by its parts."""
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
        order = "<" if little_endian else ">"
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
    return _with_fields(dicom_json)


def _with_fields(dicom_json: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`dicom_json`, safe to serialise, and its search fields."""
    try:  # the event is JSON: a lone surrogate from an odd decoder would break it later
        to_json(dicom_json)
    except PydanticSerializationError:
        dicom_json = _scrub(dicom_json)
    return dicom_json, normalise_fields(dicom_json)


def _trailing_pixel_data(stream: BytesIO, ds: Dataset) -> tuple[str, dict[str, Any]] | None:
    """The element where a ``stop_before_pixels`` read stopped, if it is pixel data."""
    implicit, little = ds.original_encoding
    return _pixel_note(stream.read(6), implicit, little)


def _pixel_note(
    header: bytes, implicit: bool | None, little: bool | None
) -> tuple[str, dict[str, Any]] | None:
    """The JSON of pixel data from the first 6 bytes of its element, bulk data always."""
    if len(header) < 6:
        return None
    group, element = struct.unpack("<HH" if little else ">HH", header[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_TAGS:
        return None
    vr = "OW" if implicit else header[4:6].decode("ascii", "replace")
    return tag_hex(tag), {"vr": vr if vr in _BINARY_VRS else "OW"}


# --- the fast reader ------------------------------------------------------------------------
#
# pydicom's read of a 0.5 MB CT object costs more than everything else per object (its file
# meta and element objects). The reader below walks the Part 10 bytes itself, for the common
# encodings only, and builds the JSON with `_fast_value`. It is strict: whatever it is not sure
# pydicom reads the same way (other transfer syntaxes, VRs it cannot resolve alone, character
# set extensions, unordered or duplicate tags, any length that does not add up) makes it give
# up, and pydicom reads the whole object, so results and errors are those of pydicom's path.


class _NotForTheFastReader(Exception):
    """The bytes hold something the fast reader does not reproduce exactly."""


_TAG_LENGTH = struct.Struct("<HHL").unpack_from  # implicit VR elements, items, delimiters
_TAG_VR_LENGTH = struct.Struct("<HH2sH").unpack_from  # explicit VR, 16-bit length
_LENGTH_32 = struct.Struct("<L").unpack_from
_TAGS = struct.Struct("<HH").iter_unpack
_KNOWN_VRS = {vr.value.encode("ascii"): vr.value for vr in VR if len(vr.value) == 2}
# PS3.5 7.1.2: these have 2 reserved bytes and a 32-bit length in explicit VR
_LONG_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
_META_VRS = frozenset({"OB", "UI", "SH", "AE", "UL"})  # all of them convert without a fuss
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# big endian, deflate: pydicom reads these differently
_OTHER_ENCODINGS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UID_CHARACTERS = frozenset("0123456789.")


def _read_metadata_fast(
    data: bytes, whole: bool = True
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """`read_metadata` without pydicom, or None when pydicom must read `data`.

    `whole` False: `data` is only the object's first bytes, and the result is the object's
    only if the walk stopped at its pixel data within them (nothing after that element's
    header counts, as for pydicom's ``stop_before_pixels``); else None.
    """
    try:
        position, implicit = _file_meta(data)
        reader = _FastReader(data, implicit)
        dicom_json, position = reader.dataset(position, len(data), 0)
    except Exception:  # _NotForTheFastReader, or a value that surprised us: pydicom decides
        return None
    if not whole and position + 6 > len(data):  # the head ended before the pixel data
        return None
    # Not `_with_fields`: the reader made the fields as it went, and its serialisation check
    # cost a tenth of this reader's time: the reader's text comes from latin-1 or a codec
    # with errors="replace", neither of which leaves a lone surrogate (`_record` repairs one
    # all the same).
    fields = reader.fields
    if position < len(data):  # stopped at pixel data
        pixel = _pixel_note(data[position : position + 6], implicit, True)
        if pixel is None:
            return None
        dicom_json[pixel[0]] = pixel[1]
    return dicom_json, fields


def _file_meta(data: bytes) -> tuple[int, bool]:
    """Where the dataset starts and whether it is implicit VR (else explicit VR LE)."""
    if data[128:132] != b"DICM":
        raise _NotForTheFastReader
    position, end, last, syntax = 132, len(data), -1, None
    while True:
        if position + 8 > end:
            raise _NotForTheFastReader  # pydicom's reads of short tails are its own
        group, element, raw_vr, length = _TAG_VR_LENGTH(data, position)
        if group != 2:
            break
        tag = group << 16 | element
        vr = _KNOWN_VRS.get(raw_vr)
        if vr not in _META_VRS or tag <= last or (vr == "UL" and length != 4):
            raise _NotForTheFastReader
        last = tag
        start = position + 8
        if vr in _LONG_VRS:
            (length,) = _LENGTH_32(data, start)
            start += 4
        position = start + length
        if length == _UNDEFINED or position > end:
            raise _NotForTheFastReader
        if tag == 0x00020010 and vr == "UI":
            syntax = data[start:position].decode("latin-1").rstrip("\0 ")
    if group == 0 or not syntax or not _UID_CHARACTERS.issuperset(syntax):
        raise _NotForTheFastReader  # a command set, no or an odd transfer syntax
    if syntax in _OTHER_ENCODINGS or syntax in pydicom.uid.PrivateTransferSyntaxes:
        raise _NotForTheFastReader
    implicit = syntax == _IMPLICIT_VR_LE
    first_vr = data[position + 4 : position + 6]
    looks_explicit = 0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B
    if implicit == looks_explicit:  # pydicom would switch encodings, warning
        raise _NotForTheFastReader
    return position, implicit


# The JSON of short element values the fast reader has seen: most of an object's elements
# (its study's, series' and equipment's) repeat those of the objects before it, and decoding
# one costs microseconds against a fraction of one for the lookup. Entries are shared between
# the datasets that hold them: never modified after they are made.
_Element = tuple[str, dict[str, Any], tuple[str, Any] | None]  # key, JSON, `normalise_field`
_ELEMENTS: dict[tuple[int, str | None, bytes, str | None], _Element] = {}
_CACHED_ELEMENTS = 4096  # emptied when full: ~3 MB at most (~0.7 KB each)
_CACHED_VALUE_BYTES = 64


def _decoded_element(
    tag: int, vr: str | None, resolved: str | None, value: bytes, encoding: str | None, top: bool
) -> _Element:
    """The JSON of one element value and its search field, kept in `_ELEMENTS` if short.

    The search field is made only where it can be used: for the top-level dataset, or for the
    table (a value met in a sequence item now may be met at the top later).
    """
    entry: dict[str, Any] | None
    if resolved == "AT" and not len(value) % 4:  # pydicom's JSON of tags, which _fast_value leaves
        entry = {"vr": "AT", "Value": [f"{g << 16 | e:08X}" for g, e in _TAGS(value)]}
    else:
        entry = _fast_value(tag, vr, value, True, encoding, BULK_DATA_THRESHOLD)
    if entry is None:
        raise _NotForTheFastReader
    key = tag_hex(tag)
    kept = len(value) <= _CACHED_VALUE_BYTES
    element = (key, entry, normalise_field(key, entry) if top or kept else None)
    if kept:
        if len(_ELEMENTS) >= _CACHED_ELEMENTS:
            _ELEMENTS.clear()
        _ELEMENTS[(tag, vr, value, encoding)] = element
    return element


class _FastReader:
    """One walk over a Part 10 object in explicit or implicit VR little endian.

    An `end` of None stands for an undefined length: up to a delimiter, within the object.
    """

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.fields: dict[str, Any] = {}  # `normalise_fields` of the top-level dataset

    def dataset(
        self, position: int, end: int | None, depth: int, encoding: str = _DEFAULT_ENCODING
    ) -> tuple[dict[str, Any], int]:
        """The `dataset_json` of the elements from `position`, and where they end.

        The top-level dataset (depth 0) ends at pixel data, at the position of its element.
        """
        data, implicit, top, delimited = self.data, self.implicit, depth == 0, end is None
        fields = self.fields
        if end is None:
            end = len(data)
        result: dict[str, Any] = {}
        last = -1
        while position != end:
            if position + 8 > end:
                raise _NotForTheFastReader
            vr: str | None
            if implicit:
                group, element, length = _TAG_LENGTH(data, position)
                tag = group << 16 | element
                vr, resolved, start = None, _implicit_vr(tag, None), position + 8
            else:
                group, element, raw_vr, length = _TAG_VR_LENGTH(data, position)
                tag = group << 16 | element
                vr = resolved = _KNOWN_VRS.get(raw_vr)
                start = position + 8
            if group == 0xFFFE:
                if tag == _ITEM_END and delimited and _LENGTH_32(data, position + 4)[0] == 0:
                    return result, position + 8
                raise _NotForTheFastReader
            if vr is None and not implicit:
                raise _NotForTheFastReader
            if vr in _LONG_VRS:
                if start + 4 > end:
                    raise _NotForTheFastReader
                (length,) = _LENGTH_32(data, start)
                start += 4
            if top and tag in _PIXEL_TAGS:
                return result, position
            if tag <= last:
                raise _NotForTheFastReader  # pydicom keeps the last of duplicates: not worth it
            if element and tag < _SPECIFIC_CHARACTER_SET:
                raise _NotForTheFastReader  # before the character set: it would apply to them too
            last = tag
            if length == _UNDEFINED:
                if resolved != "SQ" or tag in _PIXEL_TAGS:
                    raise _NotForTheFastReader
                items, position = self.sequence(start, None, depth + 1, encoding)
                if element:
                    result[f"{tag:08X}"] = _sequence_json(items, depth)
                continue
            position = start + length
            if position > end:
                raise _NotForTheFastReader
            if not element:  # group lengths are not part of the JSON model
                continue
            if tag in _PIXEL_TAGS:  # bulk data in an item (an icon), whatever its size
                if vr is None:
                    raise _NotForTheFastReader
                result[f"{tag:08X}"] = {"vr": vr}
                continue
            if resolved == "SQ":
                items = []
                if length:
                    items, _ = self.sequence(start, position, depth + 1, encoding)
                result[f"{tag:08X}"] = _sequence_json(items, depth)
                continue
            if not length:  # what pydicom makes of an empty value: the VR alone
                if resolved is None or resolved == "UN" or tag == _SPECIFIC_CHARACTER_SET:
                    raise _NotForTheFastReader
                result[f"{tag:08X}"] = {"vr": resolved}
                continue
            value = data[start:position]
            if tag == _SPECIFIC_CHARACTER_SET:
                found = _charset_encoding(value) if b"\\" not in value else None
                if found is None:
                    raise _NotForTheFastReader
                encoding = found
            element = _ELEMENTS.get((tag, vr, value, encoding))
            if element is None:
                element = _decoded_element(tag, vr, resolved, value, encoding, top)
            result[element[0]] = element[1]
            if top and element[2] is not None:
                fields[element[2][0]] = element[2][1]
        if delimited:
            raise _NotForTheFastReader  # no item delimiter before the end
        return result, position

    def sequence(
        self, position: int, end: int | None, depth: int, encoding: str
    ) -> tuple[list[dict[str, Any]], int]:
        """The items of a sequence value from `position`, and where the value ends."""
        data, delimited = self.data, end is None
        if end is None:
            end = len(data)
        items: list[dict[str, Any]] = []
        while True:
            if position == end and not delimited:
                return items, position
            if position + 8 > end:
                raise _NotForTheFastReader
            group, element, length = _TAG_LENGTH(data, position)
            tag = group << 16 | element
            position += 8
            if tag == _SEQUENCE_END and length == 0 and delimited:
                return items, position
            if tag != _ITEM or (length != _UNDEFINED and position + length > end):
                raise _NotForTheFastReader
            stop = None if length == _UNDEFINED else position + length
            item, position = self.dataset(position, stop, depth, encoding)
            items.append(item)


def _sequence_json(items: list[dict[str, Any]], depth: int) -> dict[str, Any]:
    return {"vr": "SQ"} if depth >= MAX_SEQUENCE_DEPTH else {"vr": "SQ", "Value": items}


def read_metadata(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """`extract_metadata` of a Part 10 object; pixel data is skipped but noted as bulk data.

    Raises PoisonEvent when `data` is not a readable DICOM object.
    """
    fast = _read_metadata_fast(data)
    return fast if fast is not None else _read_metadata_pydicom(data)


def _read_metadata_pydicom(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """`read_metadata` by pydicom: every encoding, and the reference of the fast reader."""
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


def stored_metadata(blobs: BlobStore, ref: BlobRef) -> tuple[dict[str, Any], dict[str, Any]]:
    """`read_metadata` of a stored object, from its first `HEAD_BYTES` when they hold all of
    its header (a CT object's 0.5 MB were read and hashed for a few KB of attributes).

    The head is not checked against the object's SHA-256: the storage processor verified the
    object when it stored it, a moment before, and de-identification verifies it again. An
    object whose header does not end within the head, or that the fast reader leaves to
    pydicom, is read whole and verified, as before.
    """
    if ref.size > HEAD_BYTES:
        try:
            head = blobs.get_head(ref.namespace, ref.key, HEAD_BYTES)
        except BlobNotFound as exc:
            raise _unreadable(ref, exc) from exc
        if len(head) == HEAD_BYTES:
            found = _read_metadata_fast(head, whole=False)
            if found is not None:
                return found
    try:
        data = blobs.get_verified(ref)
    except (BlobNotFound, ChecksumMismatch) as exc:
        raise _unreadable(ref, exc) from exc
    return _metadata_of(ref, data)


def _unreadable(ref: BlobRef, exc: Exception) -> PoisonEvent:
    return PoisonEvent(f"object {ref.namespace}/{ref.key} cannot be read: {exc}")


def _metadata_of(ref: BlobRef, data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """`read_metadata` of the object `ref` whose bytes are `data`; a refusal names it."""
    try:
        return read_metadata(data)
    except PoisonEvent as exc:
        raise PoisonEvent(f"object {ref.namespace}/{ref.key}: {exc}") from exc


def metadata_record(context: ProcessorContext, event: ObjectStored, data: bytes) -> OutgoingRecord:
    """The ``metadata`` record of a stored object whose bytes are `data`."""
    return _record(context, event, *_metadata_of(event.blob, data))


def _record(
    context: ProcessorContext,
    event: ObjectStored,
    dicom_json: dict[str, Any],
    fields: dict[str, Any],
) -> OutgoingRecord:
    extracted = MetadataExtracted(
        identity=event.identity,
        namespace=event.blob.namespace,
        blob=event.blob,
        source=event.source,
        received_at=event.received_at,
        dicom_json=dicom_json,
        fields=fields,
    )
    try:
        value = encode_event(extracted)
    except PydanticSerializationError:  # a string JSON cannot carry: repaired as on extraction
        dicom_json, fields = _with_fields(dicom_json)
        repaired = {"dicom_json": dicom_json, "fields": fields}
        value = encode_event(extracted.model_copy(update=repaired))
    return OutgoingRecord(
        topic=context.topic(Topic.METADATA),
        key=event.identity.study_instance_uid,
        value=value,
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

    def __init__(self, context: ProcessorContext) -> None:
        super().__init__(context)
        self._read: list[BlobRef] = []

    def handle(self, record: Record) -> list[OutgoingRecord]:
        try:
            event = decode_event(record.value, ObjectStored)
        except ValidationError as exc:
            raise PoisonEvent(f"not an ObjectStored event: {exc}") from exc
        dicom_json, fields = stored_metadata(self.context.blobs, event.blob)
        self._read.append(event.blob)
        return [_record(self.context, event, dicom_json, fields)]

    def after_commit(self, records: Sequence[Record]) -> None:
        # The search path is done with these objects: their bytes need not stay in memory,
        # where a bulk import's millions of them would push out the index (de-identification,
        # in the background, and retrievals read them again from disk). A batch at a time:
        # see `drop_file_pages`.
        read, self._read = self._read, []
        self.context.blobs.drop_cached(read)


@hookimpl
def register_processors() -> list[type[Processor]]:
    return [MetadataProcessor]
