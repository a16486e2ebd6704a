"""Audit events of the DIMSE channel: refused AEs, and every query and retrieve of originals.

One helper for the whole channel, so that the SCP's handlers say what happened in one line.
The user of a DIMSE event is the calling AE title; its source is ``AE@address``.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from dicomflow.kernel.audit import AuditAction, AuditEvent, AuditOutcome, AuditTrail
from dicomflow.kernel.events import Namespace

CHANNEL = "dimse"


@dataclass
class DimseAudit:
    """Records DIMSE audit events on the deployment's audit trail."""

    trail: AuditTrail

    def denied(self, what: str, calling_ae: str, host: str, port: int, reason: str) -> None:
        """An ACCESS_DENIED event (an `AccessGuard` refusal hook)."""
        self.trail.record(
            AuditEvent(
                action=AuditAction.ACCESS_DENIED,
                outcome=AuditOutcome.MINOR_FAILURE,
                user=calling_ae.strip() or "?",
                source=f"{calling_ae.strip()}@{host}",
                channel=CHANNEL,
                target=what,
                detail=f"{reason} (port {port})",
            )
        )

    def accessed(
        self,
        action: AuditAction,
        calling_ae: str,
        host: str,
        target: str,
        *,
        study_uids: Iterable[str] = (),
        query: str | None = None,
        detail: str = "",
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
    ) -> None:
        """An access to the identified data; raises BackendUnavailable if it is not durable."""
        self.trail.record(
            AuditEvent(
                action=action,
                outcome=outcome,
                user=calling_ae.strip() or "?",
                source=f"{calling_ae.strip()}@{host}",
                channel=CHANNEL,
                target=target,
                namespace=Namespace.ORIGINAL.value,
                study_uids=sorted(set(study_uids)),
                query=query,
                detail=detail,
            )
        )
