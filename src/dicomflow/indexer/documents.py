"""What every index back end builds from an event and returns for a search, in one place.

- `level_documents` splits an instance's DICOM JSON into its patient, study and series
  documents (each attribute at its level, see `dicomflow.indexer.levels`);
- `event_fields`, `patient_key` and `text_values` give the normalised values, the patient
  key and the free-text values of an event;
- `wanted_tags` and `select` decide which attributes a search result carries (the level's
  default return attributes, the matching keys, the include fields), and the `*_element`
  helpers build the DICOM JSON of the attributes that the index computes.

Moved out of `dicomflow.indexer.embedded` so that the embedded and the Elasticsearch index
build the same documents and return the same results.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from dicomflow.indexer.base import SearchRequest
from dicomflow.indexer.levels import (
    ALL_LEVELS_KEYWORDS,
    COMPUTED_KEYWORDS,
    DEFAULT_RETURN_KEYWORDS,
    OMIT_IF_ABSENT,
    Level,
    level_of_tag,
)
from dicomflow.indexer.query import Scalar, fields_of
from dicomflow.indexer.values import (
    ValueKind,
    as_list,
    keyword_hex,
    keyword_of_tag,
    normalise_fields,
    vr_of_tag,
)
from dicomflow.kernel.events import MetadataExtracted

__all__ = [
    "ALL_LEVELS_TAGS",
    "COMPUTED_TAGS",
    "ONLINE",
    "Wanted",
    "empty_element",
    "event_fields",
    "level_documents",
    "list_element",
    "number_element",
    "patient_key",
    "select",
    "series_tags",
    "text_values",
    "uid_element",
    "wanted_tags",
]

ALL_LEVELS_TAGS = frozenset(keyword_hex(k) for k in ALL_LEVELS_KEYWORDS)
COMPUTED_TAGS = frozenset(keyword_hex(k) for k in COMPUTED_KEYWORDS)

Wanted: TypeAlias = tuple[frozenset[str], frozenset[str]] | Literal["all"]
"""Tags a result returns: (returned even if empty, returned if present), or all."""

ONLINE: dict[str, Any] = {"vr": "CS", "Value": ["ONLINE"]}
"""InstanceAvailability of everything an index knows."""


# --- building documents ----------------------------------------------------------------------


def event_fields(event: MetadataExtracted) -> Mapping[str, Any]:
    """The normalised search fields of an event (computed when the event has none)."""
    return event.fields or normalise_fields(event.dicom_json)


def field_text(fields: Mapping[str, Any], keyword: str) -> str:
    """A single-valued text field, or ``''``."""
    value = fields.get(keyword)
    return value if isinstance(value, str) else ""


def patient_key(fields: Mapping[str, Any]) -> str:
    """The key of a patient within a namespace: ``PatientID\\IssuerOfPatientID``."""
    return f"{field_text(fields, 'PatientID')}\\{field_text(fields, 'IssuerOfPatientID')}"


def uid_element(uid: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]}


def level_documents(event: MetadataExtracted) -> dict[Level, dict[str, Any]]:
    """The patient, study and series DICOM JSON documents of one event.

    Each attribute goes to its level; SpecificCharacterSet and TimezoneOffsetFromUTC go to
    every level; the study and series documents always carry their UID.
    """
    levels = (Level.PATIENT, Level.STUDY, Level.SERIES)
    docs: dict[Level, dict[str, Any]] = {level: {} for level in levels}
    for key, element in event.dicom_json.items():
        try:
            level = level_of_tag(int(key, 16))
        except ValueError:
            continue
        if key in ALL_LEVELS_TAGS:
            for doc in docs.values():
                doc[key] = element
        elif level in docs:
            docs[level][key] = element
    identity = event.identity
    docs[Level.STUDY][keyword_hex("StudyInstanceUID")] = uid_element(identity.study_instance_uid)
    docs[Level.SERIES][keyword_hex("SeriesInstanceUID")] = uid_element(identity.series_instance_uid)
    return docs


def text_values(kind: ValueKind, value: object) -> Iterator[str]:
    """The free-text values of a normalised field (text and person names; ``^`` as space)."""
    if kind not in (ValueKind.TEXT, ValueKind.NAME):
        return
    for item in as_list(value):
        if isinstance(item, Mapping):
            for group in ("alphabetic", "ideographic", "phonetic"):
                text = item.get(group)
                if isinstance(text, str):
                    yield text.replace("^", " ")
        elif isinstance(item, str):
            yield item


# --- search results --------------------------------------------------------------------------


def wanted_tags(request: SearchRequest) -> Wanted:
    """The tags the results of `request` carry (see `select`)."""
    include = request.include_tags
    if include == "all":
        return "all"
    asked = include | {keyword_hex(k) for k in fields_of(request.query)}
    optional = {
        keyword_hex(k) for k in DEFAULT_RETURN_KEYWORDS[request.level] if k in OMIT_IF_ABSENT
    }
    required = {keyword_hex(k) for k in DEFAULT_RETURN_KEYWORDS[request.level]} - optional
    return asked | required, frozenset(optional - asked)


def series_tags(wanted: tuple[frozenset[str], frozenset[str]]) -> set[str]:
    """The wanted tags that a study result takes from its series (not computed ones)."""
    return {
        tag
        for tag in wanted[0] | wanted[1]
        if level_of_tag(int(tag, 16)) is Level.SERIES and tag not in COMPUTED_TAGS
    }


def empty_element(tag: int) -> dict[str, Any]:
    return {"vr": vr_of_tag(tag)}


def number_element(value: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [value]}


def list_element(vr: str, values: Sequence[Scalar]) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def select(doc: dict[str, Any], wanted: Wanted) -> dict[str, Any]:
    """The wanted attributes of a document, sorted by tag.

    An absent attribute comes back empty (as a C-FIND return key does), except the optional
    ones, which are left out.
    """
    if wanted == "all":
        return dict(sorted(doc.items()))
    required, optional = wanted
    selected: dict[str, Any] = {}
    for tag in sorted(required | optional):
        if tag in doc:
            selected[tag] = doc[tag]
        elif tag in required and keyword_of_tag(int(tag, 16)):
            selected[tag] = empty_element(int(tag, 16))
    return selected
