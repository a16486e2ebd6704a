"""The pipeline status route: what a monitor polls, so it must stay cheap."""

import pytest
from fastapi.testclient import TestClient

from dicomflow.api.routes import status


def test_the_status_loads_the_plugins_once_however_often_it_is_polled(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = status.plugin_manager

    def counting(plugins: str = "", *args: object, **kwargs: object) -> object:
        loads.append(plugins)
        return real(plugins)

    monkeypatch.setattr(status, "plugin_manager", counting)
    status._processors.cache_clear()
    bodies = [client.get("/api/status").json() for _ in range(3)]
    assert len(loads) == 1  # entry points are scanned once, not at every poll
    assert bodies[0] == bodies[2]
    assert {p["name"] for p in bodies[0]["processors"]} >= {"storage", "metadata", "index"}
    assert all(p["lag"] == 0 for p in bodies[0]["processors"])
