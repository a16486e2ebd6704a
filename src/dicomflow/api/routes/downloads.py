"""Downloads for people: an instance as a .dcm file, a series or a study as a ZIP archive
(streamed from the blob store), and a search's result list as CSV or JSON.

WADO-RS (`routes.dicomweb`) serves the same objects to DICOMweb clients as multipart/related;
a browser link needs a single file with a name, which is what these routes give.
"""

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from dicomflow.api.auth import ViewNamespace, reader
from dicomflow.api.deps import BlobsDep, IndexDep
from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.searching import SearchForm
from dicomflow.api.zipstream import zip_objects
from dicomflow.indexer.base import InstanceRecord, Level, SearchRequest, StudyIndex, flatten
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BlobNotFound
from dicomflow.kernel.uids import validate_uid

router = APIRouter(tags=["downloads"], dependencies=[reader])

MAX_EXPORT_ROWS = 10_000
EXPORT_PAGE = 1_000

EXPORT_COLUMNS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    Level.SERIES: (
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ),
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _records(
    index: StudyIndex, namespace: Namespace, study: str, series: str | None = None
) -> list[InstanceRecord]:
    records = index.instances(
        namespace,
        validate_uid(study, "StudyInstanceUID"),
        validate_uid(series, "SeriesInstanceUID") if series is not None else None,
        with_json=False,
    )
    if not records:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise HTTPException(404, f"no {what} in the {namespace} namespace")
    return records


def _zip_response(blobs: BlobsDep, records: list[InstanceRecord], name: str) -> StreamingResponse:
    return StreamingResponse(
        zip_objects(blobs, records),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


@router.get(
    "/api/download/studies/{study}.zip",
    summary="Download a study as a ZIP archive of its DICOM files",
    response_class=StreamingResponse,
)
def download_study(
    study: str, index: IndexDep, blobs: BlobsDep, namespace: ViewNamespace
) -> StreamingResponse:
    return _zip_response(blobs, _records(index, namespace, study), study)


@router.get(
    "/api/download/studies/{study}/series/{series}.zip",
    summary="Download a series as a ZIP archive of its DICOM files",
    response_class=StreamingResponse,
)
def download_series(
    study: str,
    series: str,
    index: IndexDep,
    blobs: BlobsDep,
    namespace: ViewNamespace,
) -> StreamingResponse:
    return _zip_response(blobs, _records(index, namespace, study, series), series)


@router.get(
    "/api/download/studies/{study}/series/{series}/instances/{instance}.dcm",
    summary="Download an instance as a DICOM file (as stored)",
    response_class=Response,
)
def download_instance(
    study: str,
    series: str,
    instance: str,
    index: IndexDep,
    blobs: BlobsDep,
    namespace: ViewNamespace,
) -> Response:
    ns = namespace
    record = index.get_instance(ns, validate_uid(instance, "SOPInstanceUID"))
    if record is None or record.study_uid != study or record.series_uid != series:
        raise HTTPException(404, f"no instance {instance} in series {series} ({ns})")
    try:
        data = blobs.get(record.blob.namespace, record.blob.key)
    except BlobNotFound:
        raise HTTPException(404, f"instance {instance} is indexed but not stored") from None
    return Response(
        data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{instance}.dcm"'},
    )


# --- exports of a result list ---------------------------------------------------------------


def _export_level(level: str) -> Level:
    if level not in ("study", "series"):
        raise HTTPException(400, f"level {level[:20]!r} is not study or series")
    return Level(level)


def _form(request: Request, namespace: Namespace) -> SearchForm:
    return SearchForm.from_params(request.query_params, namespace)


def _page_request(form: SearchForm, level: Level, offset: int) -> SearchRequest:
    base = form.request(level, EXPORT_PAGE)
    return SearchRequest(
        namespace=base.namespace,
        level=base.level,
        query=base.query,
        limit=EXPORT_PAGE,
        offset=offset,
        sort=base.sort,
        include_fields=EXPORT_COLUMNS[level],
    )


def export_rows(
    index: StudyIndex, form: SearchForm, level: Level
) -> tuple[int, Iterator[dict[str, Any]]]:
    """The total of matches and the first MAX_EXPORT_ROWS of them (flattened), read by pages.

    The first page is read at once, so that a bad query raises InvalidQuery (a 400) before
    anything is sent.
    """
    first = index.search(_page_request(form, level, 0))
    total = first.total

    def rows() -> Iterator[dict[str, Any]]:
        page, offset, sent = first, 0, 0
        while page.results and sent < MAX_EXPORT_ROWS:
            for item in page.results[: MAX_EXPORT_ROWS - sent]:
                yield flatten(item)
                sent += 1
            offset += EXPORT_PAGE
            if offset >= total or sent >= MAX_EXPORT_ROWS:
                return
            page = index.search(_page_request(form, level, offset))

    return total, rows()


def _cell(value: Any) -> str:
    text = fmt.text(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _export_headers(total: int, form: SearchForm, suffix: str) -> dict[str, str]:
    name = f"dicomflow-{form.namespace}-results.{suffix}"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Total-Count": str(total),
    }
    if total > MAX_EXPORT_ROWS:
        headers["X-Truncated"] = f"first {MAX_EXPORT_ROWS} of {total} results"
    return headers


@router.get(
    "/api/export/search.csv",
    summary="Export a search's result list as CSV (the search page's parameters)",
    response_class=StreamingResponse,
)
def export_csv(
    request: Request, index: IndexDep, namespace: ViewNamespace, level: str = "study"
) -> StreamingResponse:
    """One row per study (or series), the columns of EXPORT_COLUMNS, at most 10,000 rows.

    Takes the parameters of the search page: ``q`` (Lucene-style), the field filters, ``sort``
    and ``namespace``. Multiple values are joined with a backslash, as in DICOM.
    """
    form, chosen = _form(request, namespace), _export_level(level)
    columns = EXPORT_COLUMNS[chosen]
    total, rows = export_rows(index, form, chosen)

    def body() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in columns])
            if buffer.tell() > 65536:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers=_export_headers(total, form, "csv")
    )


@router.get(
    "/api/export/search.json",
    summary="Export a search's result list as JSON (the search page's parameters)",
    response_class=StreamingResponse,
)
def export_json(
    request: Request, index: IndexDep, namespace: ViewNamespace, level: str = "study"
) -> StreamingResponse:
    """``{"total", "query", "namespace", "level", "results": [...]}``, results as /api/search
    gives them (keyword: value), at most 10,000."""
    form, chosen = _form(request, namespace), _export_level(level)
    total, rows = export_rows(index, form, chosen)
    head = {
        "total": total,
        "query": form.lucene(),
        "namespace": form.namespace.value,
        "level": chosen.value,
    }

    def body() -> Iterator[str]:
        yield json.dumps(head)[:-1] + ', "results": ['
        for number, row in enumerate(rows):
            yield ("," if number else "") + json.dumps(row, default=str)
        yield "]}\n"

    return StreamingResponse(
        body(), media_type="application/json", headers=_export_headers(total, form, "json")
    )
