"""The full tag dump of an instance, from its DICOM JSON (PS3.18 F.2), as table rows."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_description

from dicomflow.indexer.values import keyword_of_tag

MAX_VALUES_SHOWN = 64
MAX_TEXT = 4096
MAX_DEPTH = 16


@dataclass(frozen=True)
class TagRow:
    """One line of the dump: an element, or a sequence item header (`item` set)."""

    depth: int
    tag: str = ""
    keyword: str = ""
    name: str = ""
    vr: str = ""
    value: str = ""
    bulk_uri: str = ""
    item: int | None = None


def tag_label(key: str) -> str:
    """``00100010`` as ``(0010,0010)``."""
    return f"({key[:4]},{key[4:]})" if len(key) == 8 else key


def _name(key: str) -> tuple[str, str]:
    try:
        tag = int(key, 16)
    except ValueError:
        return "", ""
    keyword = keyword_of_tag(tag)
    if not keyword:
        return "", "Private tag" if (tag >> 16) % 2 else "Unknown tag"
    try:
        return keyword, str(dictionary_description(tag))
    except KeyError:
        return keyword, keyword


def _person(value: Any) -> str:
    if not isinstance(value, Mapping):
        return str(value)
    groups = [str(value.get(k, "")) for k in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def value_text(element: Mapping[str, Any]) -> str:
    """The value of a non-sequence element as text (multiple values joined with ``\\``)."""
    if "InlineBinary" in element:
        return f"(binary, {len(str(element['InlineBinary'])) * 3 // 4} bytes)"
    values = element.get("Value")
    if not isinstance(values, list):
        return ""
    shown = values[:MAX_VALUES_SHOWN]
    if element.get("vr") == "PN":
        parts = [_person(v) for v in shown]
    else:
        parts = ["" if v is None else str(v) for v in shown]
    out = "\\".join(parts)
    if len(values) > MAX_VALUES_SHOWN:
        out += f" ... ({len(values)} values)"
    return out if len(out) <= MAX_TEXT else out[:MAX_TEXT] + " ..."


def tag_rows(dicom_json: Mapping[str, Any], depth: int = 0) -> Iterator[TagRow]:
    """Every element of `dicom_json` in tag order, sequences expanded item by item."""
    for key in sorted(dicom_json):
        element = dicom_json[key]
        if not isinstance(element, Mapping):
            continue
        keyword, name = _name(key)
        vr = str(element.get("vr", ""))
        if vr == "SQ":
            items = element.get("Value") or []
            count = len(items) if isinstance(items, list) else 0
            yield TagRow(depth, tag_label(key), keyword, name, vr, f"{count} item(s)")
            if depth >= MAX_DEPTH or not isinstance(items, list):
                continue
            for number, item in enumerate(items, start=1):
                yield TagRow(depth + 1, item=number)
                if isinstance(item, Mapping):
                    yield from tag_rows(item, depth + 2)
            continue
        yield TagRow(
            depth,
            tag_label(key),
            keyword,
            name,
            vr,
            value_text(element),
            bulk_uri=str(element.get("BulkDataURI", "")),
        )
