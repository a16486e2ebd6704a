"""The web UI's pages and htmx fragments (docs/ui.md).

Pages: ``/`` (search), ``/ui/studies/{study}``, ``/ui/viewer/{study}/{series}``,
``/ui/tags/{study}/{series}/{instance}``, ``/ui/dashboard``, ``/ui/admin``, ``/ui/login``. Every
page takes ``namespace`` (``original`` or ``deidentified``; api.auth decides which the user may
see and the default) and carries it in its links. Pages need a login (docs/security.md): the
login page turns a token into a session cookie; the admin pages need the admin role.
Fragments (``/ui/fragments/...``) are the parts that htmx refreshes or replaces; each also
works as a plain link or form target, so that the pages stay usable without JavaScript.
"""

import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dicomflow import __version__
from dicomflow.api import deadletters
from dicomflow.api.auth import (
    SAFE_METHODS,
    AdminDep,
    PrincipalDep,
    ViewNamespace,
    admin,
    any_role,
    audit_change,
    audit_http,
    authenticator_of,
    check_csrf,
    optional_principal,
    parse_namespace,
    reader,
)
from dicomflow.api.authn import SESSION_COOKIE, Forbidden, NotAuthenticated
from dicomflow.api.deps import BusDep, IndexDep, SettingsDep
from dicomflow.api.destinations import Destination, DestinationRegistry, DestinationSource
from dicomflow.api.exceptions import DestinationConflict, InvalidDestination
from dicomflow.api.principals import Principal, Role
from dicomflow.api.reindex import ReindexRunning
from dicomflow.api.routes.dicomweb import with_bulk_data_uris
from dicomflow.api.services import Services, ServicesDep, services_lifespan
from dicomflow.api.tokens import InvalidTokenRequest
from dicomflow.api.ui import STATIC_DIR, TEMPLATES_DIR, browse, charts, searching
from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.tags import tag_rows
from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.kernel.audit import AuditAction, AuditOutcome
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BackendUnavailable
from dicomflow.kernel.uids import is_valid_uid

router = APIRouter(tags=["web UI"], include_in_schema=False, lifespan=services_lifespan)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals.update(version=__version__, fmt=fmt)
templates.env.filters.update(
    number=fmt.number, size=fmt.size, quote=lambda value: urllib.parse.quote(str(value), safe="")
)

STATIC_PATH = "/ui/static"


def static_files() -> StaticFiles:
    """The UI's static files (CSS, JavaScript, vendored htmx), to mount at STATIC_PATH."""
    return StaticFiles(directory=str(STATIC_DIR))


