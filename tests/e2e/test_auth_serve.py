"""`dicomflow serve` without DICOMFLOW_ADMIN_TOKEN: the first start creates an admin token and
prints it once; `dicomflow token` creates, lists and revokes tokens that the server accepts."""

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Server, server_env

pytestmark = pytest.mark.e2e

TOKEN = re.compile(r"dft_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_first_start_prints_an_admin_token_once_and_it_works(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dicom_port, http_port = free_port(), free_port()
    env = server_env(data_dir, dicom_port, http_port, admin_token=None)
    server = Server(data_dir, dicom_port, http_port, env, tmp_path / "server.log")
    server.start()
    try:
        log = server.log_path.read_text()
        printed = TOKEN.findall(log)
        assert len(set(printed)) == 1, log
        token = printed[0]
        assert f'curl -H "Authorization: Bearer {token}"' in log
        assert f"http://127.0.0.1:{http_port}/ui/login" in log
        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(base + "/api/status").status_code == 401
        assert httpx.get(base + "/healthz").status_code == 200
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(base + "/api/status", headers=headers).status_code == 200

        # A token made by the CLI on the same data is accepted by the running server.
        created = cli(env, "token", "create", "--name", "ci reader", "--role", "deid-reader")
        assert created.returncode == 0, created.stderr
        reader = TOKEN.findall(created.stdout)[0]
        reader_headers = {"Authorization": f"Bearer {reader}"}
        assert (
            httpx.get(base + "/dicomweb/deidentified/studies", headers=reader_headers).status_code
            == 200
        )
        assert httpx.get(base + "/dicomweb/studies", headers=reader_headers).status_code == 403
        listed = cli(env, "token", "list")
        assert "ci reader" in listed.stdout and reader not in listed.stdout
        token_id = reader.split("_")[1]
        assert cli(env, "token", "revoke", token_id).returncode == 0
        assert cli(env, "token", "create", "--name", "x", "--role", "root").returncode == 2
        # Changes made on the command line are in the audit trail too.
        trail = httpx.get(
            base + "/api/admin/audit", params={"action": "admin-change"}, headers=headers
        ).json()["events"]
        by_cli = [e["detail"] for e in trail if e["channel"] == "cli"]
        assert by_cli == [
            f"revoked API token {token_id}",
            f"created API token {token_id} (ci reader)",
        ]
    finally:
        assert server.stop() == 0
    # The second start prints nothing: the token exists (as a hash), still valid.
    server.start()
    try:
        assert TOKEN.findall(server.log_path.read_text()) == printed
        assert httpx.get(base + "/api/status", headers=headers).status_code == 200
        revoked = httpx.get(base + "/dicomweb/deidentified/studies", headers=reader_headers)
        assert revoked.status_code == 401
    finally:
        assert server.stop() == 0
    # Only hashes are stored: no file of the data directory holds a token.
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert token.encode() not in content and reader.encode() not in content, path
