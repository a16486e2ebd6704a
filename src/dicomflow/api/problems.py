"""Errors as HTTP problem documents (RFC 9457) with a reason a person can act on."""

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dicomflow.api.auth import BadNamespace
from dicomflow.api.authn import Forbidden, NotAuthenticated
from dicomflow.indexer.exceptions import InvalidQuery, SearchTimeout
from dicomflow.ingest.exceptions import IngestError
from dicomflow.kernel.exceptions import BackendUnavailable, InvalidUID


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


UiErrorPage = Callable[[Request, int, str], Response | None]


def is_ui_request(request: Request) -> bool:
    """Whether the request is for a page or fragment of the web UI (not the API)."""
    path = request.url.path
    return path == "/" or path.startswith("/ui/")


def install_problem_handlers(app: FastAPI, ui_error_page: UiErrorPage | None = None) -> None:
    """Problem documents for the API; `ui_error_page` answers UI requests (None: a problem)."""

    def _ui_or_problem(
        request: Request, status: int, title: str, detail: str, headers: dict[str, str]
    ) -> Response:
        if ui_error_page is not None and is_ui_request(request):
            page = ui_error_page(request, status, detail)
            if page is not None:
                return page
        response = problem(status, title, detail)
        response.headers.update(headers)
        return response

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="dicomflow"'}
        return _ui_or_problem(request, 401, "Authentication required", str(exc), headers)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return _ui_or_problem(request, 403, "Forbidden", str(exc), {})

    @app.exception_handler(BadNamespace)
    async def _bad_namespace(request: Request, exc: BadNamespace) -> Response:
        return _ui_or_problem(request, 400, "Unknown namespace", str(exc), {})

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
