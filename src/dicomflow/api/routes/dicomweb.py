"""DICOMweb (PS3.18): QIDO-RS search and WADO-RS retrieval.

The same routes serve two roots: ``/dicomweb`` (originals) and ``/dicomweb/deidentified``
(the de-identified copies, with their pseudonymous UIDs).
"""

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dicomflow.api.deps import BlobsDep, IndexDep
from dicomflow.indexer.base import InstanceRecord, Level, SearchRequest
from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.query import qido_to_query
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BlobNotFound
from dicomflow.kernel.uids import instance_key, validate_uid

DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching"}


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be a whole number, not {raw[:40]!r}") from None
    if not 0 <= value <= maximum:
        raise InvalidQuery(f"{name} must be between 0 and {maximum}, not {value}")
    return value


def _include_fields(request: Request) -> list[str] | str:
    values: list[str] = []
    for raw in request.query_params.getlist("includefield"):
        values.extend(v.strip() for v in raw.split(",") if v.strip())
    if "all" in values:
        return "all"
    return values


def qido_search(
    request: Request,
    index: IndexDep,
    namespace: Namespace,
    level: Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> JSONResponse:
    if study_uid is not None:
        validate_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        validate_uid(series_uid, "SeriesInstanceUID")
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in _RESERVED]
    search = SearchRequest(
        namespace=namespace,
        level=level,
        query=qido_to_query(params, level),
        limit=_int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT),
        offset=_int_param(request, "offset", 0, 10**9),
        study_uid=study_uid,
        series_uid=series_uid,
        include_fields=_include_fields(request),
    )
    result = index.search(search)
    headers = {"X-Total-Count": str(result.total)}
    return JSONResponse(result.results, media_type=DICOM_JSON, headers=headers)


def _multipart(
    blobs: BlobStore, records: list[InstanceRecord], namespace: Namespace
) -> StreamingResponse:
    boundary = uuid.uuid4().hex

    def parts() -> Iterator[bytes]:
        for record in records:
            data = blobs.get(namespace, _key(record))
            yield (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(
        parts(),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def _key(record: InstanceRecord) -> str:
    return instance_key(
        record.study_uid, record.series_uid, record.sop_uid
    )


def _wants_single_part(accept: str | None) -> bool:
    return accept is not None and accept.split(";")[0].strip() == "application/dicom"


def build_router(namespace: Namespace) -> APIRouter:
    router = APIRouter(tags=[f"DICOMweb ({namespace})"])

    @router.get("/studies", summary="QIDO-RS: search for studies")
    def search_studies(request: Request, index: IndexDep) -> JSONResponse:
        return qido_search(request, index, namespace, Level.STUDY)

    @router.get("/series", summary="QIDO-RS: search for series")
    def search_series(request: Request, index: IndexDep) -> JSONResponse:
        return qido_search(request, index, namespace, Level.SERIES)

    @router.get("/instances", summary="QIDO-RS: search for instances")
    def search_instances(request: Request, index: IndexDep) -> JSONResponse:
        return qido_search(request, index, namespace, Level.INSTANCE)

    @router.get("/studies/{study}/series", summary="QIDO-RS: series of a study")
    def search_study_series(study: str, request: Request, index: IndexDep) -> JSONResponse:
        return qido_search(request, index, namespace, Level.SERIES, study_uid=study)

    @router.get("/studies/{study}/instances", summary="QIDO-RS: instances of a study")
    def search_study_instances(study: str, request: Request, index: IndexDep) -> JSONResponse:
        return qido_search(request, index, namespace, Level.INSTANCE, study_uid=study)

    @router.get(
        "/studies/{study}/series/{series}/instances",
        summary="QIDO-RS: instances of a series",
    )
    def search_series_instances(
        study: str, series: str, request: Request, index: IndexDep
    ) -> JSONResponse:
        return qido_search(
            request, index, namespace, Level.INSTANCE, study_uid=study, series_uid=series
        )

    @router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
    def retrieve_study(study: str, index: IndexDep, blobs: BlobsDep) -> StreamingResponse:
        records = index.instances(
            namespace, validate_uid(study, "StudyInstanceUID"), with_json=False
        )
        if not records:
            raise HTTPException(404, f"no study {study}")
        return _multipart(blobs, records, namespace)

    @router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
    def retrieve_series(
        study: str, series: str, index: IndexDep, blobs: BlobsDep
    ) -> StreamingResponse:
        records = index.instances(
            namespace,
            validate_uid(study, "StudyInstanceUID"),
            validate_uid(series, "SeriesInstanceUID"),
            with_json=False,
        )
        if not records:
            raise HTTPException(404, f"no series {series} in study {study}")
        return _multipart(blobs, records, namespace)

    def _instance(index: IndexDep, study: str, series: str, instance: str) -> InstanceRecord:
        record = index.get_instance(namespace, validate_uid(instance, "SOPInstanceUID"))
        if (
            record is None
            or record.study_uid != study
            or record.series_uid != series
        ):
            raise HTTPException(404, f"no instance {instance} in series {series}")
        return record

    @router.get(
        "/studies/{study}/series/{series}/instances/{instance}",
        summary="WADO-RS: retrieve an instance (byte for byte as received)",
        response_model=None,
    )
    def retrieve_instance(
        study: str,
        series: str,
        instance: str,
        index: IndexDep,
        blobs: BlobsDep,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        record = _instance(index, study, series, instance)
        if _wants_single_part(accept):
            try:
                data = blobs.get(namespace, _key(record))
            except BlobNotFound:
                raise HTTPException(404, f"instance {instance} is not stored") from None
            return Response(data, media_type="application/dicom")
        return _multipart(blobs, [record], namespace)

    @router.get(
        "/studies/{study}/series/{series}/instances/{instance}/metadata",
        summary="WADO-RS: metadata of an instance (DICOM JSON, no bulk data)",
    )
    def instance_metadata(study: str, series: str, instance: str, index: IndexDep) -> JSONResponse:
        record = _instance(index, study, series, instance)
        return JSONResponse([record.dicom_json], media_type=DICOM_JSON)

    @router.get(
        "/studies/{study}/series/{series}/metadata",
        summary="WADO-RS: metadata of a series",
    )
    def series_metadata(study: str, series: str, index: IndexDep) -> JSONResponse:
        records = index.instances(
            namespace,
            validate_uid(study, "StudyInstanceUID"),
            validate_uid(series, "SeriesInstanceUID"),
        )
        if not records:
            raise HTTPException(404, f"no series {series} in study {study}")
        body: list[dict[str, Any]] = [r.dicom_json for r in records]
        return JSONResponse(body, media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata", summary="WADO-RS: metadata of a study")
    def study_metadata(study: str, index: IndexDep) -> JSONResponse:
        records = index.instances(namespace, validate_uid(study, "StudyInstanceUID"))
        if not records:
            raise HTTPException(404, f"no study {study}")
        body: list[dict[str, Any]] = [r.dicom_json for r in records]
        return JSONResponse(body, media_type=DICOM_JSON)

    return router
