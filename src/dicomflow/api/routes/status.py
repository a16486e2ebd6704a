"""Health, pipeline status and Prometheus metrics."""

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from dicomflow.api import deadletters
from dicomflow.api.auth import admin, any_role
from dicomflow.api.deps import BusDep, IndexDep
from dicomflow.api.services import ServicesDep
from dicomflow.kernel.events import DeadLetter, Namespace, Topic, decode_event

router = APIRouter(tags=["status"])


class HealthPublic(BaseModel):
    status: str


class ProcessorStatusPublic(BaseModel):
    name: str
    topics: list[str]
    lag: int


class PipelineStatusPublic(BaseModel):
    topics: dict[str, int]
    processors: list[ProcessorStatusPublic]
    dead_letters: int
    index: dict[str, dict[str, int]]


class DeadLetterPublic(BaseModel):
    offset: int
    group: str
    topic: str
    partition: int
    source_offset: int
    key: str | None
    error_type: str
    reason: str
    failed_at: str
    payload_type: str
    payload_ref: str
    payload_bytes: int


@router.get("/healthz", summary="Liveness (the one route open without credentials)")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/api/status",
    summary="Pipeline status: topic sizes, lag, dead letters, counts",
    dependencies=[any_role],
)
def pipeline_status(services: ServicesDep, bus: BusDep, index: IndexDep) -> PipelineStatusPublic:
    # The plugins are loaded once per app (Services): a monitor polls this route.
    sizes = bus.topic_sizes()
    processors = [
        ProcessorStatusPublic(
            name=processor.name,
            topics=list(processor.topics),
            lag=bus.group_lag(processor.group, list(processor.topics)),
        )
        for processor in services.enabled_processors()
    ]
    counts: dict[str, dict[str, int]] = {}
    for namespace in (Namespace.ORIGINAL, Namespace.DEIDENTIFIED):
        counts[namespace.value] = {str(k): v for k, v in index.counts(namespace).items()}
    return PipelineStatusPublic(
        topics=sizes,
        processors=processors,
        dead_letters=sizes.get(bus.topic(Topic.DEAD_LETTER), 0),
        index=counts,
    )


@router.get(
    "/api/deadletters",
    summary="Dead-lettered events with their reasons",
    dependencies=[admin],
)
def dead_letters(bus: BusDep, offset: int = 0, limit: int = 100) -> list[DeadLetterPublic]:
    # One reading of a dead letter for the API and the dashboard: deadletters.view.
    out = [
        DeadLetterPublic(
            **asdict(deadletters.view(record.offset, decode_event(record.value, DeadLetter)))
        )
        for record in bus.read(bus.topic(Topic.DEAD_LETTER), offset, min(limit, 1000))
    ]
    return out


@router.get("/metrics", summary="Prometheus metrics", response_model=None, dependencies=[any_role])
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
