"""Authorization of HTTP requests: the dependencies every router declares (docs/security.md).

- `RequireRole(role)`: an authenticated caller holding `role` (401 without valid credentials,
  403 with the wrong role). Every router but /healthz, the UI login page and the static UI
  assets declares one.
- `ReadNamespace`: the ONE place that decides which namespace a request reads (original or
  de-identified), from the route or its ``namespace`` parameter and the caller's roles. A
  reader of de-identified data gets the de-identified namespace by default and 403 for the
  original one; a read of the original namespace is written to the audit trail.
- CSRF: a request authenticated by the UI session cookie that changes something (not GET,
  HEAD, OPTIONS) must come from a page of this origin (Origin, else Referer), on top of the
  cookie's SameSite=Strict.
- `audit_http`: the one helper that writes HTTP audit events.
"""

import logging
import urllib.parse
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Query, Request

from dicomflow.api.authn import Authenticator, Forbidden, NotAuthenticated
from dicomflow.api.deps import AppState
from dicomflow.api.exceptions import ApiError
from dicomflow.api.principals import Principal, Role
from dicomflow.kernel.audit import AuditAction, AuditEvent, AuditOutcome
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BackendUnavailable

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz"})  # the one API route open without credentials


class BadNamespace(ApiError, ValueError):
    """A ``namespace`` parameter that is neither original nor deidentified (HTTP 400)."""


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.dicomflow
    return state


