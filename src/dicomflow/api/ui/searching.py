"""The search page's form, its query, and its results grouped patient -> study -> series.

The form has one box for the Lucene-style syntax of /api/search and field filters; the
filters are turned into Lucene clauses too and ANDed with the box, so that the page can show
(and a researcher can copy) the one query it ran. Every read is bounded: one page of studies
(at most 100) and the series of those studies only.
"""

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from dicomflow.api.ui import formatting as fmt
from dicomflow.indexer.base import Level, SearchRequest, SortKey, StudyIndex, flatten
from dicomflow.indexer.query import AnyOf, Query, parse_lucene
from dicomflow.kernel.events import Namespace


class SortOption(NamedTuple):
    label: str
    keys: tuple[SortKey, ...]


SORTS: dict[str, SortOption] = {
    "-StudyDate": SortOption(
        "Study date, newest first", (SortKey("StudyDate", True), SortKey("StudyTime", True))
    ),
    "StudyDate": SortOption(
        "Study date, oldest first", (SortKey("StudyDate"), SortKey("StudyTime"))
    ),
    "PatientName": SortOption(
        "Patient name, A to Z", (SortKey("PatientName"), SortKey("StudyDate", True))
    ),
    "-PatientName": SortOption(
        "Patient name, Z to A", (SortKey("PatientName", True), SortKey("StudyDate", True))
    ),
    "AccessionNumber": SortOption("Accession number", (SortKey("AccessionNumber"),)),
    "-NumberOfStudyRelatedInstances": SortOption(
        "Most instances first", (SortKey("NumberOfStudyRelatedInstances", True),)
    ),
}
DEFAULT_SORT = "-StudyDate"
PAGE_SIZES = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE = 25
MAX_PAGE = 10_000
MAX_SERIES_PER_PAGE = 5_000

# Modalities offered by the filter (PS3.3 C.7.3.1.1.1, the common ones); the query box
# takes any other (ModalitiesInStudy:XC).
MODALITIES = (
    "CT",
    "MR",
    "CR",
    "DX",
    "MG",
    "US",
    "XA",
    "RF",
    "NM",
    "PT",
    "OT",
    "SC",
    "SR",
    "SEG",
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "KO",
    "PR",
    "ECG",
    "IO",
    "PX",
    "OP",
    "SM",
    "XC",
    "DOC",
)

FILTERS = (
    "patient_name",
    "patient_id",
    "modality",
    "date_from",
    "date_to",
    "accession",
    "description",
)

_SPECIAL = frozenset('+-&|!(){}[]^"~:\\/ ')


def lucene_word(value: str) -> str:
    """`value` as one Lucene word: special characters escaped, ``*`` and ``?`` kept."""
    value = " ".join(value.split())
    return "".join("\\" + char if char in _SPECIAL else char for char in value)


def lucene_phrase(value: str) -> str:
    """`value` as a quoted Lucene phrase (an exact value)."""
    value = " ".join(value.split())
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exact_or_wildcard(keyword: str, value: str) -> str:
    if "*" in value or "?" in value:
        return f"{keyword}:{lucene_word(value)}"
    return f"{keyword}:{lucene_phrase(value)}"


