"""DICOM values in their normalised search form, shared by metadata extraction and queries.

`normalise_fields` turns a DICOM JSON model into the ``fields`` of a `MetadataExtracted` event;
the query parsers turn the values a user typed into the very same forms, so that matching is a
plain comparison:

- DA -> ``'YYYY-MM-DD'``; TM -> ``'HH:MM:SS'`` or ``'HH:MM:SS.ffffff'``; DT -> ISO 8601 text
  (``'YYYY-MM-DDTHH:MM:SS[.ffffff][+HH:MM]'``), so that text order is time order;
- IS, SS, US, SL, UL, SV, UV -> int; DS, FL, FD -> float (finite only);
- PN -> ``{"alphabetic": "DOE^JOHN", "family": "DOE", "given": "JOHN", ...}``;
- everything else textual -> the stripped string; multi-valued attributes -> lists.

A value that does not parse as its VR says is skipped (it stays as text in the DICOM JSON).
"""

import math
import re
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

from pydicom import datadict


class ValueKind(StrEnum):
    """How the values of a VR are normalised, compared and matched."""

    TEXT = "text"
    NAME = "name"
    UID = "uid"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    INT = "int"
    FLOAT = "float"
    SEQUENCE = "sequence"
    BINARY = "binary"


_KIND_OF_VR: dict[str, ValueKind] = {
    "PN": ValueKind.NAME,
    "UI": ValueKind.UID,
    "DA": ValueKind.DATE,
    "TM": ValueKind.TIME,
    "DT": ValueKind.DATETIME,
    "IS": ValueKind.INT,
    "SS": ValueKind.INT,
    "US": ValueKind.INT,
    "SL": ValueKind.INT,
    "UL": ValueKind.INT,
    "SV": ValueKind.INT,
    "UV": ValueKind.INT,
    "DS": ValueKind.FLOAT,
    "FL": ValueKind.FLOAT,
    "FD": ValueKind.FLOAT,
    "SQ": ValueKind.SEQUENCE,
    "OB": ValueKind.BINARY,
    "OD": ValueKind.BINARY,
    "OF": ValueKind.BINARY,
    "OL": ValueKind.BINARY,
    "OV": ValueKind.BINARY,
    "OW": ValueKind.BINARY,
    "UN": ValueKind.BINARY,
}

TEXT_KINDS = frozenset({ValueKind.TEXT, ValueKind.NAME, ValueKind.UID})
TEMPORAL_KINDS = frozenset({ValueKind.DATE, ValueKind.TIME, ValueKind.DATETIME})
NUMERIC_KINDS = frozenset({ValueKind.INT, ValueKind.FLOAT})

# Longest text kept in `fields`; the DICOM JSON keeps the whole value.
MAX_FIELD_TEXT = 4096

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@lru_cache(maxsize=1024)
def kind_of_vr(vr: str) -> ValueKind:
    """The kind of a VR; ambiguous VRs ("US or SS") take their first alternative."""
    return _KIND_OF_VR.get(vr.split(" ")[0].upper(), ValueKind.TEXT)


@lru_cache(maxsize=8192)
def tag_of_keyword(keyword: str) -> int | None:
    """The tag of a public DICOM keyword (``PatientName`` -> 0x00100010), or None."""
    return datadict.tag_for_keyword(keyword)


@lru_cache(maxsize=8192)
def keyword_of_tag(tag: int) -> str:
    """The keyword of a public tag, or ``''`` for private and unknown tags."""
    return datadict.keyword_for_tag(tag)


@lru_cache(maxsize=8192)
def vr_of_keyword(keyword: str) -> str:
    """The dictionary VR of a public keyword (first alternative when ambiguous)."""
    return datadict.dictionary_VR(keyword).split(" ")[0]


@lru_cache(maxsize=8192)
def vr_of_tag(tag: int) -> str:
    """The dictionary VR of a tag (first alternative when ambiguous), ``UN`` if unknown.

    By tag, repeating groups included: their keywords name no single tag (OverlayRows is
    60xx0010), so `vr_of_keyword` does not know them.
    """
    try:
        return datadict.dictionary_VR(tag).split(" ")[0]
    except KeyError:
        return "UN"


def kind_of_keyword(keyword: str) -> ValueKind:
    return kind_of_vr(vr_of_keyword(keyword))


@lru_cache(maxsize=1)
def _keywords_by_folded_name() -> dict[str, str]:
    return {keyword.casefold(): keyword for keyword in datadict.keyword_dict}


def resolve_keyword(key: str) -> str | None:
    """The public keyword named by `key`: a keyword (any case) or an 8-hex-digit tag.

    Returns None when `key` names no public attribute (unknown keyword, private tag) or an
    attribute of a repeating group, whose keyword names no single tag (OverlayRows is
    60xx0010).
    """
    key = key.strip()
    if _HEX_TAG.match(key):
        tag = int(key, 16)
        keyword = keyword_of_tag(tag)
        return keyword if keyword and tag_of_keyword(keyword) == tag else None
    if tag_of_keyword(key) is not None:
        return key
    return _keywords_by_folded_name().get(key.casefold())


