"""End-to-end fixtures: the real `dicomflow` CLI, DCMTK tools and a real HTTP client."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info

from tests.conftest import ADMIN_TOKEN, free_port

pytestmark = pytest.mark.e2e

# The admin token of the servers the tests start; every HTTP request sends it as a bearer token.


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool (pynetdicom installs Python tools of the same names on PATH)."""
    for folder in ("/usr/bin", "/usr/local/bin", "/bin"):
        path = Path(folder) / tool
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    pytest.fail(f"DCMTK's {tool} is missing: scripts/test.sh installs it (apt-get install dcmtk)")


@dataclass
class Server:
    data_dir: Path
    dicom_port: int
    http_port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        token = self.env.get("DICOMFLOW_ADMIN_TOKEN")
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"} if token else None,
        )

    def start(self, timeout: float = 60) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicomflow.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the whole family
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            if _port_open(self.dicom_port) and self._healthy():
                return
            time.sleep(0.2)
        raise AssertionError("server did not start:\n" + self.log_path.read_text()[-3000:])

    def _healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def wait_idle(self, timeout: float = 120) -> dict[str, object]:
        """Wait until every processor has consumed everything published so far."""
        deadline = time.monotonic() + timeout
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            status = self.http.get("/api/status").json()
            processors = status["processors"]
            assert isinstance(processors, list)
            if all(p["lag"] == 0 for p in processors):
                return status
            time.sleep(0.2)
        raise AssertionError(f"pipeline did not catch up: {status}")

    def storescu(self, *paths: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TCP_NODELAY": "1"}
        cmd = [dcmtk("storescu"), "-v", "-aet", "E2ESCU", "-aec", "DICOMFLOW", "+sd", "+r", "-nh"]
        cmd += ["127.0.0.1", str(self.dicom_port), *map(str, paths)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if check:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A DCMTK storescp (AE title STORESCP): the folder it writes into, its port."""
    folder = tmp_path_factory.mktemp("storescp")
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield folder, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def server_env(
    data_dir: Path, dicom_port: int, http_port: int, admin_token: str | None = ADMIN_TOKEN
) -> dict[str, str]:
    """The environment of a test server; `admin_token` None leaves DICOMFLOW_ADMIN_TOKEN unset
    (the server then creates an admin token at its first start and prints it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env.update(
        DICOMFLOW_DATA_DIR=str(data_dir),
        DICOMFLOW_DICOM_PORT=str(dicom_port),
        DICOMFLOW_HTTP_PORT=str(http_port),
        DICOMFLOW_DICOM_HOST="127.0.0.1",
        DICOMFLOW_HTTP_HOST="127.0.0.1",
        DICOMFLOW_DEID_SECRET="e2e-secret-" + "x" * 20,
        DICOMFLOW_PLUGINS="-",
        PYTHONUNBUFFERED="1",
    )
    if admin_token is not None:
        env["DICOMFLOW_ADMIN_TOKEN"] = admin_token
    return env


def new_server(data_dir: Path, log_path: Path) -> Server:
    """A server (not started yet) on `data_dir`, on free ports, with the e2e environment."""
    dicom_port, http_port = free_port(), free_port()
    env = server_env(data_dir, dicom_port, http_port)
    return Server(data_dir, dicom_port, http_port, env, log_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = new_server(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    yield srv
    if srv.process is not None:
        code = srv.stop()
        assert code == 0, srv.log_path.read_text()[-3000:]


def dataset_bytes(part10: bytes) -> bytes:
    """The dataset part of a Part 10 object (after the file meta, which each writer makes anew)."""
    stream = BytesIO(part10)
    stream.seek(132)
    _read_file_meta_info(stream)
    return part10[stream.tell() :]


def parse_multipart(response: httpx.Response) -> list[bytes]:
    content_type = response.headers["content-type"]
    match = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
    assert match, content_type
    boundary = match.group(1).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _head, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


def read_dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(data))
