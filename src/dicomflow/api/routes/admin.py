"""Administration: the C-MOVE destinations (list, add, remove).

Destinations from ``DICOMFLOW_DESTINATIONS`` are listed but read-only; the others live in
``<data_dir>/destinations.json``, which the SCP re-reads when it changes.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from dicomflow.api.auth import AdminDep, admin, audit_change
from dicomflow.api.deps import SettingsDep
from dicomflow.api.destinations import Destination, DestinationRegistry, DestinationSource
from dicomflow.api.exceptions import DestinationConflict, InvalidDestination

router = APIRouter(prefix="/api/admin", tags=["administration"], dependencies=[admin])


def get_destinations(settings: SettingsDep) -> DestinationRegistry:
    try:
        return DestinationRegistry(settings)
    except InvalidDestination as exc:
        raise HTTPException(500, f"the destination configuration is invalid: {exc}") from exc


DestinationsDep = Annotated[DestinationRegistry, Depends(get_destinations)]


class DestinationPublic(Destination):
    source: DestinationSource


class DestinationsPublic(BaseModel):
    destinations: list[DestinationPublic]


def _public(destination: Destination, source: DestinationSource) -> DestinationPublic:
    return DestinationPublic(**destination.model_dump(), source=source)


@router.get("/destinations", summary="The C-MOVE destinations")
def list_destinations(registry: DestinationsDep) -> DestinationsPublic:
    try:
        entries = registry.entries()
    except InvalidDestination as exc:
        raise HTTPException(500, str(exc)) from exc
    return DestinationsPublic(destinations=[_public(d, source) for d, source in entries])


@router.post("/destinations", status_code=201, summary="Add a C-MOVE destination")
def add_destination(
    destination: Destination, registry: DestinationsDep, request: Request, principal: AdminDep
) -> DestinationPublic:
    try:
        added = registry.add(destination)
    except DestinationConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    audit_change(
        request, principal, f"added destination {added.ae_title}@{added.host}:{added.port}"
    )
    return _public(added, DestinationSource.FILE)


@router.delete(
    "/destinations/{ae_title}",
    status_code=204,
    response_class=Response,
    summary="Remove a C-MOVE destination",
)
def remove_destination(
    ae_title: str, registry: DestinationsDep, request: Request, principal: AdminDep
) -> Response:
    try:
        removed = registry.remove(ae_title)
    except DestinationConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not removed:
        raise HTTPException(404, f"no destination {ae_title[:16]!r}")
    audit_change(request, principal, f"removed destination {ae_title}")
    return Response(status_code=204)
