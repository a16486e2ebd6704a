"""The scale-out search index: Elasticsearch (8.x, with the `elasticsearch` extra).

Layout
------
Four indices per namespace, created from one composable index template:
``<prefix>-patients``, ``<prefix>-studies``, ``<prefix>-series``, ``<prefix>-instances`` for
the originals and ``<prefix>-deidentified-patients``... for the de-identified copies. Separate
indices rather than a namespace field, because (1) access to identifiable data can then be
granted per index (index privileges are in every Elasticsearch licence, document-level
security is not), (2) clearing a namespace before a reindex drops four indices instead of
deleting documents one by one, and (3) a Kibana data view on ``<prefix>-instances`` never
mixes originals and their de-identified copies. Each document still carries ``namespace``.

Document ids are deterministic: the SOP Instance UID in the instances index, the series and
study UIDs in theirs, the patient key (``PatientID\\IssuerOfPatientID``) in the patients index;
within its namespace's index, so that a re-delivered event overwrites.

Every document has the searchable values of its whole lineage, one object per level
(``patient.PatientName``, ``study.StudyDate``, ``series.Modality``, ``instance.Rows``):

- its own level's attributes, and the attributes of its ancestors (a series document has its
  study's and patient's), so that a query on any level's attribute is one term on the
  document searched, as the embedded index relates ancestors;
- the union of its descendants' values (a study document's ``series.Modality`` lists the
  modality of every series), so that "a study matches Modality:MR when one of its series does"
  is one term too; the instance attributes rolled up are the low-cardinality ones (SOP class,
  rows, columns, bits, frames);
- the computed attributes (counts, ModalitiesInStudy, SOPClassesInStudy) on their level's
  document and rolled up, never down: a query on an ancestor's computed attribute, or on a
  high-cardinality instance attribute (SOP Instance UID, instance number, content date and
  time) from a higher level, runs in two steps (the matching keys first, then a terms query).

Free text is in ``text.patient``, ``text.study``, ``text.series`` (standard analyser over
values folded the way SQLite's FTS5 ``remove_diacritics`` folds them, done in Python so that
the mapping needs no analysis plugin). The DICOM JSON is in ``_source`` under ``dicom``
(``enabled: false``: kept, never indexed): the whole instance for instances, the level's
attributes for the others, and those of the ancestors under ``dicom_lineage`` (so that a study
or series result is one document, as current as the search values are).

Writing
-------
`upsert` writes the instances with the bulk helper, refreshes the instances index, then
recomputes every study touched by the batch (and every series and patient of those) from the
instance documents with one aggregation per study (series, instance count, SOP classes and
rolled-up values), and bulk-writes the series, study and patient documents. Re-delivery
therefore never double-counts: nothing is incremented, everything is recounted. Documents that
are read, changed and written back carry ``if_seq_no``/``if_primary_term``; a conflict (another
writer) raises `BackPressure` and the runtime retries the batch, as it does when Elasticsearch
stays busy (429/503) past the retries here; an unreachable cluster raises `BackendUnavailable`.
When an event changes patient or study attributes (last writer wins), the other documents of
that patient or study are rewritten with the new values.

By default `upsert` ends with a refresh, so that a search right after it sees the batch (the
archive promises "searchable within seconds"; a refresh per batch costs some throughput, see
`refresh`).
"""

import hashlib
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeAlias, TypeVar

from dicomflow.indexer.base import (
    InstanceRecord,
    SearchRequest,
    SearchResult,
    SortKey,
    StudyIndex,
)
from dicomflow.indexer.documents import (
    ONLINE,
    Wanted,
    event_fields,
    level_documents,
    list_element,
    number_element,
    patient_key,
    select,
    series_tags,
    text_values,
    wanted_tags,
)
from dicomflow.indexer.embedded import INSTANCE_COLUMNS, MAX_ATTR_TEXT
from dicomflow.indexer.exceptions import IndexerError, InvalidQuery
from dicomflow.indexer.levels import (
    COMPUTED_KEYWORDS,
    DEFAULT_RETURN_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    Level,
    level_of_keyword,
)
from dicomflow.indexer.query import (
    And,
    AnyOf,
    Match,
    Not,
    Or,
    Query,
    Range,
    Scalar,
    Text,
    Wildcard,
)
from dicomflow.indexer.values import (
    NUMERIC_KINDS,
    ValueKind,
    as_list,
    keyword_hex,
    kind_of_keyword,
    name_forms,
    normalise_name,
    parse_int,
    tag_of_keyword,
)
from dicomflow.kernel.events import BlobRef, MetadataExtracted, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure, MissingExtra

try:
    from elasticsearch import (
        ApiError,
        ConnectionTimeout,
        Elasticsearch,
        TransportError,
    )
    from elasticsearch import ConnectionError as EsConnectionError
    from elasticsearch.helpers import streaming_bulk
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
    if exc.name != "elasticsearch":
        raise
    raise MissingExtra("elasticsearch", "elasticsearch") from exc

__all__ = [
    "SCHEMA_VERSION",
    "ElasticsearchStudyIndex",
    "fold_text",
    "index_names",
    "mappings",
    "templates",
]

SCHEMA_VERSION = 1
"""Version of the mappings; indices made by another version must be rebuilt."""

Doc: TypeAlias = dict[str, Any]
T = TypeVar("T")

LEVEL_SUFFIX = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.INSTANCE: "instances",
}
KEY_FIELD = {
    Level.PATIENT: "patient_key",
    Level.STUDY: "study_uid",
    Level.SERIES: "series_uid",
    Level.INSTANCE: "sop_uid",
}
_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE)
_ENTITY_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES)
_TEXT_FIELDS = ("text.patient", "text.study", "text.series")

# Instance attributes that can be searched (the embedded index's instance columns).
SEARCHABLE_INSTANCE_KEYWORDS = frozenset(INSTANCE_COLUMNS) - {"InstanceAvailability"}
# Those whose few distinct values are rolled up into series, study and patient documents;
# the others are matched from higher levels in two steps.
ROLLED_UP_INSTANCE_KEYWORDS = ("SOPClassUID", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")
MAX_RELATED_KEYS = 65_536
"""Most keys a two-step match may collect (Elasticsearch's default index.max_terms_count)."""

_BULK_CHUNK = 500
_PAGE = 5_000
_RESULT_WINDOW = 10_000
_ROLLUP_TERMS = 1_000
_MAX_SERIES_PER_STUDY = 10_000
_BUSY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ID_BYTES = 200

_RESULT_FIELDS = {
    level: [f"{level.value}.{k}" for k, owner in COMPUTED_KEYWORDS.items() if owner is level]
    for level in (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE)
}
"""The computed attributes a search result takes from its document."""
_MATCH_ALL: Doc = {"match_all": {}}
_MATCH_NONE: Doc = {"match_none": {}}
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,200}$")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def index_names(prefix: str, namespace: Namespace) -> dict[Level, str]:
    """The index of each level of `namespace`: ``<prefix>[-<namespace>]-<level>``."""
    base = prefix if namespace is Namespace.ORIGINAL else f"{prefix}-{namespace.value}"
    return {level: f"{base}-{suffix}" for level, suffix in LEVEL_SUFFIX.items()}


# --- values ----------------------------------------------------------------------------------


