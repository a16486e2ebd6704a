"""Authentication and authorization of the HTTP API (docs/security.md): every route but health
needs credentials (walked from the OpenAPI schema), roles give 403, API tokens are created,
listed and revoked, and a reader of de-identified data never receives an original patient name
or ID from any route or page."""

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomflow.api.app import create_app
from dicomflow.api.authn import AuthConfigError
from dicomflow.api.principals import Role
from dicomflow.api.routes import ui
from dicomflow.api.tokens import TokenRegistry
from dicomflow.kernel.audit import AuditAction
from dicomflow.kernel.backends import open_blob_store
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, make_instance
from tests.conftest import ADMIN_HEADERS
from tests.ui.conftest import Archive, open_archive

ORIGINAL_NAME, ORIGINAL_ID = "SECRETNAME^PATIENT", "PHI-ID-424242"
OPEN_PATHS = {"/healthz"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    """The web UI tests' archive (it also writes de-identified copies and the events)."""
    with open_archive(settings) as opened:
        yield opened


@dataclass
class Stored:
    original: Dataset
    deidentified: Dataset


@pytest.fixture
def stored(archive: Archive) -> Stored:
    """One object with a known patient, and its de-identified copy (pseudonymous everything)."""
    original = make_instance(PatientSpec(name=ORIGINAL_NAME, patient_id=ORIGINAL_ID), 0, 0, 0)
    deidentified = copy.deepcopy(original)
    deidentified.remove_private_tags()  # as the Basic Profile does (one holds the name)
    deidentified.PatientName, deidentified.PatientID = "ANON^7F3A", "7F3A0001"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(deidentified, keyword, generate_uid(prefix="2.25."))
    deidentified.file_meta.MediaStorageSOPInstanceUID = deidentified.SOPInstanceUID
    archive.add([original])
    archive.add([deidentified], namespace=Namespace.DEIDENTIFIED)
    return Stored(original, deidentified)


@pytest.fixture
def app(archive: Archive) -> Iterator[FastAPI]:
    application = create_app(archive.settings)
    with TestClient(application):
        yield application


@pytest.fixture
def anonymous(app: FastAPI) -> TestClient:
    return TestClient(app)


def token_for(app: FastAPI, *roles: Role) -> str:
    token, _ = app.state.dicomflow_auth.tokens.create("-".join(roles) or "none", roles or ["admin"])
    return token


def schema_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with dummy path parameters) of every operation of the OpenAPI schema."""
    operations = []
    for path, items in app.openapi()["paths"].items():
        for method in items:
            operations.append((method.upper(), path))
    return operations


def filled(path: str, values: dict[str, str] | None = None) -> str:
    values = values or {}
    return re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), "1.2.3"), path)


def test_every_route_but_health_answers_401_without_credentials(
    app: FastAPI, anonymous: TestClient
) -> None:
    operations = schema_operations(app)
    assert len(operations) > 40  # the walk covers the whole API
    for method, path in operations:
        response = anonymous.request(method, filled(path))
        if path in OPEN_PATHS:
            assert response.status_code == 200, path
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer"), path
        assert response.json()["status"] == 401


@pytest.mark.parametrize(
    "headers",
    [
        bearer("dft_0123456789abcdef_" + "x" * 43),  # well-formed, unknown
        bearer("not-a-token"),
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Cookie": "dicomflow_session=" + "y" * 43},
    ],
)
def test_wrong_credentials_are_401_on_every_route(
    app: FastAPI, anonymous: TestClient, headers: dict[str, str]
) -> None:
    for method, path in schema_operations(app):
        if path not in OPEN_PATHS:
            response = anonymous.request(method, filled(path), headers=headers)
            assert response.status_code == 401, (method, path, headers)


def test_ui_pages_send_a_browser_to_the_login_page(app: FastAPI, anonymous: TestClient) -> None:
    ui_routes = [r for r in ui.router.routes if isinstance(r, APIRoute)]
    assert len(ui_routes) > 15
    for route in ui_routes:
        for method in route.methods:
            response = anonymous.request(method, filled(route.path), follow_redirects=False)
            if route.path == "/ui/login":
                assert response.status_code in (200, 401, 422), route.path
            elif method == "GET":
                assert response.status_code == 303, route.path
                assert response.headers["location"].startswith("/ui/login?next="), route.path
            else:
                assert response.status_code == 401, (method, route.path)
    fragment = anonymous.get("/ui/fragments/dashboard/live", headers={"HX-Request": "true"})
    assert fragment.status_code == 401 and fragment.headers["hx-redirect"].startswith("/ui/login")
    assert anonymous.get("/ui/static/dicomflow.css").status_code == 200


def test_token_lifecycle_create_list_use_revoke(app: FastAPI, anonymous: TestClient) -> None:
    created = anonymous.post(
        "/api/admin/tokens",
        json={"name": "research export", "roles": ["deid-reader"]},
        headers=ADMIN_HEADERS,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith("dft_") and len(token) > 60
    assert body["roles"] == ["deid-reader"]
    listed = anonymous.get("/api/admin/tokens", headers=ADMIN_HEADERS).json()["tokens"]
    assert [t["name"] for t in listed] == ["research export"]
    assert token not in str(listed) and "sha256" not in listed[0]
    # The store keeps only the hash.
    blobs = app.state.dicomflow.blobs
    stored = b"".join(blobs.get(Namespace.ORIGINAL, k) for k in blobs.keys(Namespace.ORIGINAL))
    assert token.encode() not in stored
    assert anonymous.get("/dicomweb/deidentified/studies", headers=bearer(token)).status_code == 200
    used = anonymous.get("/api/admin/tokens", headers=ADMIN_HEADERS).json()["tokens"][0]
    assert used["last_used_at"] is not None
    revoked = anonymous.delete(f"/api/admin/tokens/{body['id']}", headers=ADMIN_HEADERS)
    assert revoked.status_code == 204
    assert anonymous.get("/dicomweb/deidentified/studies", headers=bearer(token)).status_code == 401
    assert (
        anonymous.delete(f"/api/admin/tokens/{body['id']}", headers=ADMIN_HEADERS).status_code
        == 404
    )
    bad = anonymous.post(
        "/api/admin/tokens", json={"name": "x", "roles": ["root"]}, headers=ADMIN_HEADERS
    )
    assert bad.status_code == 422
    events = app.state.dicomflow.audit.search(action=AuditAction.ADMIN_CHANGE)
    assert any("revoked API token" in e.detail for e in events)
    assert any("created API token" in e.detail for e in events)
    assert not any(token in e.model_dump_json() for e in app.state.dicomflow.audit.search())


def test_a_token_created_through_one_api_process_is_accepted_by_another(
    archive: Archive,
) -> None:
    """Two API replicas on the same blob store (S3 in the scale-out deployment)."""
    first, second = create_app(archive.settings), create_app(archive.settings)
    with TestClient(first) as one, TestClient(second) as two:
        token = one.post(
            "/api/admin/tokens", json={"name": "shared", "roles": ["admin"]}, headers=ADMIN_HEADERS
        ).json()["token"]
        assert two.get("/api/admin/tokens", headers=bearer(token)).status_code == 200


def test_roles_matrix(app: FastAPI, anonymous: TestClient, stored: Stored) -> None:
    study = stored.original.StudyInstanceUID
    deid = token_for(app, Role.DEID_READER)
    phi = token_for(app, Role.PHI_READER)
    uploader = token_for(app, Role.UPLOADER)

    def status(method: str, path: str, token: str) -> int:
        return anonymous.request(method, path, headers=bearer(token)).status_code

    original_reads = [
        "/dicomweb/studies",
        f"/dicomweb/studies/{study}/series",
        f"/dicomweb/studies/{study}/metadata",
        "/api/search?namespace=original",
        f"/api/download/studies/{study}.zip?namespace=original",
        "/api/export/search.csv?namespace=original",
    ]
    for path in original_reads:
        assert status("GET", path, deid) == 403, path
        assert status("GET", path, phi) == 200, path
        assert status("GET", path, uploader) == 403, path
    for path in ("/dicomweb/deidentified/studies", "/api/search", "/api/export/search.json"):
        assert status("GET", path, deid) == 200, path
        assert status("GET", path, uploader) == 403, path
    for path in (
        "/api/admin/tokens",
        "/api/admin/destinations",
        "/api/admin/audit",
        "/api/deadletters",
        "/api/admin/reindex",
    ):
        for token in (deid, phi, uploader):
            assert status("GET", path, token) == 403, path
    assert status("POST", "/api/admin/reindex", phi) == 403
    assert status("POST", "/dicomweb/studies", deid) == 403
    assert status("POST", "/dicomweb/studies", phi) == 403
    # An uploader's STOW passes authorization (and fails on its empty body).
    assert status("POST", "/dicomweb/studies", uploader) == 415
    for token in (deid, phi, uploader):
        assert status("GET", "/api/status", token) == 200
        assert status("GET", "/metrics", token) == 200
    denied = app.state.dicomflow.audit.search(action=AuditAction.ACCESS_DENIED)
    assert any(e.user == "deid-reader" and e.target == "GET /dicomweb/studies" for e in denied)


def test_phi_reads_are_audited_with_user_route_and_study(
    app: FastAPI, anonymous: TestClient, stored: Stored
) -> None:
    study = stored.original.StudyInstanceUID
    phi = token_for(app, Role.PHI_READER)
    anonymous.get(f"/dicomweb/studies/{study}/metadata", headers=bearer(phi))
    anonymous.get("/api/search", params={"q": "PatientID:PHI*"}, headers=bearer(phi))
    anonymous.get("/dicomweb/deidentified/studies", headers=bearer(phi))
    anonymous.get("/api/export/search.csv", params={"q": "Modality:CT"}, headers=bearer(phi))
    ui_page = anonymous.get(f"/ui/studies/{study}", headers=bearer(phi))
    assert ui_page.status_code == 200 and "SECRETNAME" in ui_page.text
    events = app.state.dicomflow.audit.search(user="phi-reader")
    export = [e for e in events if e.action == AuditAction.EXPORT]
    assert export and export[0].target == "GET /api/export/search.csv"
    assert any(e.target == f"GET /ui/studies/{study}" for e in events)
    retrieve = [e for e in events if e.action == AuditAction.RETRIEVE]
    assert retrieve and retrieve[0].study_uids == [study] and retrieve[0].namespace == "original"
    assert retrieve[0].source == "testclient"
    query = [e for e in events if e.action == AuditAction.QUERY]
    assert query and "PatientID" in (query[0].query or "")
    assert all(e.namespace == "original" for e in events)  # de-identified reads: not audited


def test_deid_reader_never_receives_an_original_name_or_id(
    app: FastAPI, anonymous: TestClient, stored: Stored
) -> None:
    deid = bearer(token_for(app, Role.DEID_READER))
    original, copy_ = stored.original, stored.deidentified
    values = {}
    for ds in (original, copy_):
        values.update(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID)
    uid_sets = [
        {
            "study": ds.StudyInstanceUID,
            "series": ds.SeriesInstanceUID,
            "instance": ds.SOPInstanceUID,
            "frames": "1",
            "tag": "7FE00010",
            "offset": "0",
            "ae_title": "X",
            "token_id": "0123456789abcdef",
        }
        for ds in (original, copy_)
    ]
    checked = 0
    forbidden_values = (ORIGINAL_NAME.encode(), ORIGINAL_ID.encode(), b"SECRETNAME")
    routes = [("GET", path) for method, path in schema_operations(app) if method == "GET"]
    routes += [("GET", r.path) for r in ui.router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 50
    for method, path in routes:
        for uids in uid_sets:
            for params in (
                {},
                {"namespace": "original"},
                {"namespace": "deidentified"},
                {"q": "PatientName:SECRET*"},
            ):
                response = anonymous.request(
                    method, filled(path, uids), params=params, headers=deid
                )
                checked += 1
                body = response.content + str(response.headers).encode()
                for value in forbidden_values:
                    assert value not in body, (path, params, response.status_code)
    assert checked > 400
    page = anonymous.get("/", headers=deid)
    assert page.status_code == 200 and "ANON^7F3A" in page.text.replace(", ", "^")
    assert 'id="ns-switch"' not in page.text and "/ui/admin" not in page.text


def test_auth_off_is_refused_outside_dev_mode(settings: Settings) -> None:
    with pytest.raises(AuthConfigError, match="DICOMFLOW_DEV_MODE"):
        create_app(settings.model_copy(update={"http_auth": False, "dev_mode": False}))


def test_auth_off_in_dev_mode_opens_everything_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    dev = settings.model_copy(
        update={"http_auth": False, "dev_mode": True, "admin_token": SecretStr("")}
    )
    with TestClient(create_app(dev)) as client:
        assert client.get("/dicomweb/studies").status_code == 200
        assert client.get("/api/admin/tokens").status_code == 200
    assert "HTTP AUTHENTICATION IS OFF" in caplog.text


def test_secrets_are_not_in_logs_or_errors(
    app: FastAPI, anonymous: TestClient, caplog: pytest.LogCaptureFixture, settings: Settings
) -> None:
    token = token_for(app, Role.ADMIN)
    anonymous.get("/api/status", headers=bearer(token + "x"))
    anonymous.get("/api/status", headers=bearer(token))
    wrong = anonymous.get("/api/status", headers=bearer(token[:-1] + "Z"))
    assert token[:-1] not in wrong.text
    assert token not in caplog.text and settings.admin_token.get_secret_value() not in caplog.text
    assert settings.admin_token.get_secret_value() not in repr(settings)
    registry = TokenRegistry(open_blob_store(settings))
    assert registry.verify(token) is not None and registry.verify(token + "x") is None


@pytest.mark.parametrize("token", ["change-me", "short-token", "x" * 10 + "change-me" + "y" * 20])
def test_a_weak_admin_token_is_refused_outside_dev_mode(settings: Settings, token: str) -> None:
    weak = settings.model_copy(update={"admin_token": SecretStr(token), "dev_mode": False})
    with pytest.raises(AuthConfigError, match="DICOMFLOW_ADMIN_TOKEN"):
        create_app(weak)


def test_the_openapi_schema_declares_the_bearer_scheme(app: FastAPI) -> None:
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert schema["paths"]["/dicomweb/studies"]["get"]["security"] == [{"bearer": []}]


def test_a_token_revoked_through_another_replica_is_not_brought_back(settings: Settings) -> None:
    """Replica A still caches the record when B revokes it; A's last-use write must not
    recreate it (found by the scale-out test)."""
    blobs = open_blob_store(settings)
    try:
        first, second = TokenRegistry(blobs), TokenRegistry(blobs)
        token, record = first.create("replicated", [Role.UPLOADER])
        assert second.verify(token) is not None
        assert second.revoke(record.id)
        assert first.verify(token) is None
        assert second.get(record.id) is None and first.list() == []
    finally:
        blobs.close()
