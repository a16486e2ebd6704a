"""Scale-out fixtures: every dicomflow role as its own OS process on real Kafka, ES and S3."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dicomflow.kernel.settings import Settings
from tests.conftest import ADMIN_TOKEN, free_port, service_setting

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROCESSORS = ("storage", "metadata", "deidentify", "index")


def services_script(*args: str) -> None:
    """Stop or start a real service mid-test (outage tests)."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), *args],
        check=True,
        timeout=600,
        capture_output=True,
    )


@dataclass
class ScaleOut:
    """A dicomflow deployment in separate processes, with its own topics, indices, buckets."""

    tmp: Path
    env: dict[str, str]
    dicom_port: int
    http_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = self.client(self.http_port)

    def client(self, http_port: int, token: str | None = None) -> httpx.Client:
        """An HTTP client of an API replica, authenticated with the admin token by default."""
        token = token or self.env["DICOMFLOW_ADMIN_TOKEN"]
        return httpx.Client(
            base_url=f"http://127.0.0.1:{http_port}",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )

    def settings(self) -> Settings:
        return Settings(
            **{
                k[len("DICOMFLOW_") :].lower(): v
                for k, v in self.env.items()
                if k.startswith("DICOMFLOW_")
                and k[len("DICOMFLOW_") :].lower() in Settings.model_fields
            }
        )

    def start(self, name: str, role: str, *extra: str, env: dict[str, str] | None = None) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "dicomflow.cli", "serve", "--role", role, *extra],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_all(self) -> None:
        self.start("ingest", "ingest")
        self.start("api", "api")
        for name in PROCESSORS:
            self.start(name, f"processor:{name}")
        self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} died:\n{self.log(name)}"
            try:
                if self.http.get("/healthz").status_code == 200 and _port_open(self.dicom_port):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("scale-out roles did not start:\n" + self.log("api"))

    def log(self, name: str) -> str:
        return self._log_text(name)[-4000:]

    def _log_text(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def status(self) -> dict[str, object]:
        response = self.http.get("/api/status")
        assert response.status_code == 200, response.text
        status: dict[str, object] = response.json()
        return status

    def wait_idle(self, expected: int, timeout: float = 180) -> dict[str, object]:
        """Wait until `expected` instances are indexed in both namespaces and no group lags."""
        deadline = time.monotonic() + timeout
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (httpx.HTTPError, AssertionError):
                time.sleep(1)
                continue
            index = status["index"]
            processors = status["processors"]
            assert isinstance(index, dict) and isinstance(processors, list)
            if (
                index["original"]["instance"] == expected
                and index["deidentified"]["instance"] == expected
                and all(p["lag"] == 0 for p in processors)
            ):
                return status
            time.sleep(0.5)
        logs = "\n".join(f"--- {name}.log\n{self.own_log_lines(name)}" for name in self.processes)
        raise AssertionError(f"pipeline did not catch up: {status}\n{logs}")

    def own_log_lines(self, name: str, lines: int = 30) -> str:
        """The last lines a role logged itself (librdkafka's own lines, `%3|...`, are left out:
        during an outage its connection failures would fill the tail)."""
        own = [line for line in self._log_text(name).splitlines() if not re.match(r"%\d\|", line)]
        return "\n".join(line[:300] for line in own[-lines:])


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def scaleout(tmp_path: Path) -> Iterator[ScaleOut]:
    run = uuid.uuid4().hex[:8]
    dicom_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env.update(
        DICOMFLOW_BUS="kafka",
        DICOMFLOW_KAFKA_BOOTSTRAP=service_setting("DICOMFLOW_KAFKA_BOOTSTRAP"),
        DICOMFLOW_KAFKA_PARTITIONS="4",
        DICOMFLOW_TOPIC_PREFIX=f"it{run}",
        DICOMFLOW_INDEX="elasticsearch",
        DICOMFLOW_ELASTICSEARCH_URL=service_setting("DICOMFLOW_ELASTICSEARCH_URL"),
        DICOMFLOW_ELASTICSEARCH_PREFIX=f"it{run}",
        DICOMFLOW_BLOBS="s3",
        DICOMFLOW_S3_ENDPOINT=service_setting("DICOMFLOW_S3_ENDPOINT"),
        DICOMFLOW_S3_ACCESS_KEY=service_setting("DICOMFLOW_S3_ACCESS_KEY"),
        DICOMFLOW_S3_SECRET_KEY=service_setting("DICOMFLOW_S3_SECRET_KEY"),
        DICOMFLOW_S3_BUCKET_PREFIX=f"it{run}",
        DICOMFLOW_DATA_DIR=str(tmp_path / "data"),
        DICOMFLOW_DICOM_HOST="127.0.0.1",
        DICOMFLOW_DICOM_PORT=str(dicom_port),
        DICOMFLOW_HTTP_HOST="127.0.0.1",
        DICOMFLOW_HTTP_PORT=str(http_port),
        DICOMFLOW_DEID_SECRET="integration-secret-" + "y" * 20,
        DICOMFLOW_PLUGINS="-",
        DICOMFLOW_ADMIN_TOKEN=ADMIN_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    deployment = ScaleOut(tmp_path, env, dicom_port, http_port)
    yield deployment
    deployment.stop_all()
