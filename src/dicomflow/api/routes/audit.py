"""The audit trail as admins query it: newest first, filtered by user, action, study and time."""

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel

from dicomflow.api.auth import admin
from dicomflow.api.deps import AuditDep
from dicomflow.kernel.audit import AuditAction, AuditEvent

router = APIRouter(prefix="/api/admin", tags=["administration"], dependencies=[admin])

MAX_AUDIT_PAGE = 1000


class AuditEventsPublic(BaseModel):
    events: list[AuditEvent]
    count: int


@router.get("/audit", summary="The audit trail, newest first")
def search_audit(
    audit: AuditDep,
    user: str | None = None,
    action: AuditAction | None = None,
    study: str | None = Query(None, description="A Study Instance UID the event refers to."),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=MAX_AUDIT_PAGE),
) -> AuditEventsPublic:
    events = audit.search(
        user=user, action=action, study_uid=study, since=since, until=until, limit=limit
    )
    return AuditEventsPublic(events=events, count=len(events))
