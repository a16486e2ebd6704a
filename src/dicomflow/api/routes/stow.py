"""STOW-RS (PS3.18 10.5): store instances over HTTP through the same durable path as C-STORE."""

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dicomflow.api.auth import uploader
from dicomflow.api.deps import StateDep
from dicomflow.api.routes.dicomweb import base_url
from dicomflow.ingest.exceptions import (
    IngestError,
    InvalidObject,
    ObjectTooLarge,
    StorageUnavailable,
)
from dicomflow.ingest.receiver import identity_of_file_bytes
from dicomflow.kernel.events import Source, SourceKind
from dicomflow.kernel.uids import validate_uid

router = APIRouter(tags=["DICOMweb (original)"], dependencies=[uploader])

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)

# Attribute tags of the STOW-RS response (PS3.18 Table 10.5.3-1).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
ERROR_COMMENT = "00000902"

# Failure Reason values of PS3.18 10.5.3 (from PS3.4 Annex B and PS3.7 Annex C).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class StudyMismatch(InvalidObject):
    """The instance belongs to another study than the one of the request URL."""


def failure_reason(error: IngestError) -> int:
    """The STOW-RS Failure Reason of a refused instance."""
    if isinstance(error, ObjectTooLarge | StorageUnavailable):
        return OUT_OF_RESOURCES
    if isinstance(error, StudyMismatch):
        return DATA_SET_DOES_NOT_MATCH
    if isinstance(error, InvalidObject):
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body: (lower-cased headers, payload)."""
    delimiter = b"--" + boundary.encode()
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, separator, payload = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise InvalidObject("a multipart part has no header/body separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


PREAMBLE = b"\x00" * 128 + b"DICM"


def with_preamble(payload: bytes) -> bytes:
    """A Part 10 object with its preamble and DICM prefix, which some writers leave out.

    pydicom's ``dcmwrite`` (used by dicomweb-client) starts at the file meta (group 0002);
    the object is stored with the preamble added, byte for byte otherwise.
    """
    if payload[128:132] != b"DICM" and payload[:2] == b"\x02\x00":
        return PREAMBLE + payload
    return payload


def _uid_attr(vr: str, value: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413, f"the request body exceeds {limit} bytes (DICOMFLOW_STOW_MAX_REQUEST_BYTES)"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes: 413 before reading when Content-Length says
    more, and as soon as a streamed (chunked) body passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPException(400, "Content-Length is not a number") from None
        if length > limit:
            raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


@router.post("/dicomweb/studies", summary="STOW-RS: store instances", response_model=None)
@router.post(
    "/dicomweb/studies/{study}",
    summary="STOW-RS: store instances of one study",
    response_model=None,
)
async def store_instances(
    request: Request, state: StateDep, study: str | None = None
) -> JSONResponse:
    if study is not None:
        validate_uid(study, "StudyInstanceUID")
    content_type = request.headers.get("content-type", "")
    boundary = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/related") or boundary is None:
        raise HTTPException(415, 'expected multipart/related; type="application/dicom"')
    part_type = _TYPE.search(content_type)
    if part_type and part_type.group(1).lower() != "application/dicom":
        raise HTTPException(415, f"only application/dicom parts are accepted, not {part_type[1]}")
    body = await read_body(request, state.settings.stow_max_request_bytes)
    receiver = state.receiver()
    source = Source(
        kind=SourceKind.STOW, address=f"{request.client.host if request.client else ''}"
    )
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    stored_studies: set[str] = set()
    base = base_url(request)
    for headers, payload in split_multipart(body, boundary.group(1)):
        kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        try:
            if kind != "application/dicom":
                raise InvalidObject(f"part of type {kind} is not application/dicom")
            payload = with_preamble(payload)
            identity = identity_of_file_bytes(payload)
            if study is not None and identity.study_instance_uid != study:
                raise StudyMismatch(
                    f"StudyInstanceUID {identity.study_instance_uid} is not the URL's {study}"
                )
            await run_in_threadpool(receiver.receive, payload, identity, source)
        except IngestError as exc:
            item: dict[str, Any] = {
                FAILURE_REASON: {"vr": "US", "Value": [failure_reason(exc)]},
                ERROR_COMMENT: {"vr": "LO", "Value": [str(exc)[:64]]},
            }
            try:
                partial = identity_of_file_bytes(payload)
                item[REFERENCED_SOP_CLASS_UID] = _uid_attr("UI", partial.sop_class_uid)
                item[REFERENCED_SOP_INSTANCE_UID] = _uid_attr("UI", partial.sop_instance_uid)
            except IngestError:
                pass
            failed.append(item)
            continue
        stored_studies.add(identity.study_instance_uid)
        referenced.append(
            {
                REFERENCED_SOP_CLASS_UID: _uid_attr("UI", identity.sop_class_uid),
                REFERENCED_SOP_INSTANCE_UID: _uid_attr("UI", identity.sop_instance_uid),
                RETRIEVE_URL: _uid_attr(
                    "UR",
                    f"{base}/dicomweb/studies/{identity.study_instance_uid}/series/"
                    f"{identity.series_instance_uid}/instances/{identity.sop_instance_uid}",
                ),
            }
        )
    response: dict[str, Any] = {}
    studies = {study} if study is not None else stored_studies
    if referenced and len(studies) == 1:
        response[RETRIEVE_URL] = _uid_attr("UR", f"{base}/dicomweb/studies/{studies.pop()}")
    if referenced:
        response[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if failed:
        response[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if not referenced and not failed:
        raise HTTPException(400, "the request holds no instance")
    status = 200 if not failed else (202 if referenced else 409)
    return JSONResponse(response, status_code=status, media_type="application/dicom+json")