def fold_text(text: str) -> str:
    """Free text as it is indexed and searched: no diacritics, lower case, words by spaces.

    The folding of SQLite FTS5's ``unicode61 remove_diacritics 2`` tokenizer, done here so
    that the index needs only Elasticsearch's built-in standard analyser.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", stripped.casefold()).strip()


def _search_values(kind: ValueKind, value: object) -> list[Scalar]:
    """The values of a normalised field as they are matched (as the embedded attrs rows)."""
    out: list[Scalar] = []
    for item in as_list(value):
        if kind is ValueKind.NAME and isinstance(item, Mapping):
            out.extend(form[:MAX_ATTR_TEXT] for form in name_forms(item))
        elif kind in NUMERIC_KINDS and isinstance(item, int | float) and not isinstance(item, bool):
            out.append(item)
        elif isinstance(item, str):
            out.append(item[:MAX_ATTR_TEXT])
    return list(dict.fromkeys(out))


def _scalars(value: object) -> list[Scalar]:
    return [v for v in as_list(value) if isinstance(v, str | int | float)]


def _compact(values: Sequence[Scalar]) -> Scalar | list[Scalar]:
    return values[0] if len(values) == 1 else list(values)


def _union(objects: Iterable[Mapping[str, Any]]) -> Doc:
    """The attribute objects merged: every keyword with the distinct values of all of them."""
    merged: dict[str, dict[Scalar, None]] = {}
    for obj in objects:
        for keyword, value in obj.items():
            bucket = merged.setdefault(keyword, {})
            for item in as_list(value):
                if isinstance(item, str | int | float):
                    bucket[item] = None
    return {
        keyword: _compact(sorted(values, key=_sort_token))
        for keyword, values in sorted(merged.items())
        if values
    }


def _sort_token(value: Scalar) -> tuple[int, float, str]:
    if isinstance(value, str):
        return 1, 0.0, value
    return 0, float(value), ""


def _texts(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _first_text(obj: Mapping[str, Any], keyword: str) -> str | None:
    values = as_list(obj.get(keyword))
    return values[0] if values and isinstance(values[0], str) else None


def _doc_id(key: str) -> str:
    """A document id for a key (long keys, which Elasticsearch refuses, are hashed)."""
    if len(key.encode()) <= _MAX_ID_BYTES:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# --- mappings --------------------------------------------------------------------------------


def _field_mapping(kind: ValueKind) -> Doc:
    if kind is ValueKind.NAME:
        return {"type": "keyword", "fields": {"text": {"type": "text"}}}
    if kind is ValueKind.DATE:
        return {
            "type": "date",
            "format": "strict_date",
            "ignore_malformed": True,
            "fields": {"raw": {"type": "keyword"}},
        }
    if kind is ValueKind.INT:
        return {"type": "long", "ignore_malformed": True}
    if kind is ValueKind.FLOAT:
        return {"type": "double", "ignore_malformed": True}
    # UIDs, text, and times and date-times as formatted text (ISO: text order is time order)
    return {"type": "keyword"}


def _explicit_keywords() -> dict[Level, list[str]]:
    """The attributes mapped explicitly, per level object (the others map dynamically)."""
    names = set(PATIENT_KEYWORDS | STUDY_KEYWORDS | SERIES_KEYWORDS | set(COMPUTED_KEYWORDS))
    for keywords in DEFAULT_RETURN_KEYWORDS.values():
        names.update(keywords)
    names = {k for k in names if level_of_keyword(k) is not Level.INSTANCE}
    names |= SEARCHABLE_INSTANCE_KEYWORDS
    per_level: dict[Level, list[str]] = {level: [] for level in _LEVELS}
    for keyword in sorted(names):
        if tag_of_keyword(keyword) is None or keyword == "InstanceAvailability":
            continue
        if kind_of_keyword(keyword) in (ValueKind.SEQUENCE, ValueKind.BINARY):
            continue
        per_level[level_of_keyword(keyword)].append(keyword)
    return per_level


EXPLICIT_KEYWORDS = _explicit_keywords()
DATE_FIELDS = frozenset(
    f"{level.value}.{keyword}"
    for level, keywords in EXPLICIT_KEYWORDS.items()
    for keyword in keywords
    if kind_of_keyword(keyword) is ValueKind.DATE
)
"""Attribute fields mapped as dates (wildcards go to their ``.raw`` keyword sub-field)."""


def mappings() -> Doc:
    keyword: Doc = {"type": "keyword"}
    date: Doc = {"type": "date"}
    text: Doc = {
        "type": "text",
        "norms": False,  # filters only: no scoring
        "index_prefixes": {"min_chars": 1, "max_chars": 10},
    }
    level_objects: Doc = {
        level.value: {
            "type": "object",
            "dynamic": True,
            "properties": {k: _field_mapping(kind_of_keyword(k)) for k in keywords},
        }
        for level, keywords in EXPLICIT_KEYWORDS.items()
    }
    dynamic_templates: list[Doc] = []
    for level in _LEVELS:
        for json_type, mapping in (
            ("long", {"type": "long", "ignore_malformed": True}),
            ("double", {"type": "double", "ignore_malformed": True}),
            ("string", {"type": "keyword"}),
        ):
            dynamic_templates.append(
                {
                    f"{level.value}_{json_type}": {
                        "path_match": f"{level.value}.*",
                        "match_mapping_type": json_type,
                        "mapping": mapping,
                    }
                }
            )
    return {
        "dynamic": "strict",
        "date_detection": False,
        "numeric_detection": False,
        "dynamic_templates": dynamic_templates,
        "_meta": {"managed_by": "dicomflow", "schema_version": SCHEMA_VERSION},
        "properties": {
            "@timestamp": date,
            "indexed_at": date,
            "namespace": keyword,
            "level": keyword,
            "patient_key": keyword,
            "study_uid": keyword,
            "series_uid": keyword,
            "sop_uid": keyword,
            "created": {"type": "long"},
            "parent_created": {"type": "long"},
            "patient_name": keyword,
            "modality": keyword,
            "study_date": {"type": "date", "format": "strict_date", "ignore_malformed": True},
            "sop_class_uid": keyword,
            "transfer_syntax_uid": keyword,
            "bytes": {"type": "long"},
            "source": {
                "properties": {
                    "kind": keyword,
                    "calling_ae": keyword,
                    "called_ae": keyword,
                    "address": keyword,
                }
            },
            "study_uids": keyword,
            "series_uids": keyword,
            "text": {
                "dynamic": "strict",
                "properties": {"patient": text, "study": text, "series": text},
            },
            **level_objects,
            "blob": {"type": "object", "enabled": False},
            "dicom": {"type": "object", "enabled": False},
            "dicom_lineage": {"type": "object", "enabled": False},
        },
    }


def templates(prefix: str, *, shards: int = 1, replicas: str = "0-1") -> dict[str, Doc]:
    """The component templates and the index template of `prefix` (name -> body).

    Exact index names as patterns, so that templates of other prefixes never overlap.
    """
    patterns = sorted(
        name for namespace in Namespace for name in index_names(prefix, namespace).values()
    )
    return {
        f"{prefix}-settings": {
            "template": {
                "settings": {
                    "index": {
                        "number_of_shards": shards,
                        "auto_expand_replicas": replicas,
                        "refresh_interval": "1s",
                        "max_result_window": _RESULT_WINDOW,
                        "mapping": {"total_fields": {"limit": 5000}},
                    }
                }
            },
            "_meta": {"managed_by": "dicomflow", "schema_version": SCHEMA_VERSION},
        },
        f"{prefix}-mappings": {
            "template": {"mappings": mappings()},
            "_meta": {"managed_by": "dicomflow", "schema_version": SCHEMA_VERSION},
        },
        prefix: {
            "index_patterns": patterns,
            "composed_of": [f"{prefix}-settings", f"{prefix}-mappings"],
            "priority": 500,
            "version": SCHEMA_VERSION,
            "_meta": {"managed_by": "dicomflow", "schema_version": SCHEMA_VERSION},
        },
    }


# --- the part of a document each level contributes ---------------------------------------------


@dataclass
class _Part:
    """What one entity says about itself: searchable attributes, free text, DICOM JSON."""

    attrs: Doc = field(default_factory=dict)
    text: list[str] = field(default_factory=list)
    dicom: Doc = field(default_factory=dict)
    received: str = ""

    def same(self, other: "_Part | None") -> bool:
        return other is not None and (self.attrs, self.text) == (other.attrs, other.text)


def _received(event: MetadataExtracted) -> str:
    return event.received_at.astimezone(UTC).isoformat()


def _event_parts(event: MetadataExtracted) -> dict[Level, _Part]:
    """The patient, study and series parts of one event."""
    fields = event_fields(event)
    docs = level_documents(event)
    received = _received(event)
    parts = {level: _Part(dicom=docs[level], received=received) for level in _ENTITY_LEVELS}
    texts: dict[Level, list[str]] = {level: [] for level in _ENTITY_LEVELS}
    for keyword, value in fields.items():
        level = level_of_keyword(keyword)
        if keyword in COMPUTED_KEYWORDS or level is Level.INSTANCE:
            continue
        kind = kind_of_keyword(keyword)
        if kind in (ValueKind.SEQUENCE, ValueKind.BINARY) or tag_of_keyword(keyword) is None:
            continue
        values = _search_values(kind, value)
        if values:
            parts[level].attrs[keyword] = _compact(values)
        texts[level].extend(fold_text(text) for text in text_values(kind, value))
    identity = event.identity
    parts[Level.STUDY].attrs["StudyInstanceUID"] = identity.study_instance_uid
    parts[Level.SERIES].attrs["SeriesInstanceUID"] = identity.series_instance_uid
    for level in _ENTITY_LEVELS:
        parts[level].attrs = dict(sorted(parts[level].attrs.items()))
        parts[level].text = _texts(texts[level])
    return parts


def _instance_attrs(event: MetadataExtracted) -> Doc:
    """The searchable attributes of the instance itself (the embedded index's columns)."""
    fields = event_fields(event)
    identity = event.identity
    instance: Doc = {
        "SOPInstanceUID": identity.sop_instance_uid,
        "SOPClassUID": identity.sop_class_uid,
    }
    for keyword in ("InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"):
        values = as_list(fields.get(keyword))
        number = parse_int(values[0]) if values else None
        if number is not None:
            instance[keyword] = number
    for keyword in ("ContentDate", "ContentTime"):
        text = fields.get(keyword)
        if isinstance(text, str) and text:
            instance[keyword] = text
    return instance


def _own_part(level: Level, doc: Mapping[str, Any]) -> _Part:
    """The part of `level` as a stored document has it (its own, or an ancestor's)."""
    attrs = {k: v for k, v in doc.get(level.value, {}).items() if k not in COMPUTED_KEYWORDS}
    text = list(doc.get("text", {}).get(level.value, []))
    if doc.get("level") == level.value:
        dicom = doc.get("dicom", {})
    else:
        dicom = doc.get("dicom_lineage", {}).get(level.value, {})
    return _Part(attrs, text, dicom, doc.get("@timestamp", ""))


def _lineage(doc: Doc, parts: Mapping[Level, _Part]) -> Doc:
    """`doc` with the attributes and text of the given levels set (ancestors or own).

    Patient and study documents of ancestors also go to ``dicom_lineage`` of series and
    study documents, so that their search results need no second request.
    """
    text = doc.setdefault("text", {})
    for level, part in parts.items():
        doc[level.value] = dict(part.attrs)
        text[level.value] = list(part.text)
        if doc.get("level") not in (level.value, Level.INSTANCE.value):
            doc.setdefault("dicom_lineage", {})[level.value] = part.dicom
        if level is Level.PATIENT:
            doc["patient_name"] = _patient_name(part)
        elif level is Level.SERIES:
            doc["modality"] = _first_text(part.attrs, "Modality")
        elif level is Level.STUDY:
            doc["study_date"] = _first_text(part.attrs, "StudyDate")
    return doc


def _patient_name(part: _Part) -> str:
    """The sort key of a patient: the normalised alphabetic name (as the embedded index)."""
    for element in as_list(part.dicom.get(keyword_hex("PatientName"), {}).get("Value")):
        if isinstance(element, Mapping) and isinstance(element.get("Alphabetic"), str):
            return normalise_name(element["Alphabetic"])
        if isinstance(element, str):
            return normalise_name(element.split("=")[0])
        break
    return ""


def _later(*stamps: str | None) -> str | None:
    return max((s for s in stamps if s), default=None)


# --- the client's failures as the pipeline's ---------------------------------------------------


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError):
        return int(exc.meta.status)
    return None