def tag_hex(tag: int) -> str:
    """The DICOM JSON key of a tag (``0x00100010`` -> ``'00100010'``)."""
    return f"{tag:08X}"


@lru_cache(maxsize=8192)
def keyword_hex(keyword: str) -> str:
    """The DICOM JSON key of a public keyword (``PatientName`` -> ``'00100010'``)."""
    tag = tag_of_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return tag_hex(tag)


# --- temporal values -----------------------------------------------------------------------

_DA_RE = re.compile(r"^(\d{4})[.-]?(\d{2})[.-]?(\d{2})$")
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT_RE = re.compile(
    r"^(\d{4})(?:-?(\d{2})(?:-?(\d{2})"  # date
    r"(?:[T ]?(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?)?"  # time
    r")?)?([+-]\d{2}:?\d{2}|Z)?$"  # UTC offset
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _valid_date(year: int, month: int, day: int) -> bool:
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]):
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return not (month == 2 and day == 29 and not leap)


def parse_date(text: str) -> str | None:
    """``'20200131'``, ``'2020-01-31'`` or ``'2020.01.31'`` (ACR-NEMA) -> ``'2020-01-31'``."""
    match = _DA_RE.match(text.strip())
    if match is None:
        return None
    year, month, day = (int(g) for g in match.groups())
    if not _valid_date(year, month, day):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def parse_time(text: str, *, upper: bool = False) -> str | None:
    """``'1030'``, ``'103000.5'``, ``'10:30:00'`` -> ``'10:30:00'`` / ``'10:30:00.5'``.

    Missing components are zero, or, with ``upper=True`` (the high end of a range), their
    maximum: ``'10'`` -> ``'10:59:59.999999'``, ``'103000'`` -> ``'10:30:00.999999'``.
    """
    match = _TM_RE.match(text.strip())
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return None
    fill = "59" if upper else "00"
    result = f"{hours}:{minutes or fill}:{seconds or fill}"
    if fraction:
        result += f".{fraction}"
    elif upper:
        result += ".999999"
    return result


def parse_datetime(text: str, *, upper: bool = False) -> str | None:
    """DT (``'20200131103000.5+0100'``) or ISO text -> ``'2020-01-31T10:30:00.5+01:00'``.

    Missing components are their minimum (or their maximum with ``upper=True``).
    """
    match = _DT_RE.match(text.strip())
    if match is None:
        return None
    year, month, day, hours, minutes, seconds, fraction, offset = match.groups()
    if month is None:
        month = "12" if upper else "01"
    if day is None:
        day = f"{_last_day(int(year), int(month)):02d}" if upper else "01"
    if not _valid_date(int(year), int(month), int(day)):
        return None
    time_text = ":".join(filter(None, (hours, minutes, seconds)))
    if fraction:
        time_text += f".{fraction}"
    time_part = parse_time(time_text, upper=upper) if hours else None
    if hours and time_part is None:
        return None
    if time_part is None:
        time_part = "23:59:59.999999" if upper else "00:00:00"
    result = f"{year}-{month}-{day}T{time_part}"
    if offset and offset != "Z":
        digits = offset.replace(":", "")
        result += f"{digits[:3]}:{digits[3:]}"
    elif offset == "Z":
        result += "+00:00"
    return result


def _last_day(year: int, month: int) -> int:
    if not 1 <= month <= 12:
        return 31
    if month == 2:
        return 29 if _valid_date(year, 2, 29) else 28
    return _DAYS_IN_MONTH[month - 1]


def parse_partial_date(text: str, *, upper: bool = False) -> str | None:
    """A date, or a year (``'2020'``) or month (``'202001'``, ``'2020-01'``) widened to a day.

    The low end of a range takes the first day, the high end (``upper=True``) the last.
    """
    text = text.strip()
    full = parse_date(text)
    if full is not None:
        return full
    match = re.match(r"^(\d{4})(?:-?(\d{2}))?$", text)
    if match is None:
        return None
    year = int(match.group(1))
    month = int(match.group(2)) if match.group(2) else (12 if upper else 1)
    if not 1 <= month <= 12:
        return None
    day = _last_day(year, month) if upper else 1
    return f"{year:04d}-{month:02d}-{day:02d}"


# --- numbers -------------------------------------------------------------------------------


def parse_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = parse_float(text)
            return int(number) if number is not None and number.is_integer() else None
    return None


def parse_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


# --- person names --------------------------------------------------------------------------

_PN_PARTS = ("family", "given", "middle", "prefix", "suffix")