class Links:
    """URLs of the UI for one namespace: every link keeps the namespace being viewed."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.dicomweb = fmt.dicomweb_root(namespace)

    def __call__(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = {k: str(v) for k, v in (params or {}).items() if v not in (None, "")}
        if self.namespace is not Namespace.ORIGINAL:
            query["namespace"] = self.namespace.value
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    def study(self, study: str) -> str:
        return self(f"/ui/studies/{study}")

    def viewer(self, study: str, series: str, instance: str = "") -> str:
        return self(f"/ui/viewer/{study}/{series}", {"instance": instance})

    def tags(self, study: str, series: str, instance: str) -> str:
        return self(f"/ui/tags/{study}/{series}/{instance}")

    def series_thumbnail(self, study: str, series: str) -> str:
        return f"{self.dicomweb}/studies/{study}/series/{series}/thumbnail?viewport=96,96"

    def download(self, study: str, series: str = "", instance: str = "") -> str:
        path = f"/api/download/studies/{study}"
        if series:
            path += f"/series/{series}"
        if instance:
            return self(f"{path}/instances/{instance}.dcm")
        return self(path + ".zip")


def _switch_targets(request: Request, keep_path: bool) -> dict[str, str]:
    """Where the namespace switch leads: this page in the other namespace, or the search.

    UIDs differ between the namespaces (the de-identified copies have pseudonymous ones), so
    a page about one study or instance switches to the search page.
    """
    targets: dict[str, str] = {}
    for namespace in fmt.VIEW_NAMESPACES:
        params = dict(request.query_params)
        params.pop("namespace", None)
        params.pop("page", None)
        if namespace is not Namespace.ORIGINAL:
            params["namespace"] = namespace.value
        path = request.url.path if keep_path else "/"
        if not keep_path:
            params = {k: v for k, v in params.items() if k == "namespace"}
        targets[namespace.value] = path + ("?" + urllib.parse.urlencode(params) if params else "")
    return targets


def render(
    request: Request,
    template: str,
    namespace: Namespace,
    *,
    status: int = 200,
    keep_path: bool = True,
    **context: Any,
) -> HTMLResponse:
    user: Principal | None = getattr(request.state, "principal", None)
    context.update(
        namespace=namespace,
        link=Links(namespace),
        switch=_switch_targets(request, keep_path),
        static=STATIC_PATH,
        user=user,
        # The namespace switch is for those who may read both namespaces.
        show_switch=user is not None and user.sees_phi,
        show_admin=user is not None and user.is_admin,
    )
    return templates.TemplateResponse(request, template, context, status_code=status)


def _namespace(request: Request) -> Namespace:
    """The namespace of the page: the one api.auth.resolve_namespace granted on the pages that
    show data; on the others (dashboard, admin) the one asked for if the user may read it,
    else the user's default (only the banner and links depend on it there)."""
    granted: Namespace | None = getattr(request.state, "namespace", None)
    if granted is not None:
        return granted
    user: Principal | None = getattr(request.state, "principal", None)
    default = user.default_namespace if user is not None else Namespace.DEIDENTIFIED
    try:
        asked = parse_namespace(request.query_params.get("namespace"))
    except ValueError:
        return default
    return asked if asked is not None and user is not None and user.may_read(asked) else default


def _error(
    request: Request, namespace: Namespace, status: int, title: str, detail: str
) -> HTMLResponse:
    return render(
        request, "error.html", namespace, status=status, title=title, detail=detail, keep_path=False
    )


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# --- search ---------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse, dependencies=[reader])
def search_page(request: Request, index: IndexDep, namespace: ViewNamespace) -> HTMLResponse:
    form = searching.SearchForm.from_params(request.query_params, namespace)
    error = ""
    page: searching.SearchPage | None = None
    status = 200
    try:
        page = searching.search_page(index, form)
    except InvalidQuery as exc:
        error, status = str(exc), 400
    fragment = request.headers.get("hx-target") == "results"
    return render(
        request,
        "_results.html" if fragment else "search.html",
        form.namespace,
        status=status,
        fragment=fragment,
        form=form,
        result=page,
        error=error,
        sorts=searching.SORTS,
        page_sizes=searching.PAGE_SIZES,
        modalities=searching.MODALITIES,
        query_string=urllib.parse.urlencode(form.params(page=1)),
        nav="search",
    )


# --- study, series, viewer, tags ------------------------------------------------------------


@router.get("/ui/studies/{study}", response_class=HTMLResponse, dependencies=[reader])
def study_page(
    study: str, request: Request, index: IndexDep, namespace: ViewNamespace
) -> HTMLResponse:
    if not is_valid_uid(study):
        return _error(request, namespace, 400, "Invalid UID", f"{study[:80]!r} is not a UID")
    detail = browse.study_detail(index, namespace, study)
    if detail is None:
        return _error(
            request,
            namespace,
            404,
            "Study not found",
            f"The {namespace} namespace has no study {study}.",
        )
    selected = request.query_params.get("series") or (detail.series[0].uid if detail.series else "")
    total, instances = browse.instances(index, namespace, study, selected) if selected else (0, [])
    chosen = [row for row in detail.series if row.uid == selected]
    label = f"{chosen[0].modality} series {chosen[0].number}" if chosen else ""
    return render(
        request,
        "study.html",
        namespace,
        keep_path=False,
        study=detail,
        study_uid=study,
        selected=selected,
        series_label=label,
        instances=instances,
        instances_total=total,
        offset=0,
        limit=browse.INSTANCES_PER_PAGE,
        nav="search",
    )