def _transient(exc: BaseException, what: str) -> Exception | None:
    if isinstance(exc, EsConnectionError | ConnectionTimeout):
        return BackendUnavailable(
            f"Elasticsearch cannot be reached to {what} ({exc}); the batch will be retried"
        )
    status = _status(exc)
    if status in _BUSY_STATUSES:
        return BackPressure(
            f"Elasticsearch is busy (HTTP {status}) and could not {what}; retry", retry_after=2.0
        )
    if isinstance(exc, TransportError):
        return BackendUnavailable(f"Elasticsearch failed to {what} ({exc})")
    return None


# --- compiling a query -------------------------------------------------------------------------


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _constant_matches(value: str, query: Match | Wildcard | Range | AnyOf) -> bool:
    """Whether a constant attribute (InstanceAvailability) matches a field query."""
    if isinstance(query, Match):
        return query.value == value
    if isinstance(query, AnyOf):
        return value in query.values
    if isinstance(query, Wildcard):
        return _wildcard_regex(query.pattern).fullmatch(value) is not None
    low, high = query.low, query.high
    if low is not None and not (value > str(low) or (query.include_low and value == str(low))):
        return False
    return high is None or value < str(high) or (query.include_high and value == str(high))


def _field_clause(path: str, numeric: bool, query: Match | Wildcard | Range | AnyOf) -> Doc:
    """The Elasticsearch clause of one field query on the field `path`."""
    if isinstance(query, Match):
        return {"term": {path: query.value}}
    if isinstance(query, AnyOf):
        return {"terms": {path: list(query.values)}}
    if isinstance(query, Range):
        bounds: Doc = {}
        if query.low is not None:
            bounds["gte" if query.include_low else "gt"] = query.low
        if query.high is not None:
            bounds["lte" if query.include_high else "lt"] = query.high
        return {"range": {path: bounds}} if bounds else {"exists": {"field": path}}
    if numeric or query.pattern.replace("*", "") == "":
        return {"exists": {"field": path}}
    target = f"{path}.raw" if path in DATE_FIELDS else path
    return {"wildcard": {target: {"value": query.pattern}}}


RelatedKeys = Callable[[Level, Doc, str], list[str]]
"""(level to search, its query, key field to collect) -> the distinct keys found."""


class _Compiler:
    """Translates the query AST into the query DSL over the documents of `target`."""

    def __init__(self, target: Level, related_keys: RelatedKeys) -> None:
        self.target = target
        self.related_keys = related_keys

    def compile(self, query: Query) -> Doc:
        if isinstance(query, And):
            if not query.items:
                return _MATCH_ALL
            return {"bool": {"filter": [self.compile(item) for item in query.items]}}
        if isinstance(query, Or):
            if not query.items:
                return _MATCH_NONE
            return {
                "bool": {
                    "should": [self.compile(item) for item in query.items],
                    "minimum_should_match": 1,
                }
            }
        if isinstance(query, Not):
            return {"bool": {"must_not": [self.compile(query.item)]}}
        if isinstance(query, Text):
            return self._text(query)
        return self._field(query)

    def _text(self, query: Text) -> Doc:
        folded = fold_text(query.text)
        if not folded:
            return _MATCH_NONE
        kind = "match_phrase_prefix" if query.prefix else "match_phrase"
        options: Doc = {"query": folded}
        if query.prefix:
            options["max_expansions"] = 1000
        return {
            "bool": {
                "should": [{kind: {path: dict(options)}} for path in _TEXT_FIELDS],
                "minimum_should_match": 1,
            }
        }

    def _field(self, query: Match | Wildcard | Range | AnyOf) -> Doc:
        keyword = query.field
        if keyword == "InstanceAvailability":
            return _MATCH_ALL if _constant_matches("ONLINE", query) else _MATCH_NONE
        home = level_of_keyword(keyword)
        if home is Level.INSTANCE and keyword not in SEARCHABLE_INSTANCE_KEYWORDS:
            raise InvalidQuery(
                f"{keyword} cannot be searched (instance attributes that can: "
                f"{', '.join(sorted(INSTANCE_COLUMNS))})"
            )
        numeric = kind_of_keyword(keyword) in NUMERIC_KINDS
        clause = _field_clause(f"{home.value}.{keyword}", numeric, query)
        target = self.target
        if home is target:
            return clause
        if home.depth < target.depth and keyword in COMPUTED_KEYWORDS:
            # an ancestor's computed attribute: the matching ancestors, then their descendants
            key = KEY_FIELD[home]
            return self._terms(key, self.related_keys(home, clause, key))
        if home is Level.INSTANCE and keyword not in ROLLED_UP_INSTANCE_KEYWORDS:
            # a high-cardinality instance attribute: the matching instances' ancestors
            key = KEY_FIELD[target]
            return self._terms(key, self.related_keys(home, clause, key))
        return clause

    @staticmethod
    def _terms(key: str, values: list[str]) -> Doc:
        return {"terms": {key: values}} if values else _MATCH_NONE