def normalise_name(text: str) -> str:
    """The matching form of a person name: upper case, no trailing empty components.

    ``'Doe^John^^^'`` -> ``'DOE^JOHN'``; wildcards are left alone.
    """
    groups = [group.strip().rstrip("^").strip() for group in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper()


def person_name_fields(
    alphabetic: str, ideographic: str = "", phonetic: str = ""
) -> dict[str, str]:
    """``'DOE^JOHN'`` -> ``{"alphabetic": "DOE^JOHN", "family": "DOE", "given": "JOHN"}``."""
    alphabetic = alphabetic.strip().rstrip("^")
    result = {"alphabetic": alphabetic}
    for part, value in zip(_PN_PARTS, alphabetic.split("^"), strict=False):
        if value.strip():
            result[part] = value.strip()
    if ideographic.strip():
        result["ideographic"] = ideographic.strip().rstrip("^")
    if phonetic.strip():
        result["phonetic"] = phonetic.strip().rstrip("^")
    return result


def name_forms(value: Mapping[str, Any]) -> Iterator[str]:
    """The matching forms of one normalised person name (each representation group)."""
    for group in ("alphabetic", "ideographic", "phonetic"):
        text = value.get(group)
        if isinstance(text, str) and text:
            yield normalise_name(text)


# --- one value, one element, one dataset -----------------------------------------------------


def normalise_value(kind: ValueKind, value: object) -> object | None:
    """One value of a DICOM JSON element in its search form, or None if it does not parse."""
    return _NORMALISERS.get(kind, _normalise_text)(value)


def _normalise_name(value: object) -> object | None:
    if type(value) is dict or isinstance(value, Mapping):
        alphabetic = value.get("Alphabetic", "")
        ideographic = value.get("Ideographic", "")
        phonetic = value.get("Phonetic", "")
        if not all(isinstance(v, str) for v in (alphabetic, ideographic, phonetic)):
            return None
        if not (alphabetic or ideographic or phonetic):
            return None
        return person_name_fields(alphabetic, ideographic, phonetic)
    if isinstance(value, str) and value.strip():
        groups = [*value.split("="), "", ""]
        return person_name_fields(groups[0], groups[1], groups[2])
    return None


def _normalise_date(value: object) -> str | None:
    return parse_date(value) if isinstance(value, str) else None


def _normalise_time(value: object) -> str | None:
    return parse_time(value) if isinstance(value, str) else None


def _normalise_datetime(value: object) -> str | None:
    return parse_datetime(value) if isinstance(value, str) else None


def _normalise_text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip()[:MAX_FIELD_TEXT] or None


# One function per kind: this runs for every value of every stored object.
_NORMALISERS: dict[ValueKind, Callable[[object], object | None]] = {
    ValueKind.NAME: _normalise_name,
    ValueKind.INT: parse_int,
    ValueKind.FLOAT: parse_float,
    ValueKind.DATE: _normalise_date,
    ValueKind.TIME: _normalise_time,
    ValueKind.DATETIME: _normalise_datetime,
}


def normalise_element(vr: str, values: list[Any]) -> object | None:
    """The search form of an element's values: a scalar, a list, or None if nothing parsed."""
    kind = kind_of_vr(vr)
    if kind is ValueKind.SEQUENCE or kind is ValueKind.BINARY:
        return None
    normalise = _NORMALISERS.get(kind, _normalise_text)
    if len(values) == 1:
        return normalise(values[0])
    normalised = [v for v in map(normalise, values) if v is not None]
    if not normalised:
        return None
    return normalised[0] if len(normalised) == 1 else normalised


@lru_cache(maxsize=8192)
def _keyword_of_key(key: str) -> str:
    """The keyword of a DICOM JSON key, ``''`` for group lengths, private and unknown tags."""
    if not _HEX_TAG.match(key):
        return ""
    tag = int(key, 16)
    return "" if tag & 0xFFFF == 0 else keyword_of_tag(tag)


def normalise_fields(dicom_json: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fields`` of an instance: its top-level public attributes by keyword, normalised.

    Sequences, bulk and binary values, private tags and values that do not parse are left out.
    """
    fields: dict[str, Any] = {}
    for key, element in dicom_json.items():
        item = normalise_field(key, element)
        if item is not None:
            fields[item[0]] = item[1]
    return fields


def normalise_field(key: str, element: object) -> tuple[str, Any] | None:
    """One item of `normalise_fields`: (keyword, search form) of a top-level DICOM JSON
    element, or None if it is left out."""
    # type() first: an ABC's isinstance costs as much as the rest of the loop
    if not (type(element) is dict or isinstance(element, Mapping)):
        return None
    keyword = _keyword_of_key(key)
    if not keyword:
        return None
    values = element.get("Value")
    vr = element.get("vr")
    if not isinstance(values, list) or not isinstance(vr, str):
        return None
    value = normalise_element(vr, values)
    return None if value is None else (keyword, value)


def as_list(value: object) -> list[object]:
    """A field value as a list (fields hold a scalar for one value, a list for several)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