@dataclass(frozen=True)
class SearchForm:
    """What the search page was asked: the query box, the filters, sort and page."""

    q: str = ""
    patient_name: str = ""
    patient_id: str = ""
    modality: str = ""
    date_from: str = ""
    date_to: str = ""
    accession: str = ""
    description: str = ""
    namespace: Namespace = Namespace.ORIGINAL
    sort: str = DEFAULT_SORT
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def from_params(
        cls, params: Mapping[str, str], namespace: Namespace | None = None
    ) -> "SearchForm":
        """The form of a query string, on `namespace` (the one api.auth.resolve_namespace
        granted; None: the ``namespace`` parameter, and ValueError for one it does not know).

        Out-of-range pages, sizes and sorts fall back to their defaults (they come from
        links, and a bad link should still show results).
        """
        values = {name: params.get(name, "").strip()[:200] for name in FILTERS}
        try:
            page = min(max(int(params.get("page", "1")), 1), MAX_PAGE)
        except ValueError:
            page = 1
        try:
            page_size = int(params.get("page_size", str(DEFAULT_PAGE_SIZE)))
        except ValueError:
            page_size = DEFAULT_PAGE_SIZE
        sort = params.get("sort", DEFAULT_SORT)
        return cls(
            q=params.get("q", "").strip()[:4000],
            namespace=namespace or fmt.view_namespace(params.get("namespace")),
            sort=sort if sort in SORTS else DEFAULT_SORT,
            page=page,
            page_size=page_size if page_size in PAGE_SIZES else DEFAULT_PAGE_SIZE,
            **values,
        )

    @property
    def has_criteria(self) -> bool:
        return bool(self.q or any(getattr(self, name) for name in FILTERS))

    def clauses(self) -> list[str]:
        """The filters as Lucene clauses."""
        out: list[str] = []
        if self.patient_name:
            name = self.patient_name
            wild = "*" in name or "?" in name
            out.append(f"PatientName:{lucene_word(name if wild else name + '*')}")
        if self.patient_id:
            out.append(_exact_or_wildcard("PatientID", self.patient_id))
        if self.modality:
            out.append(f"ModalitiesInStudy:{lucene_phrase(self.modality.upper())}")
        if self.date_from or self.date_to:
            low = lucene_phrase(self.date_from) if self.date_from else "*"
            high = lucene_phrase(self.date_to) if self.date_to else "*"
            out.append(f"StudyDate:[{low} TO {high}]")
        if self.accession:
            out.append(_exact_or_wildcard("AccessionNumber", self.accession))
        if self.description:
            variants = dict.fromkeys([self.description, self.description.upper()])
            terms = [f"StudyDescription:*{lucene_word(v)}*" for v in variants]
            out.append(terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")")
        return out

    def lucene(self) -> str:
        """The whole search as one Lucene-style query (what /api/search?q= would take)."""
        clauses = self.clauses()
        if not self.q or not clauses:
            return self.q or " AND ".join(clauses)
        return " AND ".join([f"({self.q})", *clauses])

    def query(self) -> Query:
        """The parsed query; raises InvalidQuery with the reason."""
        return parse_lucene(self.lucene())

    def params(self, **changes: Any) -> dict[str, str]:
        """The form as query parameters (defaults left out), with `changes` applied."""
        form = replace(self, **changes) if changes else self
        out: dict[str, str] = {}
        if form.q:
            out["q"] = form.q
        for name in FILTERS:
            value = getattr(form, name)
            if value:
                out[name] = value
        if form.namespace is not Namespace.ORIGINAL:
            out["namespace"] = form.namespace.value
        if form.sort != DEFAULT_SORT:
            out["sort"] = form.sort
        if form.page_size != DEFAULT_PAGE_SIZE:
            out["page_size"] = str(form.page_size)
        if form.page != 1:
            out["page"] = str(form.page)
        return out

    def request(self, level: Level = Level.STUDY, limit: int | None = None) -> SearchRequest:
        """The index request of one page of studies."""
        size = self.page_size if limit is None else limit
        return SearchRequest(
            namespace=self.namespace,
            level=level,
            query=self.query(),
            limit=size,
            offset=(self.page - 1) * size,
            sort=SORTS[self.sort].keys if level is Level.STUDY else (),
            include_fields=("InstitutionName",) if level is Level.STUDY else (),
        )


@dataclass
class SeriesRow:
    uid: str
    number: str
    modality: str
    description: str
    instances: int | None
    body_part: str = ""


@dataclass
class StudyRow:
    uid: str
    date: str
    time: str
    accession: str
    description: str
    modalities: str
    referring: str
    institution: str
    n_series: int | None
    n_instances: int | None
    series: list[SeriesRow] = field(default_factory=list)


@dataclass
class PatientGroup:
    name: str
    patient_id: str
    birth_date: str
    sex: str
    studies: list[StudyRow] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances or 0 for s in self.studies)


