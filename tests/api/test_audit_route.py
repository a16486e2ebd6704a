"""GET /api/admin/audit: the recorded trail, newest first, with its filters."""

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from dicomflow.api.deps import AppState
from dicomflow.kernel.audit import AuditAction, AuditEvent
from dicomflow.kernel.exceptions import BackendUnavailable
from tests.api.conftest import Archive


def _record(client: TestClient, user: str, action: AuditAction, study: str) -> None:
    state: AppState = client.app.state.dicomflow  # type: ignore[attr-defined]
    state.audit.record(
        AuditEvent(
            action=action,
            user=user,
            source="10.0.0.7",
            channel="dimse",
            target="C-FIND",
            study_uids=[study],
        )
    )


def test_the_audit_trail_is_queryable_by_user_action_and_study(client: TestClient) -> None:
    _record(client, "alice", AuditAction.QUERY, "1.2.1")
    _record(client, "bob", AuditAction.RETRIEVE, "1.2.2")
    _record(client, "alice", AuditAction.EXPORT, "1.2.3")
    everything = client.get("/api/admin/audit").json()
    assert everything["count"] == 3
    assert [e["user"] for e in everything["events"]] == ["alice", "bob", "alice"]
    assert everything["events"][0]["action"] == "export"
    by_alice = client.get("/api/admin/audit", params={"user": "alice"}).json()
    assert [e["study_uids"] for e in by_alice["events"]] == [["1.2.3"], ["1.2.1"]]
    assert client.get("/api/admin/audit", params={"action": "retrieve"}).json()["count"] == 1
    assert client.get("/api/admin/audit", params={"study": "1.2.2"}).json()["count"] == 1
    assert client.get("/api/admin/audit", params={"since": "2999-01-01T00:00:00"}).json() == {
        "events": [],
        "count": 0,
    }


def test_bad_audit_filters_are_rejected_with_a_reason(client: TestClient) -> None:
    response = client.get("/api/admin/audit", params={"action": "delete-everything"})
    assert response.status_code in (400, 422)
    assert "action" in response.text
    assert client.get("/api/admin/audit", params={"limit": 0}).status_code in (400, 422)


def test_identified_data_is_not_served_without_an_audit_record(
    client: TestClient, archive: Archive, ct_instance: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.add([ct_instance])
    assert "0020000D" in client.get("/dicomweb/studies").text
    state: AppState = client.app.state.dicomflow  # type: ignore[attr-defined]

    def unwritable(event: AuditEvent) -> None:
        raise BackendUnavailable("the audit topic cannot be written")

    monkeypatch.setattr(state.audit, "record", unwritable)
    refused = client.get("/dicomweb/studies")
    assert refused.status_code == 503
    assert "audit" in refused.text and "0020000D" not in refused.text
    # The de-identified namespace is not audited: it stays readable.
    assert client.get("/dicomweb/deidentified/studies").status_code == 200
