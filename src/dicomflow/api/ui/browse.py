"""What the study, series and viewer pages show, read from the index with bounded queries."""

from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID

from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.searching import SeriesRow, StudyRow, series_row, study_row
from dicomflow.indexer.base import Level, SearchRequest, StudyIndex, flatten
from dicomflow.indexer.query import Match
from dicomflow.kernel.events import Namespace

INSTANCES_PER_PAGE = 100
MAX_SERIES = 1_000
MAX_VIEWER_INSTANCES = 5_000
MAX_VIEWER_FRAMES = 20_000
MAX_VIEWPORT = 1024

# The study attributes shown first, in this order (the others are in "all attributes").
STUDY_ATTRIBUTES = (
    ("Patient name", "PatientName"),
    ("Patient ID", "PatientID"),
    ("Birth date", "PatientBirthDate"),
    ("Sex", "PatientSex"),
    ("Study date", "StudyDate"),
    ("Study time", "StudyTime"),
    ("Accession number", "AccessionNumber"),
    ("Study ID", "StudyID"),
    ("Description", "StudyDescription"),
    ("Referring physician", "ReferringPhysicianName"),
    ("Modalities", "ModalitiesInStudy"),
    ("Series", "NumberOfStudyRelatedSeries"),
    ("Instances", "NumberOfStudyRelatedInstances"),
    ("Study Instance UID", "StudyInstanceUID"),
)


@dataclass
class InstanceRow:
    uid: str
    number: str
    sop_class: str
    sop_class_name: str
    rows: int | None
    columns: int | None
    frames: int
    window: str = ""

    @property
    def size(self) -> str:
        return f"{self.columns} x {self.rows}" if self.rows and self.columns else ""

    def viewport(self) -> str:
        """The viewport to render at: none (full size) unless larger than MAX_VIEWPORT."""
        if (self.rows or 0) > MAX_VIEWPORT or (self.columns or 0) > MAX_VIEWPORT:
            return f"{MAX_VIEWPORT},{MAX_VIEWPORT}"
        return ""


@dataclass
class StudyDetail:
    row: StudyRow
    attributes: list[tuple[str, str]]
    all_attributes: list[tuple[str, str]]
    patient_name: str
    patient_id: str
    series: list[SeriesRow] = field(default_factory=list)


def _display(keyword: str, value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_display(keyword, item) for item in value)
    if keyword.endswith("Date"):
        return fmt.date(value)
    if keyword.endswith("Time"):
        return fmt.time(value)
    if keyword in ("PatientName", "ReferringPhysicianName"):
        return fmt.person(value)
    return fmt.text(value)


def study_detail(index: StudyIndex, namespace: Namespace, study_uid: str) -> StudyDetail | None:
    """A study's attributes and its series (None when the namespace has no such study)."""
    found = index.search(
        SearchRequest(
            namespace=namespace,
            level=Level.STUDY,
            study_uid=study_uid,
            limit=1,
            include_fields="all",
        )
    )
    if not found.results:
        return None
    flat = flatten(found.results[0])
    shown = {keyword for _, keyword in STUDY_ATTRIBUTES}
    series = index.search(
        SearchRequest(
            namespace=namespace,
            level=Level.SERIES,
            study_uid=study_uid,
            limit=MAX_SERIES,
            include_fields=("BodyPartExamined",),
        )
    )
    return StudyDetail(
        row=study_row(flat),
        attributes=[(label, _display(k, flat.get(k))) for label, k in STUDY_ATTRIBUTES],
        all_attributes=sorted(
            (k, _display(k, v)) for k, v in flat.items() if k not in shown and not _nested(v)
        ),
        patient_name=fmt.person(flat.get("PatientName")),
        patient_id=fmt.text(flat.get("PatientID")),
        series=[series_row(flatten(item)) for item in series.results],
    )


def _nested(value: Any) -> bool:
    """Whether a flattened value is (or holds) a sequence item: the tag dump shows those."""
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, dict) for v in value)
    )


def instance_row(item: dict[str, Any]) -> InstanceRow:
    flat = flatten(item)
    sop_class = fmt.text(flat.get("SOPClassUID"))
    try:
        name = UID(sop_class).name if sop_class else ""
    except ValueError:  # pragma: no cover - pydicom names unknown UIDs by their value
        name = sop_class
    return InstanceRow(
        uid=fmt.text(flat.get("SOPInstanceUID")),
        number=fmt.text(flat.get("InstanceNumber")),
        sop_class=sop_class,
        sop_class_name=name,
        rows=fmt.integer(flat.get("Rows")),
        columns=fmt.integer(flat.get("Columns")),
        frames=max(1, fmt.integer(flat.get("NumberOfFrames")) or 1),
        window=_window(flat.get("WindowCenter"), flat.get("WindowWidth")),
    )


def _window(center: Any, width: Any) -> str:
    """The first VOI window of an instance as ``center,width`` (empty when it has none)."""
    first = [v[0] if isinstance(v, list) and v else v for v in (center, width)]
    try:
        c, w = (float(v) for v in first)
    except (TypeError, ValueError):
        return ""
    return f"{c:g},{w:g}" if w >= 1 else ""


def instances(
    index: StudyIndex,
    namespace: Namespace,
    study_uid: str,
    series_uid: str,
    offset: int = 0,
    limit: int = INSTANCES_PER_PAGE,
) -> tuple[int, list[InstanceRow]]:
    """One page of a series' instances (by instance number) and how many there are."""
    result = index.search(
        SearchRequest(
            namespace=namespace,
            level=Level.INSTANCE,
            study_uid=study_uid,
            series_uid=series_uid,
            limit=limit,
            offset=offset,
            include_fields=("Rows", "Columns", "NumberOfFrames", "WindowCenter", "WindowWidth"),
        )
    )
    return result.total, [instance_row(item) for item in result.results]


@dataclass
class SeriesInfo:
    study: StudyRow
    series: SeriesRow
    patient_name: str
    patient_id: str

    @property
    def label(self) -> str:
        text = f"{self.series.modality} series {self.series.number}".strip()
        return f"{text} · {self.series.description}" if self.series.description else text


def series_info(
    index: StudyIndex, namespace: Namespace, study_uid: str, series_uid: str
) -> SeriesInfo | None:
    """The study and series rows of a series, and its patient (None if unknown)."""
    found = index.search(
        SearchRequest(
            namespace=namespace,
            level=Level.SERIES,
            study_uid=study_uid,
            query=Match("SeriesInstanceUID", series_uid),
            limit=1,
            include_fields=(
                "PatientName",
                "PatientID",
                "StudyDescription",
                "StudyDate",
                "AccessionNumber",
                "BodyPartExamined",
            ),
        )
    )
    if not found.results:
        return None
    flat = flatten(found.results[0])
    return SeriesInfo(
        study_row(flat),
        series_row(flat),
        fmt.person(flat.get("PatientName")),
        fmt.text(flat.get("PatientID")),
    )