# --- sorting -----------------------------------------------------------------------------------


def _sort_field(path: str, descending: bool = False, *, unmapped: str = "keyword") -> Doc:
    return {
        path: {
            "order": "desc" if descending else "asc",
            "missing": "_last",
            "mode": "min",
            "unmapped_type": unmapped,
        }
    }


_DEFAULT_SORT: dict[Level, list[Doc]] = {
    Level.PATIENT: [_sort_field("patient_name"), _sort_field("created", unmapped="long")],
    Level.STUDY: [
        _sort_field("study.StudyDate", True, unmapped="date"),
        _sort_field("study.StudyTime", True),
        _sort_field("created", True, unmapped="long"),
    ],
    Level.SERIES: [
        _sort_field("parent_created", True, unmapped="long"),
        _sort_field("series.SeriesNumber", unmapped="long"),
        _sort_field("created", unmapped="long"),
    ],
    Level.INSTANCE: [
        _sort_field("parent_created", unmapped="long"),
        _sort_field("instance.InstanceNumber", unmapped="long"),
        _sort_field("created", unmapped="long"),
    ],
}
_SPECIAL_SORT: dict[Level, dict[str, str]] = {
    Level.PATIENT: {"PatientName": "patient_name"},
    Level.STUDY: {"PatientName": "patient_name"},
    Level.SERIES: {"StudyDate": "study.StudyDate"},
    Level.INSTANCE: {},
}


def _sort(level: Level, keys: Sequence[SortKey]) -> list[Doc]:
    """The sort of a search (the embedded index's rules), ending with the unique key."""
    if not keys:
        return [*_DEFAULT_SORT[level], _sort_field(KEY_FIELD[level])]
    sort: list[Doc] = []
    for key in keys:
        keyword = key.keyword
        path = _SPECIAL_SORT[level].get(keyword)
        if path is None:
            if tag_of_keyword(keyword) is None or level_of_keyword(keyword) is not level:
                raise InvalidQuery(
                    f"results at the {level} level cannot be sorted by {keyword[:80]!r}"
                )
            path = f"{level.value}.{keyword}"
        kind = kind_of_keyword(keyword) if tag_of_keyword(keyword) is not None else None
        unmapped = "double" if kind in NUMERIC_KINDS else "keyword"
        sort.append(_sort_field(path, key.descending, unmapped=unmapped))
    return [*sort, _sort_field("created", unmapped="long"), _sort_field(KEY_FIELD[level])]


# --- the index -----------------------------------------------------------------------------------


@dataclass
class _Stored:
    """A document as read back (realtime), with what optimistic concurrency needs."""

    source: Doc
    seq_no: int
    primary_term: int