@router.get(
    "/ui/studies/{study}/series/{series}/instances",
    response_class=HTMLResponse,
    dependencies=[reader],
)
def instances_fragment(
    study: str,
    series: str,
    request: Request,
    index: IndexDep,
    namespace: ViewNamespace,
    offset: int = 0,
) -> Response:
    if not (is_valid_uid(study) and is_valid_uid(series)):
        return _error(request, namespace, 400, "Invalid UID", "study or series UID is not a UID")
    offset = max(0, min(offset, 10**7))
    total, instances = browse.instances(index, namespace, study, series, offset)
    info = browse.series_info(index, namespace, study, series)
    context: dict[str, Any] = {
        "study_uid": study,
        "selected": series,
        "series_label": f"{info.series.modality} series {info.series.number}" if info else "",
        "instances": instances,
        "instances_total": total,
        "offset": offset,
        "limit": browse.INSTANCES_PER_PAGE,
    }
    if _is_htmx(request):
        return render(request, "_instances.html", namespace, **context)
    params = {"series": series} | (
        {"namespace": namespace.value} if namespace.value != "original" else {}
    )
    return RedirectResponse(
        f"/ui/studies/{study}?{urllib.parse.urlencode(params)}#instances", status_code=303
    )


@router.get("/ui/viewer/{study}/{series}", response_class=HTMLResponse, dependencies=[reader])
def viewer_page(
    study: str, series: str, request: Request, index: IndexDep, namespace: ViewNamespace
) -> HTMLResponse:
    if not (is_valid_uid(study) and is_valid_uid(series)):
        return _error(request, namespace, 400, "Invalid UID", "study or series UID is not a UID")
    info = browse.series_info(index, namespace, study, series)
    if info is None:
        return _error(
            request, namespace, 404, "Series not found", f"No series {series} in study {study}."
        )
    total, instances = browse.instances(
        index, namespace, study, series, 0, browse.MAX_VIEWER_INSTANCES
    )
    start = request.query_params.get("instance", "")
    links = Links(namespace)
    base = f"{links.dicomweb}/studies/{study}/series/{series}/instances"
    frames = [
        {
            "instance": row.uid,
            "number": row.number,
            "frame": frame,
            "frames": row.frames,
            "url": f"{base}/{row.uid}/frames/{frame}/rendered",
            "viewport": row.viewport(),
            "window": row.window,
            "tags": links.tags(study, series, row.uid),
            "download": links.download(study, series, row.uid),
        }
        for row in instances
        for frame in range(1, row.frames + 1)
    ]
    truncated = total > len(instances) or len(frames) > browse.MAX_VIEWER_FRAMES
    frames = frames[: browse.MAX_VIEWER_FRAMES]
    first = next((i for i, f in enumerate(frames) if f["instance"] == start), 0)
    return render(
        request,
        "viewer.html",
        namespace,
        keep_path=False,
        info=info,
        frames=frames,
        first=first,
        instances_total=total,
        truncated=truncated,
        nav="search",
    )


@router.get(
    "/ui/tags/{study}/{series}/{instance}", response_class=HTMLResponse, dependencies=[reader]
)
def tags_page(
    study: str,
    series: str,
    instance: str,
    request: Request,
    index: IndexDep,
    namespace: ViewNamespace,
) -> HTMLResponse:
    if not all(is_valid_uid(uid) for uid in (study, series, instance)):
        return _error(request, namespace, 400, "Invalid UID", "a UID of the path is not a UID")
    record = index.get_instance(namespace, instance)
    if record is None or record.study_uid != study or record.series_uid != series:
        return _error(
            request,
            namespace,
            404,
            "Instance not found",
            f"No instance {instance} in series {series} of the {namespace} namespace.",
        )
    links = Links(namespace)
    url = f"{links.dicomweb}/studies/{study}/series/{series}/instances/{instance}"
    dicom_json = with_bulk_data_uris(record.dicom_json, url)
    return render(
        request,
        "tags.html",
        namespace,
        keep_path=False,
        record=record,
        rows=list(tag_rows(dicom_json)),
        metadata_url=url + "/metadata",
        nav="search",
    )


# --- dashboard ------------------------------------------------------------------------------


@router.get("/ui/dashboard", response_class=HTMLResponse, dependencies=[any_role])
def dashboard_page(request: Request, services: ServicesDep) -> HTMLResponse:
    services.dashboard.follower.start()
    return render(request, "dashboard.html", _namespace(request), nav="dashboard")


