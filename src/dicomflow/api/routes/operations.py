"""Pipeline operations: retry a dead letter, rebuild (reindex) a namespace of the index."""

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from dicomflow.api import deadletters
from dicomflow.api.auth import AdminDep, admin, audit_change
from dicomflow.api.deps import BusDep
from dicomflow.api.reindex import ReindexProgress, ReindexRunning
from dicomflow.api.services import ServicesDep, services_lifespan
from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.formatting import VIEW_NAMESPACES

router = APIRouter(tags=["operations"], lifespan=services_lifespan, dependencies=[admin])


class RetryPublic(BaseModel):
    offset: int
    topic: str
    key: str | None
    group: str
    detail: str


class ReindexPublic(BaseModel):
    state: str
    namespace: str | None
    run_id: str
    read: int
    total: int
    indexed: int
    skipped: int
    percent: int
    elapsed_seconds: float
    error: str


def reindex_public(progress: ReindexProgress) -> ReindexPublic:
    return ReindexPublic(
        state=progress.state.value,
        namespace=progress.namespace.value if progress.namespace else None,
        run_id=progress.run_id,
        read=progress.read,
        total=progress.total,
        indexed=progress.indexed,
        skipped=progress.skipped,
        percent=progress.percent,
        elapsed_seconds=round(progress.elapsed, 3),
        error=progress.error,
    )


@router.post(
    "/api/deadletters/{offset}/retry",
    status_code=202,
    summary="Retry a dead letter: re-publish its payload to its source topic",
)
def retry_dead_letter(
    offset: int, bus: BusDep, request: Request, principal: AdminDep
) -> RetryPublic:
    try:
        letter = deadletters.retry(bus, offset)
    except deadletters.DeadLetterNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except deadletters.DeadLetterNotRetryable as exc:
        raise HTTPException(409, str(exc)) from exc
    audit_change(request, principal, f"retried dead letter {offset} to {letter.topic}")
    return RetryPublic(
        offset=offset,
        topic=letter.topic,
        key=letter.key,
        group=letter.group,
        detail=f"re-published to {letter.topic}; a new dead letter appears if it fails again",
    )


@router.post(
    "/api/admin/reindex",
    status_code=202,
    summary="Rebuild a namespace of the index from the metadata topic (clears it first)",
)
def start_reindex(
    services: ServicesDep, request: Request, principal: AdminDep, namespace: str = "original"
) -> ReindexPublic:
    try:
        chosen = fmt.view_namespace(namespace)
    except ValueError as exc:
        raise HTTPException(
            400, f"{exc}; one of {', '.join(n.value for n in VIEW_NAMESPACES)}"
        ) from exc
    try:
        progress = services.reindexer.start(chosen)
    except ReindexRunning as exc:
        raise HTTPException(409, str(exc)) from exc
    audit_change(request, principal, f"started a reindex of the {chosen} namespace")
    return reindex_public(progress)


@router.get("/api/admin/reindex", summary="Progress of the last reindex")
def reindex_progress(services: ServicesDep) -> ReindexPublic:
    return reindex_public(services.reindexer.progress)
