"""HTTP limits: the STOW-RS body limit (413) and the search timeout (503), each with a reason."""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from starlette.requests import Request

from dicomflow.api.app import create_app
from dicomflow.api.routes.stow import read_body
from dicomflow.synthetic import PatientSpec, make_instance
from tests.api.conftest import Archive, part10
from tests.api.test_dimse_access import SlowIndex
from tests.conftest import ADMIN_HEADERS

BOUNDARY = "limits-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def limited(archive: Archive) -> Iterator[TestClient]:
    settings = archive.settings.model_copy(
        update={"stow_max_request_bytes": 100_000, "query_timeout": 0.3}
    )
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        yield client


def body(*payloads: bytes) -> bytes:
    parts = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in payloads
    )
    return parts + b"--" + BOUNDARY.encode() + b"--\r\n"


def instance(rows: int) -> bytes:
    return part10(
        make_instance(PatientSpec(patient_id="HTTPLIMITS"), 0, 0, rows, rows=rows, columns=rows)
    )


def test_stow_bodies_over_the_limit_are_413(limited: TestClient) -> None:
    small = limited.post(
        "/dicomweb/studies", content=body(instance(64)), headers={"Content-Type": CONTENT_TYPE}
    )
    assert small.status_code == 200
    large = body(instance(256))  # 128 KiB of pixels
    declared = limited.post(
        "/dicomweb/studies", content=large, headers={"Content-Type": CONTENT_TYPE}
    )
    assert declared.status_code == 413
    assert "DICOMFLOW_STOW_MAX_REQUEST_BYTES" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for start in range(0, len(large), 8192):
            yield large[start : start + 8192]

    streamed = limited.post(
        "/dicomweb/studies", content=chunks(), headers={"Content-Type": CONTENT_TYPE}
    )
    assert streamed.status_code == 413


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/dicomweb/studies",
        "headers": [(b"content-length", b"5000000000")],
    }
    with pytest.raises(HTTPException) as refused:
        asyncio.run(read_body(Request(scope, receive), 1000))
    assert refused.value.status_code == 413
    assert received == []
    within = [(b"content-length", b"10")]
    assert asyncio.run(read_body(Request({**scope, "headers": within}, receive), 1000)) == b"x" * 10


def test_a_search_that_takes_too_long_is_503_with_a_reason(limited: TestClient) -> None:
    state = limited.app.state.dicomflow  # type: ignore[attr-defined]
    state.index = SlowIndex(state.index, delay=2)
    for path in ("/dicomweb/studies", "/dicomweb/series", "/api/search?q=Modality:CT"):
        response = limited.get(path)
        assert response.status_code == 503, path
        assert response.headers["Retry-After"]
        assert "DICOMFLOW_QUERY_TIMEOUT" in response.json()["detail"]