def _processor_rows(services: Services, bus: BusDep) -> list[dict[str, Any]]:
    rows = []
    for processor in services.processors():
        lag = bus.group_lag(processor.group, list(processor.topics))
        state = (
            services.dashboard.lags.state(processor.name, lag) if processor.enabled else "disabled"
        )
        rows.append({"processor": processor, "lag": lag, "state": state})
    return rows


@router.get("/ui/fragments/dashboard/live", response_class=HTMLResponse, dependencies=[any_role])
def dashboard_live(
    request: Request, services: ServicesDep, bus: BusDep, index: IndexDep
) -> HTMLResponse:
    follower = services.dashboard.follower
    follower.start()
    namespace = _namespace(request)
    try:
        sizes = bus.topic_sizes()
        processors = _processor_rows(services, bus)
    except BackendUnavailable as exc:
        return render(request, "_unavailable.html", namespace, status=503, detail=str(exc))
    live = follower.figures(sizes)
    counts = {ns.value: index.counts(ns) for ns in fmt.VIEW_NAMESPACES}
    return render(
        request,
        "_dashboard_live.html",
        namespace,
        live=live,
        counts=counts,
        processors=processors,
        dead_letters=deadletters.count(bus),
        rate_chart=charts.line("Objects received per 10 s", live.history, unit="objects"),
    )


@router.get("/ui/fragments/dashboard/charts", response_class=HTMLResponse, dependencies=[any_role])
def dashboard_charts(request: Request, services: ServicesDep, index: IndexDep) -> HTMLResponse:
    namespace = _namespace(request)
    figures = services.dashboard.index_figures.get(index, namespace)
    live = services.dashboard.follower.figures({})
    return render(
        request,
        "_dashboard_charts.html",
        namespace,
        figures=figures,
        senders=charts.bars("Top sending AE titles", live.senders),
    )


@router.get("/ui/fragments/deadletters", response_class=HTMLResponse, dependencies=[admin])
def dead_letters_fragment(request: Request, bus: BusDep, before: int | None = None) -> HTMLResponse:
    letters = deadletters.latest(bus, 50, before)
    return render(
        request,
        "_deadletters.html",
        _namespace(request),
        letters=letters,
        total=deadletters.count(bus),
        message="",
    )


@router.post("/ui/fragments/deadletters/{offset}/retry", response_class=HTMLResponse)
def retry_dead_letter(offset: int, request: Request, bus: BusDep, user: AdminDep) -> Response:
    try:
        letter = deadletters.retry(bus, offset)
        message = f"Dead letter {offset} re-published to {letter.topic}."
        audit_change(request, user, f"retried dead letter {offset} to {letter.topic}")
        status = 200
    except (deadletters.DeadLetterNotFound, deadletters.DeadLetterNotRetryable) as exc:
        message, status = str(exc), 409
    if not _is_htmx(request):
        return RedirectResponse("/ui/dashboard#deadletters", status_code=303)
    return render(
        request,
        "_deadletters.html",
        _namespace(request),
        status=status,
        letters=deadletters.latest(bus, 50),
        total=deadletters.count(bus),
        message=message,
    )


# --- admin ----------------------------------------------------------------------------------


@router.get("/ui/admin", response_class=HTMLResponse, dependencies=[admin])
def admin_page(request: Request, services: ServicesDep, settings: SettingsDep) -> HTMLResponse:
    return _admin(request, services, settings)


def _admin(
    request: Request, services: Services, settings: SettingsDep, **tokens: str
) -> HTMLResponse:
    """The admin page; `tokens` tells the API tokens section what just happened."""
    return render(
        request,
        "admin.html",
        _namespace(request),
        nav="admin",
        **_destinations_context(settings),
        **_tokens_context(request, **tokens),
        progress=services.reindexer.progress,
        namespaces=fmt.VIEW_NAMESPACES,
    )


def _destinations_context(
    settings: SettingsDep, message: str = "", error: str = ""
) -> dict[str, Any]:
    try:
        entries = DestinationRegistry(settings).entries()
    except InvalidDestination as exc:
        entries, error = [], f"The destination configuration is invalid: {exc}"
    return {
        "destinations": entries,
        "file_source": DestinationSource.FILE,
        "message": message,
        "error": error,
    }


