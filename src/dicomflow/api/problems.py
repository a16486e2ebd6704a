"""Errors as HTTP problem documents (RFC 9457) with a reason a person can act on."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dicomflow.indexer.exceptions import InvalidQuery, SearchTimeout
from dicomflow.ingest.exceptions import IngestError
from dicomflow.kernel.exceptions import BackendUnavailable, InvalidUID


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidQuery)
    async def _invalid_query(request: Request, exc: InvalidQuery) -> JSONResponse:
        return problem(400, "Invalid query", str(exc))

    @app.exception_handler(SearchTimeout)
    async def _search_timeout(request: Request, exc: SearchTimeout) -> JSONResponse:
        response = problem(503, "Search timed out", str(exc))
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(InvalidUID)
    async def _invalid_uid(request: Request, exc: InvalidUID) -> JSONResponse:
        return problem(400, "Invalid UID", str(exc))

    @app.exception_handler(IngestError)
    async def _ingest(request: Request, exc: IngestError) -> JSONResponse:
        return problem(exc.http_status, "Object refused", str(exc))

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return problem(503, "Back end unavailable", str(exc))