def authenticator_of(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.dicomflow_auth
    return auth


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def audit_http(
    request: Request,
    action: AuditAction,
    *,
    principal: Principal | None = None,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    namespace: Namespace | None = None,
    study_uids: Iterable[str] = (),
    detail: str = "",
) -> None:
    """Write one audit event about this HTTP request (who, from where, which route, what).

    Raises BackendUnavailable when the trail cannot be written: the request is then refused
    (503) rather than served without a record.
    """
    study = request.path_params.get("study")
    studies = list(study_uids) or ([str(study)] if study else [])
    _state(request).audit.record(
        AuditEvent(
            action=action,
            outcome=outcome,
            user=principal.name if principal else "(unauthenticated)",
            roles=principal.role_names if principal else [],
            source=client_address(request),
            channel="http",
            target=f"{request.method} {request.url.path}"[:500],
            namespace=namespace.value if namespace else None,
            study_uids=studies,
            query=request.url.query[:2000] or None,
            detail=detail[:500],
        )
    )


def _audit_refusal(request: Request, principal: Principal | None, detail: str) -> None:
    outcome = AuditOutcome.MINOR_FAILURE
    try:
        audit_http(
            request, AuditAction.ACCESS_DENIED, principal=principal, outcome=outcome, detail=detail
        )
    except BackendUnavailable as exc:
        # The refusal stands either way; losing its record must not turn a 401 into a 503.
        log.warning("could not audit a refused request to %s: %s", request.url.path, exc)


def _same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this server (Origin, else Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    if not source or source == "null":
        return False
    return urllib.parse.urlsplit(source).netloc == request.headers.get("host", "")


def check_csrf(request: Request) -> None:
    """Raise Forbidden for a state-changing request that does not come from this origin."""
    if request.method not in SAFE_METHODS and not _same_origin(request):
        raise Forbidden(
            "cross-site request refused: a change through the UI must come from its own pages"
        )


def current_principal(request: Request) -> Principal:
    """The authenticated caller (once per request); raises NotAuthenticated or Forbidden."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    try:
        principal = authenticator_of(request).authenticate(request)
    except NotAuthenticated as exc:
        _audit_refusal(request, None, str(exc))
        raise
    if principal.via_session:
        try:
            check_csrf(request)
        except Forbidden as exc:
            _audit_refusal(request, principal, str(exc))
            raise
    request.state.principal = principal
    return principal


class RequireRole:
    """Dependency: an authenticated caller with `role` (or a role implying it)."""

    def __init__(self, role: Role | None) -> None:
        self.role = role  # None: any role at all (an OIDC user may be mapped to none)

    def __call__(self, request: Request) -> Principal:
        principal = current_principal(request)
        if not (principal.has(self.role) if self.role else principal.roles):
            needed = f"the {self.role} role" if self.role else "a dicomflow role"
            detail = f"this needs {needed}; {principal.name} has " + (
                ", ".join(principal.role_names) or "no role"
            )
            _audit_refusal(request, principal, detail)
            raise Forbidden(detail)
        return principal


def optional_principal(request: Request) -> Principal | None:
    """The caller if the request carries valid credentials, else None (no audit, no error)."""
    try:
        return authenticator_of(request).authenticate(request)
    except NotAuthenticated:
        return None


def parse_namespace(value: str | None) -> Namespace | None:
    """The namespace a parameter names (None for absent); raises BadNamespace."""
    if value is None or value == "":
        return None
    for namespace in (Namespace.ORIGINAL, Namespace.DEIDENTIFIED):
        if value == namespace.value:
            return namespace
    raise BadNamespace(f"namespace {value[:40]!r} is not original or deidentified")


def _action_of(request: Request) -> AuditAction:
    """What reading this route does to the data, for the audit trail."""
    route = getattr(request.scope.get("route"), "path", request.url.path)
    if route.startswith("/api/export/"):
        return AuditAction.EXPORT
    if route in ("/", "/api/search") or route.endswith(("/studies", "/series", "/instances")):
        return AuditAction.QUERY
    return AuditAction.RETRIEVE


def resolve_namespace(request: Request, fixed: Namespace | None = None) -> Namespace:
    """The namespace this request may read: THE decision point of namespace access.

    `fixed` is the namespace of the route (the DICOMweb roots); else the ``namespace``
    parameter, else the caller's default (de-identified unless they may read PHI).
    """
    principal = current_principal(request)
    asked = fixed or parse_namespace(request.query_params.get("namespace"))
    namespace = asked or principal.default_namespace
    if not principal.may_read(namespace):
        detail = (
            f"the {namespace} namespace needs the "
            f"{Role.PHI_READER if namespace is Namespace.ORIGINAL else Role.DEID_READER} role"
        )
        _audit_refusal(request, principal, detail)
        raise Forbidden(detail)
    if namespace is Namespace.ORIGINAL and not getattr(request.state, "audited", False):
        audit_http(request, _action_of(request), principal=principal, namespace=namespace)
        request.state.audited = True
    request.state.namespace = namespace
    return namespace


NAMESPACE_HELP = (
    "original or deidentified; default: original for callers with the phi-reader role, "
    "deidentified for the others (who may not read the original namespace)."
)


def read_namespace(
    request: Request,
    namespace: Annotated[str | None, Query(description=NAMESPACE_HELP)] = None,
) -> Namespace:
    """Dependency: the namespace of a route with a ``namespace`` parameter."""
    return resolve_namespace(request)


class ReadsNamespace:
    """Dependency of the routes of one fixed namespace (the two DICOMweb roots)."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace

    def __call__(self, request: Request) -> Namespace:
        return resolve_namespace(request, self.namespace)


PrincipalDep = Annotated[Principal, Depends(current_principal)]
ViewNamespace = Annotated[Namespace, Depends(read_namespace)]
reader = Depends(RequireRole(Role.DEID_READER))
uploader = Depends(RequireRole(Role.UPLOADER))
admin = Depends(RequireRole(Role.ADMIN))
any_role = Depends(RequireRole(None))
AdminDep = Annotated[Principal, Depends(RequireRole(Role.ADMIN))]


def audit_change(request: Request, principal: Principal, detail: str) -> None:
    """Record an administrative change (tokens, destinations, reindex, dead-letter retry)."""
    audit_http(request, AuditAction.ADMIN_CHANGE, principal=principal, detail=detail)