@router.post("/ui/fragments/destinations", response_class=HTMLResponse)
def add_destination(
    request: Request,
    settings: SettingsDep,
    user: AdminDep,
    ae_title: Annotated[str, Form()],
    host: Annotated[str, Form()],
    port: Annotated[str, Form()],
) -> Response:
    message = error = ""
    try:
        destination = Destination(ae_title=ae_title, host=host, port=int(port))
        DestinationRegistry(settings).add(destination)
        message = f"Added {destination.ae_title} ({destination.host}:{destination.port})."
        audit_change(
            request,
            user,
            f"added destination {destination.ae_title}@{destination.host}:{destination.port}",
        )
    except ValueError as exc:  # pydantic's ValidationError and int() are ValueErrors
        error = _validation_message(exc)
    except (DestinationConflict, InvalidDestination) as exc:
        error = str(exc)
    if not _is_htmx(request):
        return RedirectResponse("/ui/admin#destinations", status_code=303)
    return render(
        request,
        "_destinations.html",
        _namespace(request),
        status=422 if error else 200,
        **_destinations_context(settings, message, error),
    )


def _validation_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors()
        )
    return f"port: {exc}" if "int()" in str(exc) else str(exc)


@router.post("/ui/fragments/destinations/{ae_title}/delete", response_class=HTMLResponse)
def remove_destination(
    ae_title: str, request: Request, settings: SettingsDep, user: AdminDep
) -> Response:
    message = error = ""
    try:
        if DestinationRegistry(settings).remove(ae_title):
            message = f"Removed {ae_title}."
            audit_change(request, user, f"removed destination {ae_title}")
        else:
            error = f"No destination {ae_title}."
    except (DestinationConflict, InvalidDestination) as exc:
        error = str(exc)
    if not _is_htmx(request):
        return RedirectResponse("/ui/admin#destinations", status_code=303)
    return render(
        request,
        "_destinations.html",
        _namespace(request),
        **_destinations_context(settings, message, error),
    )


@router.get("/ui/fragments/processors", response_class=HTMLResponse, dependencies=[admin])
def processors_fragment(request: Request, services: ServicesDep, bus: BusDep) -> HTMLResponse:
    try:
        rows = _processor_rows(services, bus)
    except BackendUnavailable as exc:
        return render(
            request, "_unavailable.html", _namespace(request), status=503, detail=str(exc)
        )
    return render(request, "_processors.html", _namespace(request), processors=rows)


@router.get("/ui/fragments/reindex", response_class=HTMLResponse, dependencies=[admin])
def reindex_fragment(request: Request, services: ServicesDep) -> HTMLResponse:
    return render(
        request,
        "_reindex.html",
        _namespace(request),
        progress=services.reindexer.progress,
        namespaces=fmt.VIEW_NAMESPACES,
        error="",
    )


@router.post("/ui/fragments/reindex", response_class=HTMLResponse)
def start_reindex(
    request: Request,
    services: ServicesDep,
    user: AdminDep,
    target: Annotated[str, Form()] = "original",
) -> Response:
    error = ""
    try:
        services.reindexer.start(fmt.view_namespace(target))
        audit_change(request, user, f"started a reindex of the {target} namespace")
    except (ValueError, ReindexRunning) as exc:
        error = str(exc)
    if not _is_htmx(request):
        return RedirectResponse("/ui/admin#reindex", status_code=303)
    return render(
        request,
        "_reindex.html",
        _namespace(request),
        status=409 if error else 200,
        progress=services.reindexer.progress,
        namespaces=fmt.VIEW_NAMESPACES,
        error=error,
    )


# --- API tokens -----------------------------------------------------------------------------


def _tokens_context(
    request: Request, message: str = "", error: str = "", created: str = "", created_name: str = ""
) -> dict[str, Any]:
    auth = authenticator_of(request)
    return {
        "tokens": auth.tokens.list(),
        "roles": list(Role),
        "env_admin": request.app.state.dicomflow.settings.admin_token.get_secret_value() != "",
        "token_message": message,
        "token_error": error,
        "created": created,
        "created_name": created_name,
    }


