"""GET /api/admin/audit: the recorded trail, newest first, with its filters."""

from fastapi.testclient import TestClient

from dicomflow.api.deps import AppState
from dicomflow.kernel.audit import AuditAction, AuditEvent


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
