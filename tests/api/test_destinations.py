"""The C-MOVE destination registry: the setting, the file, and the admin API that edits it."""

import json

import pytest
from fastapi.testclient import TestClient

from dicomflow.api.destinations import (
    Destination,
    DestinationRegistry,
    DestinationSource,
    parse_destination,
    parse_destinations,
)
from dicomflow.api.exceptions import DestinationConflict, InvalidDestination
from dicomflow.kernel.settings import Settings


def test_parse_the_setting() -> None:
    assert parse_destinations(" PACS2@10.0.0.7:104, VIEWER@viewer.example.org:11112 ,") == [
        Destination(ae_title="PACS2", host="10.0.0.7", port=104),
        Destination(ae_title="VIEWER", host="viewer.example.org", port=11112),
    ]
    assert parse_destination("V6@[::1]:4242") == Destination(ae_title="V6", host="::1", port=4242)
    assert parse_destinations("") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("PACS2", "AET@host:port"),
        ("PACS2@10.0.0.7", "AET@host:port"),
        ("@10.0.0.7:104", "AE title"),
        ("A_TITLE_LONGER_THAN_16@h:104", "AE title"),
        ("PACS2@10.0.0.7:0", "port"),
        ("PACS2@10.0.0.7:99999", "port"),
        ("PACS2@bad host;rm:104", "host"),
        ("A@h:1,A@h:2", "twice"),
    ],
)
def test_malformed_destinations_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidDestination, match=reason):
        parse_destinations(text)


def test_registry_merges_the_setting_and_the_file(settings: Settings) -> None:
    configured = settings.model_copy(update={"destinations": "PACS2@10.0.0.7:104"})
    registry = DestinationRegistry(configured)
    assert registry.get("PACS2") == Destination(ae_title="PACS2", host="10.0.0.7", port=104)
    assert registry.get("OTHER") is None

    added = registry.add(Destination(ae_title="OTHER", host="127.0.0.1", port=4242))
    # Another process (the SCP) sees the change at once.
    assert DestinationRegistry(configured).get("OTHER ") == added
    document = json.loads(registry.path.read_text())
    assert document == {"destinations": [{"ae_title": "OTHER", "host": "127.0.0.1", "port": 4242}]}
    assert [(d.ae_title, source) for d, source in registry.entries()] == [
        ("OTHER", DestinationSource.FILE),
        ("PACS2", DestinationSource.SETTINGS),
    ]
    with pytest.raises(DestinationConflict):
        registry.add(Destination(ae_title="OTHER", host="127.0.0.1", port=1))
    with pytest.raises(DestinationConflict, match="DICOMFLOW_DESTINATIONS"):
        registry.add(Destination(ae_title="PACS2", host="127.0.0.1", port=1))
    with pytest.raises(DestinationConflict, match="DICOMFLOW_DESTINATIONS"):
        registry.remove("PACS2")
    assert registry.remove("OTHER") is True
    assert registry.remove("OTHER") is False
    assert DestinationRegistry(configured).get("OTHER") is None


def test_a_corrupt_file_is_reported(settings: Settings) -> None:
    registry = DestinationRegistry(settings)
    registry.path.parent.mkdir(parents=True, exist_ok=True)
    registry.path.write_text('{"destinations": [{"ae_title": "X", "host": "h", "port": -1}]}')
    with pytest.raises(InvalidDestination, match="bad destination"):
        registry.get("X")


def test_the_admin_api(client: TestClient) -> None:
    assert client.get("/api/admin/destinations").json() == {"destinations": []}
    created = client.post(
        "/api/admin/destinations", json={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": 4242,
        "source": "file",
    }
    again = client.post(
        "/api/admin/destinations", json={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}
    )
    assert again.status_code == 409 and "exists" in again.json()["detail"]
    bad = client.post(
        "/api/admin/destinations", json={"ae_title": "X" * 17, "host": "h", "port": 104}
    )
    assert bad.status_code == 422 and "AE title" in bad.text
    listed = client.get("/api/admin/destinations").json()["destinations"]
    assert [d["ae_title"] for d in listed] == ["ORTHANC"]
    assert client.delete("/api/admin/destinations/ORTHANC").status_code == 204
    assert client.delete("/api/admin/destinations/ORTHANC").status_code == 404
    assert client.get("/api/admin/destinations").json() == {"destinations": []}