class ElasticsearchStudyIndex(StudyIndex):
    """The search index in an Elasticsearch 8 cluster at `url`, indices named `prefix`-*.

    `refresh` says when a batch becomes searchable: True (default) refreshes the indices at
    the end of `upsert`, so that a search right after it sees the batch; ``"wait_for"`` makes
    the last writes wait for the next periodic refresh (at most ``refresh_interval``, 1 s);
    False leaves it to the periodic refresh (fastest bulk loads). The instances index is
    always refreshed before the batch's studies are recounted.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:9200",
        *,
        prefix: str = "dicomflow",
        refresh: bool | Literal["wait_for"] = True,
        shards: int = 1,
        request_timeout: float = 30.0,
        retries: int = 3,
        client: Elasticsearch | None = None,
    ) -> None:
        if not _PREFIX_RE.match(prefix):
            raise IndexerError(
                f"Elasticsearch index prefix {prefix[:80]!r} is not valid: use lower-case "
                "letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        self.url = url
        self.prefix = prefix
        self.refresh = refresh
        self.retries = retries
        self.client = client or Elasticsearch(
            url,
            request_timeout=request_timeout,
            max_retries=retries,
            retry_on_timeout=True,
            retry_on_status=(502, 503, 504),
        )
        self._shards = shards
        self._names = {namespace: index_names(prefix, namespace) for namespace in Namespace}
        self._installed = False
        self._install_lock = threading.Lock()

    # set-up

    def _ready(self) -> None:
        """Install the templates and create the indices, once (not in the constructor, so
        that a process starts while Elasticsearch is down and catches up later)."""
        if self._installed:
            return
        with self._install_lock:
            if not self._installed:
                self._call("install the index templates", self._install)
                self._installed = True

    def uninstall(self) -> None:
        """Delete every index and template of this prefix (tests, decommissioning)."""
        names = [name for names in self._names.values() for name in names.values()]

        def drop() -> None:
            self.client.indices.delete(index=names, ignore_unavailable=True, allow_no_indices=True)
            bodies = templates(self.prefix)
            for name, body in bodies.items():
                if "composed_of" in body:
                    self.client.options(ignore_status=404).indices.delete_index_template(name=name)
            for name, body in bodies.items():
                if "composed_of" not in body:
                    self.client.options(ignore_status=404).cluster.delete_component_template(
                        name=name
                    )

        self._call("delete the indices", drop)
        self._installed = False

    def _install(self) -> None:
        bodies = templates(self.prefix, shards=self._shards)
        for name, body in bodies.items():
            if "composed_of" in body:
                self.client.indices.put_index_template(name=name, **body)
            else:
                self.client.cluster.put_component_template(name=name, **body)
        self._create_indices(Namespace.ORIGINAL, Namespace.DEIDENTIFIED)

    def _create_indices(self, *namespaces: Namespace) -> None:
        """Create the missing indices of `namespaces` (in parallel: each takes a while)."""
        names = [name for namespace in namespaces for name in self._names[namespace].values()]
        existing = self.client.indices.get_mapping(
            index=names, ignore_unavailable=True, allow_no_indices=True
        ).body
        for name in names:
            if name in existing:
                meta = existing[name].get("mappings", {}).get("_meta", {})
                if meta.get("schema_version") != SCHEMA_VERSION:
                    raise IndexerError(
                        f"the index {name} has mappings of schema version "
                        f"{meta.get('schema_version')}, not {SCHEMA_VERSION}: delete the "
                        f"{self.prefix} indices and replay the metadata topic to rebuild them"
                    )

        def create(name: str) -> None:
            try:
                self.client.indices.create(index=name)
            except ApiError as exc:  # another handle created it meanwhile
                if "resource_already_exists" not in str(exc):
                    raise

        missing = [name for name in names if name not in existing]
        if missing:
            with ThreadPoolExecutor(max_workers=len(missing)) as pool:
                list(pool.map(create, missing))

    def index_name(self, namespace: Namespace, level: Level) -> str:
        return self._names[Namespace(namespace)][level]

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()`, retried while Elasticsearch is busy; failures as the pipeline's types."""
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (ApiError, TransportError) as exc:
                transient = _transient(exc, what)
                if transient is None:
                    raise IndexerError(f"Elasticsearch could not {what}: {exc}") from exc
                if isinstance(transient, BackPressure) and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise transient from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # writing

    def upsert(self, events: Sequence[MetadataExtracted]) -> None:
        self._ready()
        by_namespace: dict[Namespace, list[MetadataExtracted]] = {}
        for event in events:
            by_namespace.setdefault(event.namespace, []).append(event)
        for namespace, batch in by_namespace.items():
            _BatchWriter(self, namespace).write(batch)

    def clear(self, namespace: Namespace) -> None:
        names = list(self._names[Namespace(namespace)].values())

        def drop() -> None:
            self.client.options(ignore_status=404).indices.delete(
                index=names, ignore_unavailable=True, allow_no_indices=True
            )
            self._create_indices(Namespace(namespace))

        self._ready()
        self._call("clear the namespace", drop)

    def _bulk(self, what: str, actions: Sequence[Doc], *, refresh: bool | str = False) -> None:
        """Send `actions` in chunks; 429s are retried with backoff, then raise BackPressure."""
        if not actions:
            return
        failures: list[Doc] = []
        try:
            for ok, item in streaming_bulk(
                self.client,
                actions,
                chunk_size=_BULK_CHUNK,
                raise_on_error=False,
                max_retries=self.retries,
                initial_backoff=0.5,
                max_backoff=8.0,
                yield_ok=False,
                refresh=refresh,
            ):
                if not ok:
                    failures.append(item)
        except (ApiError, TransportError) as exc:
            transient = _transient(exc, what)
            if transient is None:
                raise IndexerError(f"Elasticsearch could not {what}: {exc}") from exc
            raise transient from exc
        errors = [next(iter(item.values())) for item in failures]
        errors = [e for e in errors if not (e.get("status") == 404 and "result" in e)]
        if not errors:
            return
        statuses = {int(e.get("status", 0)) for e in errors}
        if statuses & _BUSY_STATUSES:
            raise BackPressure(
                f"Elasticsearch stayed busy: {len(errors)} writes refused to {what}; retry",
                retry_after=5.0,
            )
        if 409 in statuses:
            raise BackPressure(
                f"another writer changed documents while this batch was being indexed "
                f"({what}); retry",
                retry_after=0.5,
            )
        first = errors[0]
        raise IndexerError(
            f"Elasticsearch refused {len(errors)} writes to {what}; first: "
            f"{first.get('_id')}: {first.get('error')}"
        )

    def _refresh(self, indices: Collection[str]) -> None:
        self._call(
            "refresh the indices",
            lambda: self.client.indices.refresh(index=list(indices), ignore_unavailable=True),
        )

    def _mget(
        self, index: str, ids: Iterable[str], fields: Sequence[str] | None = None
    ) -> dict[str, _Stored]:
        """Realtime reads by id (documents written but not yet refreshed included)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, _Stored] = {}
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            response = self._call(
                "read documents",
                partial(self.client.mget, index=index, ids=chunk, source_includes=fields),
            )
            for doc in response["docs"]:
                if doc.get("found"):
                    found[doc["_id"]] = _Stored(
                        doc["_source"], doc["_seq_no"], doc["_primary_term"]
                    )
        return found

    def _scan(
        self, index: str, query: Doc, sort: list[Doc], source: bool | list[str] | Doc = True
    ) -> Iterator[Doc]:
        """Every hit of `query`, in `sort` order (which must end with a unique key)."""
        after: list[Any] | None = None
        while True:
            body: Doc = {
                "query": query,
                "sort": sort,
                "size": _PAGE,
                "source": source,
                "seq_no_primary_term": True,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            response = self._call(
                "search",
                partial(
                    self.client.search,
                    index=index,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                    **body,
                ),
            )
            hits = response["hits"]["hits"]
            yield from hits
            if len(hits) < _PAGE:
                return
            after = hits[-1]["sort"]

    # reading

    def counts(self, namespace: Namespace) -> dict[Level, int]:
        self._ready()
        names = self._names[Namespace(namespace)]
        return {
            level: int(
                self._call(
                    "count documents",
                    partial(
                        self.client.count,
                        index=name,
                        ignore_unavailable=True,
                        allow_no_indices=True,
                    ),
                )["count"]
            )
            for level, name in names.items()
        }

    def _related_keys(self, namespace: Namespace, level: Level, query: Doc, key: str) -> list[str]:
        """The distinct `key` values of the `level` documents matching `query` (two steps)."""
        keys: list[str] = []
        after: Doc | None = None
        index = self.index_name(namespace, level)
        while True:
            composite: Doc = {"size": _PAGE, "sources": [{"key": {"terms": {"field": key}}}]}
            if after is not None:
                composite["after"] = after
            response = self._call(
                "search",
                partial(
                    self.client.search,
                    index=index,
                    query=query,
                    size=0,
                    aggs={"keys": {"composite": composite}},
                    ignore_unavailable=True,
                ),
            )
            agg = response.get("aggregations", {}).get("keys", {})
            buckets = agg.get("buckets", [])
            keys.extend(str(bucket["key"]["key"]) for bucket in buckets)
            if len(keys) > MAX_RELATED_KEYS:
                raise InvalidQuery(
                    f"the query matches more than {MAX_RELATED_KEYS} {level} entities on an "
                    "attribute of another level: narrow it, or search at that level"
                )
            if len(buckets) < _PAGE or "after_key" not in agg:
                return keys
            after = agg["after_key"]

    def search(self, request: SearchRequest) -> SearchResult:
        self._ready()
        level, namespace = request.level, Namespace(request.namespace)
        compiler = _Compiler(
            level, lambda home, query, key: self._related_keys(namespace, home, query, key)
        )
        filters = [compiler.compile(request.query)]
        if request.study_uid is not None:
            filters.append({"term": {"study_uid": request.study_uid}})
        if request.series_uid is not None:
            filters.append({"term": {"series_uid": request.series_uid}})
        query: Doc = {"bool": {"filter": filters}}
        sort = _sort(level, request.sort)
        index = self.index_name(namespace, level)
        source = ["dicom", "dicom_lineage", "study_uid", *_RESULT_FIELDS[level]]
        total, hits = self._page(index, query, sort, request.offset, request.limit, source)
        if not hits:
            return SearchResult(total=total)
        wanted = wanted_tags(request)
        results = self._results(namespace, level, hits, wanted)
        return SearchResult(total=total, results=results)

    def _page(
        self, index: str, query: Doc, sort: list[Doc], offset: int, limit: int, source: list[str]
    ) -> tuple[int, list[Doc]]:
        """(total, the hits from `offset` to `offset + limit`), deep offsets included."""

        def run(body: Doc) -> Doc:
            def call() -> Doc:
                try:
                    return dict(
                        self.client.search(
                            index=index, ignore_unavailable=True, allow_no_indices=True, **body
                        )
                    )
                except ApiError as exc:
                    if _status(exc) == 400:
                        raise InvalidQuery(f"Elasticsearch refused the query: {exc}") from exc
                    raise

            return self._call("search", call)

        if offset + limit <= _RESULT_WINDOW:
            body: Doc = {
                "query": query,
                "sort": sort,
                "from_": offset,
                "size": limit,
                "source": source,
                "track_total_hits": True,
            }
            response = run(body)
            return int(response["hits"]["total"]["value"]), list(response["hits"]["hits"])
        counted = run({"query": query, "size": 0, "track_total_hits": True})
        total = int(counted["hits"]["total"]["value"])
        if offset >= total or limit == 0:
            return total, []
        after: list[Any] | None = None
        skipped = 0
        while skipped < offset:  # walk to the offset with search_after, sort values only
            size = min(_RESULT_WINDOW, offset - skipped)
            body = {"query": query, "sort": sort, "size": size, "source": False}
            if after is not None:
                body["search_after"] = after
            hits = run(body)["hits"]["hits"]
            if not hits:
                return total, []
            skipped += len(hits)
            after = hits[-1]["sort"]
        body = {"query": query, "sort": sort, "size": limit, "source": source}
        if after is not None:
            body["search_after"] = after
        return total, list(run(body)["hits"]["hits"])

    def _results(
        self, namespace: Namespace, level: Level, hits: list[Doc], wanted: Wanted
    ) -> list[Doc]:
        sources = [hit["_source"] for hit in hits]
        merged: list[Doc] = []
        if level is Level.PATIENT:
            for source in sources:
                own = source.get("patient", {})
                doc = dict(source.get("dicom", {}))
                for keyword in (
                    "NumberOfPatientRelatedStudies",
                    "NumberOfPatientRelatedSeries",
                    "NumberOfPatientRelatedInstances",
                ):
                    doc[keyword_hex(keyword)] = number_element(int(own.get(keyword, 0)))
                merged.append(doc)
        elif level is Level.INSTANCE:
            for source in sources:
                doc = dict(source.get("dicom", {}))
                doc[keyword_hex("InstanceAvailability")] = ONLINE
                merged.append(doc)
        else:
            for source in sources:
                lineage = source.get("dicom_lineage", {})
                doc = dict(lineage.get(Level.PATIENT.value, {}))
                if level is Level.SERIES:
                    doc.update(lineage.get(Level.STUDY.value, {}))
                doc.update(source.get("dicom", {}))
                own = source.get(level.value, {})
                if level is Level.STUDY:
                    for keyword in ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
                        doc[keyword_hex(keyword)] = number_element(int(own.get(keyword, 0)))
                    doc[keyword_hex("ModalitiesInStudy")] = list_element(
                        "CS", _scalars(own.get("ModalitiesInStudy"))
                    )
                    doc[keyword_hex("SOPClassesInStudy")] = list_element(
                        "UI", _scalars(own.get("SOPClassesInStudy"))
                    )
                else:
                    doc[keyword_hex("NumberOfSeriesRelatedInstances")] = number_element(
                        int(own.get("NumberOfSeriesRelatedInstances", 0))
                    )
                doc[keyword_hex("InstanceAvailability")] = ONLINE
                merged.append(doc)
            if level is Level.STUDY and wanted != "all":
                self._from_series(namespace, sources, merged, wanted)
        return [select(doc, wanted) for doc in merged]

    def _from_series(
        self,
        namespace: Namespace,
        sources: list[Doc],
        docs: list[Doc],
        wanted: tuple[frozenset[str], frozenset[str]],
    ) -> None:
        """Requested series attributes of studies, from the first series that has them."""
        missing = series_tags(wanted)
        if not missing:
            return
        by_study = {source["study_uid"]: doc for source, doc in zip(sources, docs, strict=True)}
        query = {"terms": {"study_uid": list(by_study)}}
        sort = [
            _sort_field("series.SeriesNumber", unmapped="long"),
            _sort_field("created", unmapped="long"),
            _sort_field("series_uid"),
        ]
        index = self.index_name(namespace, Level.SERIES)
        for hit in self._scan(index, query, sort, ["study_uid", "dicom"]):
            series_doc = hit["_source"].get("dicom", {})
            target = by_study.get(hit["_source"].get("study_uid"))
            if target is None:
                continue
            for tag in missing:
                if tag not in target and tag in series_doc:
                    target[tag] = series_doc[tag]

    def get_instance(self, namespace: Namespace, sop_uid: str) -> InstanceRecord | None:
        self._ready()
        found = self._mget(self.index_name(namespace, Level.INSTANCE), [sop_uid])
        stored = found.get(sop_uid)
        return None if stored is None else _record(stored.source, with_json=True)

    def instances(
        self,
        namespace: Namespace,
        study_uid: str,
        series_uid: str | None = None,
        *,
        with_json: bool = True,
    ) -> list[InstanceRecord]:
        self._ready()
        filters: list[Doc] = [{"term": {"study_uid": study_uid}}]
        if series_uid is not None:
            filters.append({"term": {"series_uid": series_uid}})
        sort = [
            _sort_field("series.SeriesNumber", unmapped="long"),
            _sort_field("parent_created", unmapped="long"),
            _sort_field("series_uid"),
            _sort_field("instance.InstanceNumber", unmapped="long"),
            _sort_field("created", unmapped="long"),
            _sort_field("sop_uid"),
        ]
        source: Doc = {"excludes": ["text", "patient", "study", "series"]}
        if not with_json:
            source["excludes"].append("dicom")
        index = self.index_name(namespace, Level.INSTANCE)
        hits = self._scan(index, {"bool": {"filter": filters}}, sort, source)
        return [_record(hit["_source"], with_json=with_json) for hit in hits]

    def close(self) -> None:
        self.client.close()


def _record(source: Mapping[str, Any], *, with_json: bool) -> InstanceRecord:
    number = source.get("instance", {}).get("InstanceNumber")
    return InstanceRecord(
        namespace=Namespace(source["namespace"]),
        study_uid=source["study_uid"],
        series_uid=source["series_uid"],
        sop_uid=source["sop_uid"],
        sop_class_uid=source["sop_class_uid"],
        transfer_syntax_uid=source["transfer_syntax_uid"],
        blob=BlobRef.model_validate(source["blob"]),
        instance_number=number if isinstance(number, int) else None,
        dicom_json=dict(source.get("dicom", {})) if with_json else {},
    )


# --- writing one batch ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Keys:
    patient: str
    study: str
    series: str
    sop: str


class _BatchWriter:
    """Writes one batch of one namespace, then recounts the studies it touched.

    Within a batch the last event of a patient, study or series gives its values (last
    writer wins); an instance belongs to the study of its series and the patient of that
    study, as their last events say (as in the embedded index).
    """

    def __init__(self, index: ElasticsearchStudyIndex, namespace: Namespace) -> None:
        self.index = index
        self.namespace = namespace
        self.names = index_names(index.prefix, namespace)
        self.now = datetime.now(UTC).isoformat()
        self.clock = time.time_ns()
        self.parts: dict[tuple[Level, str], _Part] = {}
        self.study_of_series: dict[str, str] = {}
        self.patient_of_study: dict[str, str] = {}
        self.order: dict[tuple[Level, str], int] = {}
        self.actions: list[Doc] = []

    # helpers

    def _created(self, level: Level, key: str, stored: _Stored | None) -> int:
        if stored is not None and isinstance(stored.source.get("created"), int):
            return int(stored.source["created"])
        return self.clock + self.order.get((level, key), 0)

    def _put(self, level: Level, doc_id: str, doc: Doc, stored: _Stored | None) -> None:
        action: Doc = {"_index": self.names[level], "_id": doc_id, "_source": doc}
        if stored is None:
            action["_op_type"] = "create"
        else:
            action.update(
                _op_type="index", if_seq_no=stored.seq_no, if_primary_term=stored.primary_term
            )
        self.actions.append(action)

    def _delete(self, level: Level, doc_id: str, stored: _Stored) -> None:
        self.actions.append(
            {
                "_op_type": "delete",
                "_index": self.names[level],
                "_id": doc_id,
                "if_seq_no": stored.seq_no,
                "if_primary_term": stored.primary_term,
            }
        )

    def _part(self, level: Level, key: str, stored: Mapping[str, _Stored]) -> _Part:
        """The part of an entity after this batch: its last event's, else its stored one."""
        part = self.parts.get((level, key))
        if part is not None:
            return part
        found = stored.get(_doc_id(key))
        return _own_part(level, found.source) if found is not None else _Part()

    def _patient_of(self, study: str, stored: _Stored | None) -> tuple[str, _Part]:
        """The patient of a study after this batch, and that patient's part."""
        patient = self.patient_of_study.get(study)
        if patient is None:
            patient = stored.source.get("patient_key", "") if stored is not None else ""
        part = self.parts.get((Level.PATIENT, patient))
        if part is None:
            # outside the batch: the patient's values as the study document has them
            part = _own_part(Level.PATIENT, stored.source) if stored is not None else _Part()
        return patient, part

    # the batch

    def write(self, events: Sequence[MetadataExtracted]) -> None:
        idx = self.index
        last_of_sop: dict[str, int] = {}
        keys: list[_Keys] = []
        for position, event in enumerate(events):
            identity = event.identity
            key = _Keys(
                patient=patient_key(event_fields(event)),
                study=identity.study_instance_uid,
                series=identity.series_instance_uid,
                sop=identity.sop_instance_uid,
            )
            keys.append(key)
            last_of_sop[key.sop] = position
            self.order[(Level.INSTANCE, key.sop)] = position
        last: dict[tuple[Level, str], int] = {}
        for position, key in enumerate(keys):
            for level, entity in (
                (Level.PATIENT, key.patient),
                (Level.STUDY, key.study),
                (Level.SERIES, key.series),
            ):
                last[(level, entity)] = position
                self.order.setdefault((level, entity), len(self.order) + len(events))
        event_parts = {position: _event_parts(events[position]) for position in set(last.values())}
        for (level, entity), position in last.items():
            self.parts[(level, entity)] = event_parts[position][level]
            if level is Level.SERIES:
                self.study_of_series[entity] = keys[position].study
            elif level is Level.STUDY:
                self.patient_of_study[entity] = keys[position].patient

        # what the index holds now (realtime reads)
        sops = list(last_of_sop)
        stored_instances = idx._mget(
            self.names[Level.INSTANCE], sops, ["study_uid", "series_uid", "created"]
        )
        touched_series = set(self.study_of_series)
        touched_studies = set(self.patient_of_study)
        for stored in stored_instances.values():
            touched_series.add(stored.source["series_uid"])
            touched_studies.add(stored.source["study_uid"])
        stored_series = idx._mget(self.names[Level.SERIES], touched_series)
        moved_series: set[str] = set()
        for uid in self.study_of_series:
            found = stored_series.get(uid)
            if found is not None and found.source["study_uid"] != self.study_of_series[uid]:
                moved_series.add(uid)
                touched_studies.add(found.source["study_uid"])
        stored_studies = idx._mget(self.names[Level.STUDY], touched_studies)
        touched_patients = set(self.patient_of_study.values())
        for stored in stored_studies.values():
            touched_patients.add(stored.source["patient_key"])
        stored_patients = idx._mget(
            self.names[Level.PATIENT], (_doc_id(k) for k in touched_patients)
        )

        # the instances
        for position in sorted(last_of_sop.values()):
            event, key = events[position], keys[position]
            self._instance(event, key, stored_instances.get(key.sop), stored_series)
        idx._bulk("index the instances", self.actions)
        self.actions = []

        # documents of other instances whose series, study or patient changed
        changed = self._changed(stored_series, stored_studies, stored_patients, moved_series)
        if any(changed.values()):
            idx._refresh([self.names[Level.INSTANCE]])
            self._rebase_instances(changed, set(sops))
            idx._bulk("update the instances of changed entities", self.actions)
            self.actions = []
        idx._refresh([self.names[Level.INSTANCE]])

        # recount every touched study from its instances
        rollups = self._rollups(touched_studies)
        series_docs = self._series(
            touched_series, touched_studies, rollups, stored_series, stored_studies
        )
        study_docs = self._studies(touched_studies, rollups, series_docs, stored_studies)
        self._patients(touched_patients, study_docs, stored_patients, changed)
        refresh: bool | str = "wait_for" if idx.refresh == "wait_for" else False
        idx._bulk("index the studies, series and patients", self.actions, refresh=refresh)
        self.actions = []
        if idx.refresh is True:
            idx._refresh(list(self.names.values()))

    def _instance(
        self,
        event: MetadataExtracted,
        key: _Keys,
        stored: _Stored | None,
        stored_series: Mapping[str, _Stored],
    ) -> None:
        study = self.study_of_series[key.series]
        patient = self.patient_of_study[study]
        identity = event.identity
        series_stored = stored_series.get(key.series)
        doc: Doc = {
            "namespace": self.namespace.value,
            "level": Level.INSTANCE.value,
            "@timestamp": _received(event),
            "indexed_at": self.now,
            "patient_key": patient,
            "study_uid": study,
            "series_uid": key.series,
            "sop_uid": key.sop,
            "created": self._created(Level.INSTANCE, key.sop, stored),
            "parent_created": self._created(Level.SERIES, key.series, series_stored),
            "sop_class_uid": identity.sop_class_uid,
            "transfer_syntax_uid": identity.transfer_syntax_uid,
            "bytes": event.blob.size,
            "source": {
                "kind": event.source.kind.value,
                "calling_ae": event.source.calling_ae,
                "called_ae": event.source.called_ae,
                "address": event.source.address,
            },
            "blob": event.blob.model_dump(mode="json"),
            "instance": _instance_attrs(event),
            "dicom": event.dicom_json,
        }
        _lineage(
            doc,
            {
                Level.PATIENT: self.parts[(Level.PATIENT, patient)],
                Level.STUDY: self.parts[(Level.STUDY, study)],
                Level.SERIES: self.parts[(Level.SERIES, key.series)],
            },
        )
        self.actions.append(
            {
                "_op_type": "index",
                "_index": self.names[Level.INSTANCE],
                "_id": key.sop,
                "_source": doc,
            }
        )

    def _changed(
        self,
        stored_series: Mapping[str, _Stored],
        stored_studies: Mapping[str, _Stored],
        stored_patients: Mapping[str, _Stored],
        moved_series: set[str],
    ) -> dict[Level, set[str]]:
        """The entities of the batch whose descendants outside the batch must be rewritten."""
        changed: dict[Level, set[str]] = {level: set() for level in _ENTITY_LEVELS}
        for (level, key), part in self.parts.items():
            if level is Level.PATIENT:
                found = stored_patients.get(_doc_id(key))
                if found is not None and not part.same(_own_part(level, found.source)):
                    changed[level].add(key)
            elif level is Level.STUDY:
                found = stored_studies.get(key)
                if found is not None and (
                    not part.same(_own_part(level, found.source))
                    or found.source["patient_key"] != self.patient_of_study[key]
                ):
                    changed[level].add(key)
            else:
                found = stored_series.get(key)
                if found is not None and (
                    key in moved_series or not part.same(_own_part(level, found.source))
                ):
                    changed[level].add(key)
        return changed

    def _rebase_instances(self, changed: dict[Level, set[str]], batch_sops: set[str]) -> None:
        """Rewrite the lineage of the other instances of changed series, studies, patients."""
        should = [
            {"terms": {KEY_FIELD[level]: sorted(keys)}} for level, keys in changed.items() if keys
        ]
        query = {"bool": {"should": should, "minimum_should_match": 1}}
        index = self.names[Level.INSTANCE]
        for hit in self.index._scan(index, query, [_sort_field("sop_uid")]):
            if hit["_id"] in batch_sops:
                continue
            doc = hit["_source"]
            series = doc["series_uid"]
            study = self.study_of_series.get(series, doc["study_uid"])
            patient = self.patient_of_study.get(study, doc["patient_key"])
            lineage: dict[Level, _Part] = {}
            for level, key in (
                (Level.PATIENT, patient),
                (Level.STUDY, study),
                (Level.SERIES, series),
            ):
                part = self.parts.get((level, key))
                if part is not None:
                    lineage[level] = part
            doc.update(study_uid=study, patient_key=patient, indexed_at=self.now)
            _lineage(doc, lineage)
            self.actions.append(
                {
                    "_op_type": "index",
                    "_index": index,
                    "_id": hit["_id"],
                    "_source": doc,
                    "if_seq_no": hit["_seq_no"],
                    "if_primary_term": hit["_primary_term"],
                }
            )

    def _rollups(self, studies: set[str]) -> dict[str, list[Doc]]:
        """Per study: its series buckets (instance count and rolled-up instance values)."""
        index = self.names[Level.INSTANCE]
        sub_aggs = {
            keyword: {"terms": {"field": f"instance.{keyword}", "size": _ROLLUP_TERMS}}
            for keyword in ROLLED_UP_INSTANCE_KEYWORDS
        }
        ordered = sorted(studies)
        result: dict[str, list[Doc]] = {}
        for start in range(0, len(ordered), 50):
            chunk = ordered[start : start + 50]
            searches: list[Doc] = []
            for study in chunk:
                searches.append({"index": index})
                searches.append(
                    {
                        "size": 0,
                        "track_total_hits": False,
                        "query": {"term": {"study_uid": study}},
                        "aggs": {
                            "series": {
                                "terms": {"field": "series_uid", "size": _MAX_SERIES_PER_STUDY},
                                "aggs": sub_aggs,
                            }
                        },
                    }
                )
            response = self.index._call(
                "recount the studies",
                partial(self.index.client.msearch, searches=searches),
            )
            for study, answer in zip(chunk, response["responses"], strict=True):
                if "error" in answer:
                    status = int(answer.get("status", 500))
                    if status in _BUSY_STATUSES:
                        raise BackPressure(
                            f"Elasticsearch is busy (HTTP {status}) recounting studies; retry",
                            retry_after=2.0,
                        )
                    raise IndexerError(f"Elasticsearch could not recount {study}: {answer}")
                result[study] = answer["aggregations"]["series"]["buckets"]
        return result

    def _series(
        self,
        touched_series: set[str],
        touched_studies: set[str],
        rollups: Mapping[str, list[Doc]],
        stored_series: dict[str, _Stored],
        stored_studies: Mapping[str, _Stored],
    ) -> dict[str, list[Doc]]:
        """Rewrite every series of the touched studies; drop the touched ones left empty."""
        present = {b["key"]: study for study, buckets in rollups.items() for b in buckets}
        unknown = [uid for uid in present if uid not in stored_series]
        stored_series.update(self.index._mget(self.names[Level.SERIES], unknown))
        per_study: dict[str, list[Doc]] = {}
        for study in sorted(touched_studies):
            study_stored = stored_studies.get(study)
            for bucket in rollups.get(study, []):
                uid = bucket["key"]
                stored = stored_series.get(uid)
                own = self._part(Level.SERIES, uid, stored_series)
                rolled = {
                    keyword: [b["key"] for b in bucket[keyword]["buckets"]]
                    for keyword in ROLLED_UP_INSTANCE_KEYWORDS
                }
                doc: Doc = {
                    "namespace": self.namespace.value,
                    "level": Level.SERIES.value,
                    "@timestamp": _later(
                        own.received, stored.source.get("@timestamp", "") if stored else ""
                    ),
                    "indexed_at": self.now,
                    "study_uid": study,
                    "series_uid": uid,
                    "created": self._created(Level.SERIES, uid, stored),
                    "parent_created": self._created(Level.STUDY, study, study_stored),
                    "instance": _union([rolled]),
                    "dicom": own.dicom,
                }
                patient, patient_part = self._patient_of(study, study_stored)
                doc["patient_key"] = patient
                _lineage(
                    doc,
                    {
                        Level.PATIENT: patient_part,
                        Level.STUDY: self._part(Level.STUDY, study, stored_studies),
                        Level.SERIES: own,
                    },
                )
                doc["series"]["NumberOfSeriesRelatedInstances"] = int(bucket["doc_count"])
                self._put(Level.SERIES, uid, doc, stored)
                per_study.setdefault(study, []).append(doc)
        for uid in touched_series - set(present):
            stored = stored_series.get(uid)
            if stored is not None:
                self._delete(Level.SERIES, uid, stored)
        return per_study

    def _studies(
        self,
        touched_studies: set[str],
        rollups: Mapping[str, list[Doc]],
        series_docs: Mapping[str, list[Doc]],
        stored_studies: Mapping[str, _Stored],
    ) -> dict[str, Doc | None]:
        """Rewrite the touched studies with their counts; None for those left empty."""
        docs: dict[str, Doc | None] = {}
        for study in sorted(touched_studies):
            stored = stored_studies.get(study)
            series = series_docs.get(study, [])
            if not series:
                if stored is not None:
                    self._delete(Level.STUDY, study, stored)
                docs[study] = None
                continue
            own = self._part(Level.STUDY, study, stored_studies)
            n_instances = sum(int(b["doc_count"]) for b in rollups.get(study, []))
            modalities = sorted({m for s in series if (m := _first_text(s["series"], "Modality"))})
            sop_classes = sorted(
                {str(c) for s in series for c in _scalars(s["instance"].get("SOPClassUID"))}
            )
            doc: Doc = {
                "namespace": self.namespace.value,
                "level": Level.STUDY.value,
                "@timestamp": _later(
                    own.received,
                    stored.source.get("@timestamp", "") if stored else "",
                    *(s["@timestamp"] for s in series),
                ),
                "indexed_at": self.now,
                "study_uid": study,
                "created": self._created(Level.STUDY, study, stored),
                "series_uids": sorted(s["series_uid"] for s in series),
                "series": _union(s["series"] for s in series),
                "instance": _union(s["instance"] for s in series),
                "dicom": own.dicom,
            }
            patient, patient_part = self._patient_of(study, stored)
            doc["patient_key"] = patient
            _lineage(doc, {Level.PATIENT: patient_part, Level.STUDY: own})
            doc["text"]["series"] = _texts(t for s in series for t in s["text"]["series"])
            doc["study"].update(
                NumberOfStudyRelatedSeries=len(series),
                NumberOfStudyRelatedInstances=n_instances,
                ModalitiesInStudy=_compact(modalities) if modalities else [],
                SOPClassesInStudy=_compact(sop_classes) if sop_classes else [],
            )
            self._put(Level.STUDY, study, doc, stored)
            docs[study] = doc
        return docs

    def _patients(
        self,
        touched_patients: set[str],
        study_docs: Mapping[str, Doc | None],
        stored_patients: Mapping[str, _Stored],
        changed: dict[Level, set[str]],
    ) -> None:
        """Rewrite the touched patients from all their studies; drop those left without."""
        members: dict[str, set[str]] = {}
        for patient in touched_patients:
            found = stored_patients.get(_doc_id(patient))
            members[patient] = set(found.source.get("study_uids", [])) if found else set()
        for study, study_doc in study_docs.items():
            for member_uids in members.values():
                member_uids.discard(study)
            if study_doc is not None:
                members.setdefault(study_doc["patient_key"], set()).add(study)
        others = {uid for uids in members.values() for uid in uids if uid not in study_docs}
        other_studies = self.index._mget(self.names[Level.STUDY], others)
        for patient in sorted(members):
            stored = stored_patients.get(_doc_id(patient))
            uids = sorted(members[patient])
            if not members[patient]:
                if stored is not None:
                    self._delete(Level.PATIENT, _doc_id(patient), stored)
                continue
            own = self._part(Level.PATIENT, patient, {_doc_id(patient): stored} if stored else {})
            studies: list[Doc] = []
            for uid in uids:
                doc = study_docs.get(uid)
                if doc is None and uid in other_studies:
                    other = other_studies[uid]
                    doc = other.source
                    if patient in changed[Level.PATIENT]:  # its patient part is out of date
                        _lineage(doc, {Level.PATIENT: own})
                        doc["indexed_at"] = self.now
                        self._put(Level.STUDY, uid, doc, other)
                        self._rebase_series(doc, own)
                if doc is not None:
                    studies.append(doc)
            if not studies:
                if stored is not None:
                    self._delete(Level.PATIENT, _doc_id(patient), stored)
                continue
            doc = {
                "namespace": self.namespace.value,
                "level": Level.PATIENT.value,
                "@timestamp": _later(
                    own.received,
                    stored.source.get("@timestamp", "") if stored else "",
                    *(s["@timestamp"] for s in studies),
                ),
                "indexed_at": self.now,
                "patient_key": patient,
                "created": self._created(Level.PATIENT, patient, stored),
                "study_uids": [s["study_uid"] for s in studies],
                "study": _union(s["study"] for s in studies),
                "series": _union(s["series"] for s in studies),
                "instance": _union(s["instance"] for s in studies),
                "dicom": own.dicom,
            }
            _lineage(doc, {Level.PATIENT: own})
            doc["text"]["study"] = _texts(t for s in studies for t in s["text"]["study"])
            doc["text"]["series"] = _texts(t for s in studies for t in s["text"]["series"])
            doc["patient"].update(
                NumberOfPatientRelatedStudies=len(studies),
                NumberOfPatientRelatedSeries=sum(
                    int(s["study"]["NumberOfStudyRelatedSeries"]) for s in studies
                ),
                NumberOfPatientRelatedInstances=sum(
                    int(s["study"]["NumberOfStudyRelatedInstances"]) for s in studies
                ),
            )
            self._put(Level.PATIENT, _doc_id(patient), doc, stored)

    def _rebase_series(self, study: Doc, patient: _Part) -> None:
        """The series of a study outside the batch whose patient changed: new patient part."""
        stored = self.index._mget(self.names[Level.SERIES], study.get("series_uids", []))
        for uid, found in stored.items():
            doc = found.source
            _lineage(doc, {Level.PATIENT: patient})
            doc["indexed_at"] = self.now
            self._put(Level.SERIES, uid, doc, found)