def _tokens_fragment(request: Request, status: int = 200, **context: str) -> Response:
    if not _is_htmx(request):
        return RedirectResponse("/ui/admin#tokens", status_code=303)
    return render(
        request,
        "_tokens.html",
        _namespace(request),
        status=status,
        **_tokens_context(request, **context),
    )


@router.post("/ui/fragments/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    user: AdminDep,
    services: ServicesDep,
    settings: SettingsDep,
    name: Annotated[str, Form(max_length=200)],
    role: Annotated[str, Form(max_length=40)],
) -> Response:
    try:
        token, record = authenticator_of(request).tokens.create(name, [role])
    except InvalidTokenRequest as exc:
        return _tokens_fragment(request, 422, error=str(exc))
    audit_change(request, user, f"created API token {record.id} ({record.name}): roles {role}")
    if not _is_htmx(request):  # without JavaScript: the admin page, with the token shown once
        return _admin(request, services, settings, created=token, created_name=record.name)
    return _tokens_fragment(request, created=token, created_name=record.name)


@router.post("/ui/fragments/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(token_id: str, request: Request, user: AdminDep) -> Response:
    if not authenticator_of(request).tokens.revoke(token_id):
        return _tokens_fragment(request, 404, error=f"No token {token_id[:20]}.")
    audit_change(request, user, f"revoked API token {token_id}")
    return _tokens_fragment(request, message=f"Revoked token {token_id}.")


# --- login, logout, authentication errors ---------------------------------------------------

LOGIN_PATH = "/ui/login"


def _local_path(target: str) -> str:
    """`target` if it is a path of this site (no scheme, host or //), else /."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:2000]


def _login_page(
    request: Request, status: int = 200, error: str = "", next_path: str = "/"
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"static": STATIC_PATH, "error": error, "next": _local_path(next_path)},
        status_code=status,
    )


def auth_error_page(request: Request, status: int, detail: str) -> Response | None:
    """The UI's answer to 401 (to the login page), 403 and 400 (an error page)."""
    if status == 401:
        target = LOGIN_PATH + "?" + urllib.parse.urlencode({"next": request.url.path})
        if _is_htmx(request):  # a fragment's poll after the session ended: reload to log in
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.method not in SAFE_METHODS:
            return None
        return RedirectResponse(target, status_code=303)
    title = "Not allowed" if status == 403 else "Unknown namespace"
    return _error(request, _namespace(request), status, title, detail)


@router.get(LOGIN_PATH, response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if request.cookies.get(SESSION_COOKIE) and optional_principal(request) is not None:
        return RedirectResponse(_local_path(next), status_code=303)
    return _login_page(request, next_path=next)


@router.post(LOGIN_PATH, response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=10_000)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check the pasted token and open a session: an HttpOnly, SameSite=Strict cookie."""
    if request.headers.get("origin") or request.headers.get("referer"):
        check_csrf(request)  # a login form posted from another site (login CSRF)
    auth = authenticator_of(request)
    try:
        principal = auth.from_token(token.strip())
    except NotAuthenticated as exc:
        audit_http(
            request,
            AuditAction.LOGIN,
            outcome=AuditOutcome.MINOR_FAILURE,
            detail=f"UI login refused: {exc}",
        )
        return _login_page(request, 401, "This token is not valid.", next)
    if not principal.roles:
        audit_http(
            request,
            AuditAction.LOGIN,
            principal=principal,
            outcome=AuditOutcome.MINOR_FAILURE,
            detail="UI login refused: no dicomflow role",
        )
        return _login_page(request, 403, "This token has no dicomflow role.", next)
    session_id, expires = auth.open_session(principal)
    audit_http(request, AuditAction.LOGIN, principal=principal, detail="UI login")
    response = RedirectResponse(_local_path(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        expires=expires,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout")
def logout(request: Request, user: PrincipalDep) -> Response:
    """End the session (the cookie and its record)."""
    if not user.via_session:
        raise Forbidden("logout ends a UI session; this request has none")
    session_id = request.cookies.get(SESSION_COOKIE, "")
    authenticator_of(request).sessions.delete(session_id)
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
