"""The FastAPI application factory."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from dicomflow import __version__
from dicomflow.api.auth import OPEN_PATHS
from dicomflow.api.authn import Authenticator, check_auth_settings
from dicomflow.api.deps import AppState
from dicomflow.api.problems import install_problem_handlers
from dicomflow.api.routes import (
    admin,
    audit,
    dicomweb,
    downloads,
    operations,
    search,
    status,
    stow,
    tokens,
    ui,
)
from dicomflow.indexer import open_index
from dicomflow.kernel.audit import open_audit_trail
from dicomflow.kernel.backends import open_blob_store, open_bus
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    check_auth_settings(settings)
    bus = open_bus(settings)
    state = AppState(
        settings=settings,
        index=open_index(settings),
        blobs=open_blob_store(settings),
        bus=bus,
        audit=open_audit_trail(settings, bus),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.index.close()
        state.blobs.close()
        state.audit.close()
        state.bus.close()

    app = FastAPI(
        title="dicomflow",
        version=__version__,
        description="DICOMweb (QIDO-RS, WADO-RS), Lucene-style search and pipeline status.",
        lifespan=lifespan,
    )
    app.state.dicomflow = state
    app.state.dicomflow_auth = Authenticator(settings, state.blobs)
    install_problem_handlers(app, ui.auth_error_page)
    app.include_router(status.router)
    app.include_router(search.router)
    app.include_router(stow.router)
    app.include_router(admin.router)
    app.include_router(audit.router)
    app.include_router(tokens.router)
    app.include_router(operations.router)
    app.include_router(downloads.router)
    app.include_router(ui.router)
    app.mount(ui.STATIC_PATH, ui.static_files(), name="ui-static")
    app.include_router(
        dicomweb.build_router(Namespace.DEIDENTIFIED), prefix="/dicomweb/deidentified"
    )
    app.include_router(dicomweb.build_router(Namespace.ORIGINAL), prefix="/dicomweb")
    app.openapi = _with_bearer_security(app)  # type: ignore[method-assign]
    return app


def _with_bearer_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI schema saying that every operation but /healthz takes a bearer token (so
    that /docs has an Authorize button)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (dicomflow token create) or an OpenID "
                    "Connect access token; see docs/security.md",
                }
            }
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path not in OPEN_PATHS:
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema or {}

    return openapi
