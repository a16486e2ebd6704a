"""The search index interface: what QIDO-RS, C-FIND, WADO-RS and /api/search ask of it.

Two implementations: `EmbeddedStudyIndex` (SQLite) and `ElasticsearchStudyIndex`; both
must pass tests/indexer/test_index_contract.py. The index is a projection of the metadata
topic: it can be cleared and rebuilt from the events at any time.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import MATCH_ALL, Query
from dicomflow.indexer.values import keyword_of_tag, resolve_keyword, tag_hex, tag_of_keyword
from dicomflow.kernel.events import BlobRef, MetadataExtracted, Namespace
from dicomflow.kernel.uids import is_valid_uid

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "InstanceRecord",
    "Level",
    "SearchRequest",
    "SearchResult",
    "SortKey",
    "StudyIndex",
    "flatten",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class SortKey:
    """Order results by `keyword` (ascending unless `descending`)."""

    keyword: str
    descending: bool = False


@dataclass(frozen=True)
class SearchRequest:
    """One search at one level of one namespace.

    `study_uid` and `series_uid` scope the search (QIDO-RS ``/studies/{uid}/series``...).
    `include_fields` adds attributes to the level's default ones: keywords or 8-hex tags, or
    ``"all"`` (every attribute the index keeps for the level). `sort` defaults to the most
    recent studies first, then series and instance numbers.
    """

    namespace: Namespace
    level: Level
    query: Query = MATCH_ALL
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    study_uid: str | None = None
    series_uid: str | None = None
    include_fields: Sequence[str] | Literal["all"] = ()
    sort: Sequence[SortKey] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 0 and {MAX_LIMIT}, not {self.limit}")
        if self.offset < 0:
            raise InvalidQuery(f"offset must not be negative, not {self.offset}")
        for name, uid in (
            ("StudyInstanceUID", self.study_uid),
            ("SeriesInstanceUID", self.series_uid),
        ):
            if uid is not None and not is_valid_uid(uid):
                raise InvalidQuery(f"{name} {uid[:80]!r} is not a valid UID")
        if self.series_uid is not None and self.level.depth < Level.INSTANCE.depth:
            raise InvalidQuery(f"a series scope needs the instance level, not {self.level}")
        if self.study_uid is not None and self.level is Level.PATIENT:
            raise InvalidQuery("a study scope needs the study, series or instance level")
        self.include_tags  # noqa: B018 - validates the include fields eagerly

    @property
    def include_tags(self) -> frozenset[str] | Literal["all"]:
        """The 8-hex tags of `include_fields` (or ``"all"``)."""
        if self.include_fields == "all":
            return "all"
        keys = (
            [self.include_fields] if isinstance(self.include_fields, str) else self.include_fields
        )
        return frozenset(include_tag(key) for key in keys)


def include_tag(key: str) -> str:
    """The 8-hex DICOM JSON key of an include field (keyword, or tag including private)."""
    key = key.strip()
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return key.upper()
    keyword = resolve_keyword(key)
    tag = tag_of_keyword(keyword) if keyword else None
    if tag is None:
        raise InvalidQuery(f"unknown include field {key[:80]!r}: use a DICOM keyword or tag")
    return tag_hex(tag)


@dataclass(frozen=True)
class SearchResult:
    """`total` matches in all, and `results` (PS3.18 DICOM JSON, one dict per match)."""

    total: int
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class InstanceRecord:
    """What WADO-RS needs of one stored instance."""

    namespace: Namespace
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob: BlobRef
    instance_number: int | None = None
    dicom_json: dict[str, Any] = field(default_factory=dict)


class StudyIndex(ABC):
    """The search index of one dicomflow deployment (every namespace)."""

    @abstractmethod
    def upsert(self, events: Sequence[MetadataExtracted]) -> None:
        """Index `events` in one transaction, idempotently by (namespace, SOP Instance UID).

        A re-delivered event overwrites its instance; patient, study and series documents
        take the values of the latest event indexed for them; the computed attributes
        (counts, ModalitiesInStudy, SOPClassesInStudy) are kept exact.
        Raises BackPressure when the index is busy (the caller retries the batch).
        """

    @abstractmethod
    def search(self, request: SearchRequest) -> SearchResult:
        """Matches of `request`, in PS3.18 DICOM JSON; raises InvalidQuery."""

    @abstractmethod
    def get_instance(self, namespace: Namespace, sop_uid: str) -> InstanceRecord | None:
        """One instance, with its DICOM JSON; None if the index does not know it."""

    @abstractmethod
    def instances(
        self,
        namespace: Namespace,
        study_uid: str,
        series_uid: str | None = None,
        *,
        with_json: bool = True,
    ) -> list[InstanceRecord]:
        """The instances of a study (or of one series of it), by series then instance number.

        With ``with_json=False`` the records carry no DICOM JSON (faster, for bulk retrieval).
        """

    @abstractmethod
    def counts(self, namespace: Namespace) -> dict[Level, int]:
        """How many patients, studies, series and instances a namespace holds."""

    @abstractmethod
    def clear(self, namespace: Namespace) -> None:
        """Forget everything of a namespace (before a reindex)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def _flat_value(element: Mapping[str, Any]) -> Any:
    values = element.get("Value")
    if values is None:
        inline = element.get("InlineBinary")
        return inline if inline is not None else element.get("BulkDataURI")
    if element.get("vr") == "SQ":
        return [flatten(item) for item in values if isinstance(item, Mapping)]
    if element.get("vr") == "PN":
        values = [
            v.get("Alphabetic", v.get("Ideographic", v.get("Phonetic", "")))
            if isinstance(v, Mapping)
            else v
            for v in values
        ]
    if len(values) == 1:
        return values[0]
    return list(values)


def flatten(dicom_json: Mapping[str, Any]) -> dict[str, Any]:
    """A DICOM JSON dict as ``{keyword: value}`` (for /api/search and the UI).

    One value stays a scalar, several become a list; person names become their alphabetic
    string; sequences become lists of flat dicts; private tags keep their 8-hex key.
    """
    flat: dict[str, Any] = {}
    for key, element in dicom_json.items():
        if not isinstance(element, Mapping):
            continue
        try:
            name = keyword_of_tag(int(key, 16)) or key
        except ValueError:
            name = key
        flat[name] = _flat_value(element)
    return flat
