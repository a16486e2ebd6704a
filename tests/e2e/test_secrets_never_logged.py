"""No secret ever reaches a log, the audit trail or a file of the data directory in clear.

`dicomflow serve` runs at DEBUG with every secret set (admin token, de-identification key, S3
keys that the embedded deployment does not use but still reads); the test stores objects, reads
with the admin token, presents wrong tokens, logs into the UI, creates an API token and uses it,
then searches everything the server wrote for each secret.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomflow.synthetic import iter_study_tree, write_tree
from tests.conftest import free_port
from tests.e2e.conftest import Server, server_env

DEID_SECRET = "deid-key-Zq8u3WcV0bN5xYp2Lm7Tr4Hs"
S3_ACCESS = "s3-access-Kd93hfUeQ02mZx"
S3_SECRET = "s3-secret-Pw82nqLxV6aRt1Yb"
WRONG_TOKEN = "wrong-token-Hh28dJ3kLq9Vb0Nc"


@pytest.fixture
def debug_server(tmp_path: Path) -> Iterator[Server]:
    data_dir = tmp_path / "data"
    dicom_port, http_port = free_port(), free_port()
    env = server_env(data_dir, dicom_port, http_port)
    env.update(
        DICOMFLOW_LOG_LEVEL="DEBUG",
        DICOMFLOW_DEID_SECRET=DEID_SECRET,
        DICOMFLOW_S3_ACCESS_KEY=S3_ACCESS,
        DICOMFLOW_S3_SECRET_KEY=S3_SECRET,
    )
    server = Server(data_dir, dicom_port, http_port, env, tmp_path / "serve.log")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


def _files_containing(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.e2e
def test_secrets_appear_in_no_log_trail_or_data_file(debug_server: Server, tmp_path: Path) -> None:
    server = debug_server
    admin_token = server.env["DICOMFLOW_ADMIN_TOKEN"]
    folder = tmp_path / "in"
    write_tree(iter_study_tree(patients=1, series_per_study=1, instances_per_series=3), folder)
    server.storescu(folder)
    server.wait_idle()
    assert server.http.get("/dicomweb/studies").status_code == 200
    for header in (f"Bearer {WRONG_TOKEN}", WRONG_TOKEN, f"Basic {WRONG_TOKEN}"):
        refused = server.http.get("/dicomweb/studies", headers={"Authorization": header})
        assert refused.status_code == 401
        assert WRONG_TOKEN not in refused.text
    login = server.http.post(
        "/ui/login",
        data={"token": admin_token, "next": "/"},
        headers={"Authorization": ""},
        follow_redirects=False,
    )
    assert login.status_code in (200, 303), login.text[:500]
    bad_login = server.http.post(
        "/ui/login", data={"token": WRONG_TOKEN, "next": "/"}, headers={"Authorization": ""}
    )
    assert WRONG_TOKEN not in bad_login.text
    created = server.http.post(
        "/api/admin/tokens", json={"name": "researcher", "roles": ["deid-reader"]}
    )
    assert created.status_code == 201, created.text
    new_token = created.json()["token"]
    used = server.http.get(
        "/dicomweb/deidentified/studies", headers={"Authorization": f"Bearer {new_token}"}
    )
    assert used.status_code == 200
    trail = server.http.get("/api/admin/audit", params={"limit": 1000})
    assert trail.status_code == 200 and trail.json()["count"] > 0
    assert server.stop() == 0

    log = server.log_path.read_text()
    assert "DEBUG" in log  # the check means something only if the server logged verbosely
    secrets = {
        "admin token": admin_token,
        "created token": new_token,
        "wrong token": WRONG_TOKEN,
        "de-identification key": DEID_SECRET,
        "S3 access key": S3_ACCESS,
        "S3 secret key": S3_SECRET,
    }
    for name, secret in secrets.items():
        assert secret not in log, f"the {name} is in the server's log"
        assert secret not in trail.text, f"the {name} is in the audit trail"
        found = _files_containing(server.data_dir, secret.encode())
        assert not found, f"the {name} is in clear in {found}"
