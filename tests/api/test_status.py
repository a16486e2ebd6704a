"""The pipeline status route: what a monitor polls, so it must stay cheap."""

import pytest
from fastapi.testclient import TestClient

from dicomflow.api import services
from dicomflow.api.app import create_app
from tests.api.conftest import Archive
from tests.conftest import ADMIN_HEADERS


def test_the_status_loads_the_plugins_once_however_often_it_is_polled(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = services.plugin_manager

    def counting(plugins: str = "", *args: object, **kwargs: object) -> object:
        loads.append(plugins)
        return real(plugins)

    monkeypatch.setattr(services, "plugin_manager", counting)
    bodies = [client.get("/api/status").json() for _ in range(3)]
    assert len(loads) == 1  # entry points are scanned once, not at every poll
    assert bodies[0] == bodies[2]
    assert {p["name"] for p in bodies[0]["processors"]} >= {"storage", "metadata", "index"}
    assert all(p["lag"] == 0 for p in bodies[0]["processors"])


def test_the_status_lists_the_selected_processors_in_the_order_of_the_setting(
    archive: Archive,
) -> None:
    settings = archive.settings.model_copy(update={"processors": "metadata,storage"})
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        body = client.get("/api/status").json()
    assert [p["name"] for p in body["processors"]] == ["metadata", "storage"]
    assert body["processors"][1]["topics"] == ["dicomflow.received"]