@dataclass
class SearchPage:
    form: SearchForm
    total: int
    groups: list[PatientGroup]

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(self.total / self.form.page_size))

    @property
    def first(self) -> int:
        return min(self.total, (self.form.page - 1) * self.form.page_size + 1)

    @property
    def last(self) -> int:
        return min(self.total, self.form.page * self.form.page_size)

    @property
    def n_studies(self) -> int:
        return sum(len(g.studies) for g in self.groups)

    def pages(self) -> Iterator[int | None]:
        """Page numbers to link (None marks a gap): first, last, and two around the current."""
        current, count = self.form.page, self.page_count
        shown = sorted({1, count, *range(max(1, current - 2), min(count, current + 2) + 1)})
        previous = 0
        for number in shown:
            if number - previous > 1:
                yield None
            yield number
            previous = number


def study_row(item: Mapping[str, Any]) -> StudyRow:
    """One study of a study-level search (flattened DICOM JSON)."""
    return StudyRow(
        uid=fmt.text(item.get("StudyInstanceUID")),
        date=fmt.date(item.get("StudyDate")),
        time=fmt.time(item.get("StudyTime")),
        accession=fmt.text(item.get("AccessionNumber")),
        description=fmt.text(item.get("StudyDescription")),
        modalities=fmt.text(item.get("ModalitiesInStudy")).replace("\\", ", "),
        referring=fmt.person(item.get("ReferringPhysicianName")),
        institution=fmt.text(item.get("InstitutionName")),
        n_series=fmt.integer(item.get("NumberOfStudyRelatedSeries")),
        n_instances=fmt.integer(item.get("NumberOfStudyRelatedInstances")),
    )


def series_row(item: Mapping[str, Any]) -> SeriesRow:
    return SeriesRow(
        uid=fmt.text(item.get("SeriesInstanceUID")),
        number=fmt.text(item.get("SeriesNumber")),
        modality=fmt.text(item.get("Modality")),
        description=fmt.text(item.get("SeriesDescription")),
        instances=fmt.integer(item.get("NumberOfSeriesRelatedInstances")),
        body_part=fmt.text(item.get("BodyPartExamined")),
    )


def series_of_studies(
    index: StudyIndex, namespace: Namespace, study_uids: list[str]
) -> dict[str, list[SeriesRow]]:
    """The series of the given studies, by study UID (one bounded query)."""
    if not study_uids:
        return {}
    result = index.search(
        SearchRequest(
            namespace=namespace,
            level=Level.SERIES,
            query=AnyOf("StudyInstanceUID", tuple(study_uids)),
            limit=MAX_SERIES_PER_PAGE,
            include_fields=("BodyPartExamined",),
        )
    )
    by_study: dict[str, list[SeriesRow]] = {}
    for item in result.results:
        flat = flatten(item)
        by_study.setdefault(fmt.text(flat.get("StudyInstanceUID")), []).append(series_row(flat))
    for rows in by_study.values():
        rows.sort(key=lambda row: (fmt.integer(row.number) is None, fmt.integer(row.number) or 0))
    return by_study


def search_page(index: StudyIndex, form: SearchForm) -> SearchPage:
    """One page of studies matching `form`, grouped by patient, each with its series.

    Patients are listed in the order of their first study on the page; studies keep the
    order asked for within their patient. Raises InvalidQuery.
    """
    result = index.search(form.request())
    groups: dict[tuple[str, str], PatientGroup] = {}
    studies: list[StudyRow] = []
    for item in result.results:
        flat = flatten(item)
        key = (fmt.text(flat.get("PatientID")), fmt.text(flat.get("PatientName")))
        group = groups.get(key)
        if group is None:
            group = groups[key] = PatientGroup(
                name=fmt.person(flat.get("PatientName")),
                patient_id=key[0],
                birth_date=fmt.date(flat.get("PatientBirthDate")),
                sex=fmt.text(flat.get("PatientSex")),
            )
        row = study_row(flat)
        group.studies.append(row)
        studies.append(row)
    series = series_of_studies(index, form.namespace, [s.uid for s in studies])
    for study in studies:
        study.series = series.get(study.uid, [])
    return SearchPage(form=form, total=result.total, groups=list(groups.values()))
