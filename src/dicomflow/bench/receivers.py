"""The receivers under test, each started fresh by the bench on its own ports and folders.

- `DicomflowServer`: ``dicomflow serve`` (every role, supervised) on a fresh data directory,
  embedded back ends, durable acknowledgements; the settings can be overridden (``--set``).
- `StorescpServer`: DCMTK ``storescp --fork`` writing every object to a folder (no fsync): the
  practical limit of the machine.
- `OrthancServer`: Orthanc with its defaults (SQLite index, fsync'd storage) and a generated
  configuration; only the ports, folders, AE title and the C-FIND permission are set.
"""

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dicomflow.bench import procs
from dicomflow.bench.tools import Tool


class BenchError(Exception):
    """A receiver or tool did not behave (did not start, lost objects...)."""


def dcmtk_env() -> dict[str, str]:
    """The environment of a DCMTK-based receiver (storescp, Orthanc): Nagle off.

    Debian builds DCMTK so that Nagle's algorithm stays on unless TCP_NODELAY=1 is in the
    environment, for servers as for clients: without it, every response waits for the peer's
    delayed ACK (40 ms on Linux) and the receiver looks ten times slower than it is.
    """
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class HttpClient:
    """A keep-alive HTTP/1.1 client on loopback (stdlib only), for timed requests."""

    def __init__(
        self, port: int, timeout: float = 60, headers: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.headers = headers or {}
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            try:
                self._conn.request("GET", path, headers=self.headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Receiver(ABC):
    """A C-STORE receiver process family started and stopped by the bench."""

    name: str
    ae_title: str

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}.log"

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd,
            env=env or dcmtk_env(),
            cwd=self.work,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes the whole family
        )

    def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not become ready ({what}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not running")
        return self.process.pid

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def count(self) -> int:
        """Objects stored so far."""

    def settle(self, timeout: float) -> float:
        """Wait until the receiver has finished any work left after the acknowledgements."""
        return 0.0

    def after_run(self) -> None:  # noqa: B027 - optional hook
        """Free what a run left behind (files a reference receiver wrote)."""

    def role_of(self, pid: int) -> str:
        return self.name

    def roots(self) -> list[int]:
        """The processes whose trees make up the receiver."""
        return [self.process.pid] if self.process is not None else []

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        # Children of a forking server may outlive it for a moment.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "Receiver":
        try:
            self.start()
        except BaseException:
            # A start that fails or is interrupted (Ctrl-C, SIGTERM) must not leave a server
            # behind: __exit__ will not run for it.
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dicomflow_env(
    data_dir: Path, dicom_port: int, http_port: int, overrides: dict[str, str]
) -> dict[str, str]:
    """The environment of a bench server: the caller's DICOMFLOW_* settings do not leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env.update(
        DICOMFLOW_DATA_DIR=str(data_dir),
        DICOMFLOW_DICOM_PORT=str(dicom_port),
        DICOMFLOW_HTTP_PORT=str(http_port),
        DICOMFLOW_DICOM_HOST="127.0.0.1",
        DICOMFLOW_HTTP_HOST="127.0.0.1",
        DICOMFLOW_DEID_SECRET="bench-secret-" + "x" * 24,
        DICOMFLOW_PLUGINS="-",
        DICOMFLOW_LOG_LEVEL="WARNING",
        # The bench queries with an admin token, as automation does (auth stays on).
        DICOMFLOW_ADMIN_TOKEN=secrets.token_urlsafe(32),
        PYTHONUNBUFFERED="1",
    )
    for key, value in overrides.items():
        env[f"DICOMFLOW_{key.upper()}"] = value
    return env


def available_roles() -> tuple[list[str], str]:
    """The roles that can run in this checkout, and why some cannot (empty if all can)."""
    problems: list[str] = []
    roles = ["ingest"]
    try:
        from dicomflow.processors.plugins import plugin_manager, processor_classes

        processor_classes(plugin_manager("-"))
        roles.append("processors")
    except Exception as exc:
        problems.append(f"processors: {type(exc).__name__}: {exc}")
    try:
        import dicomflow.api.app  # noqa: F401

        if "processors" in roles:
            roles.append("api")
    except Exception as exc:
        problems.append(f"api: {type(exc).__name__}: {exc}")
    return roles, "; ".join(problems)


class DicomflowServer(Receiver):
    """``dicomflow serve`` on a fresh data directory (or single roles if not all can run)."""

    name = "dicomflow"

    def __init__(self, work: Path, overrides: dict[str, str], roles: list[str]) -> None:
        super().__init__(work)
        self.ae_title = "DICOMFLOW"
        self.http_port = free_port()
        self.data_dir = work / "data"
        self.overrides = overrides
        self.roles = roles
        self.env = dicomflow_env(self.data_dir, self.port, self.http_port, overrides)
        self.http_headers = {"Authorization": f"Bearer {self.env['DICOMFLOW_ADMIN_TOKEN']}"}
        self.extra: list[subprocess.Popen[bytes]] = []
        self.http = HttpClient(self.http_port, headers=self.http_headers)
        self._bus: Any = None
        self._lag_processors: dict[str, Any] | None = None  # the server's, loaded once

    @property
    def has_api(self) -> bool:
        return "api" in self.roles

    @property
    def topic_prefix(self) -> str:
        from dicomflow.kernel.settings import Settings

        default = str(Settings.model_fields["topic_prefix"].default)
        return self.env.get("DICOMFLOW_TOPIC_PREFIX", default)

    @property
    def workers(self) -> int:
        value = int(self.overrides.get("dicom_workers", "1") or 1)
        return value if value > 0 else os.cpu_count() or 1

    def start(self) -> None:
        cli = [sys.executable, "-m", "dicomflow.cli", "serve"]
        if self.has_api:
            self._spawn(cli)
        else:  # what this checkout can run: the roles one by one (one SCP worker)
            self._spawn([*cli, "--role", "ingest"], self.env)
            for role in self.roles[1:]:
                self.extra.append(
                    subprocess.Popen(
                        [*cli, "--role", role],
                        env=self.env,
                        cwd=self.work,
                        stdout=self._log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        self._wait_until(self._ready, 90, "DICOM port, workers and /healthz")

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn(cmd, env or self.env)

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        if self.has_api:
            ingest = [p for p in self.pids() if self.port in procs.listening_ports(p)]
            if len(ingest) < self.workers:
                return False
            try:
                return self.http.get("/healthz")[0] == 200
            except OSError:
                return False
        return True

    def pids(self) -> list[int]:
        stats = procs.all_stats()
        out: list[int] = []
        for root in self.roots():
            out.extend(procs.tree_pids(root, stats))
        return out

    def roots(self) -> list[int]:
        roots = [self.pid] if self.process is not None else []
        return roots + [p.pid for p in self.extra]

    def role_of(self, pid: int) -> str:
        ports = procs.listening_ports(pid)
        if self.port in ports:
            return "ingest"
        if self.http_port in ports:
            return "api"
        command = procs.cmdline(pid)
        if "resource_tracker" in command:
            return "resource_tracker"
        if self.has_api and pid == self.pid:
            return "supervisor"
        if "--role" in command:
            return command.split("--role", 1)[1].split()[0]
        # `serve` names its children after their roles (the search path's processes apart).
        from dicomflow.roles import PROCESS_NAME_PREFIX

        stat = procs.read_stat(pid)
        if stat is not None and stat.comm.startswith(PROCESS_NAME_PREFIX):
            return stat.comm.removeprefix(PROCESS_NAME_PREFIX)
        return "processors"

    def bus(self) -> Any:
        if self._bus is None:
            from dicomflow.kernel.bus.embedded import EmbeddedBus

            self._bus = EmbeddedBus(self.data_dir / "events", self.topic_prefix)
        return self._bus

    def count(self) -> int:
        sizes: dict[str, int] = self.bus().topic_sizes()
        return sizes.get(self.bus().topic("received"), 0)

    def lag(self) -> int | None:
        """Records not yet processed by every processor (None: no processors running).

        Read from the event log, not from ``/api/status``: the bench polls this ten times a
        second while it waits for the pipeline, and the status route also counts the index
        (a scan of a million rows at the 1M step), which took CPU from what is measured.
        """
        if "processors" not in self.roles:
            return None
        from dicomflow.processors.plugins import plugin_manager, processor_classes, select
        from dicomflow.processors.runtime import pipeline_lag

        if self._lag_processors is None:
            self._lag_processors = select(
                processor_classes(plugin_manager(self.env["DICOMFLOW_PLUGINS"])),
                self.env.get("DICOMFLOW_PROCESSORS", ""),
            )
        return pipeline_lag(self.bus(), self.topic_prefix, self._lag_processors)

    def status(self) -> dict[str, Any] | None:
        if not self.has_api:
            return None
        result: dict[str, Any] = self.http.get_json("/api/status")
        return result

    def settle(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            lag = self.lag()
            if not lag:
                break
            time.sleep(0.1)
        return time.monotonic() - started

    def stop(self) -> None:
        for extra in self.extra:
            with contextlib.suppress(ProcessLookupError):
                extra.send_signal(signal.SIGTERM)
        super().stop()
        for extra in self.extra:
            try:
                extra.wait(timeout=60)
            except subprocess.TimeoutExpired:
                extra.kill()
        self.extra = []
        self.http.close()
        if self._bus is not None:
            self._bus.close()
            self._bus = None


class StorescpServer(Receiver):
    name = "dcmtk"

    def __init__(self, work: Path, storescp: Tool) -> None:
        super().__init__(work)
        self.tool = storescp
        self.ae_title = "STORESCP"
        self.out = work / "received"
        self._runs = 0

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        cmd = [self.tool.path, "--fork", "-dhl", "-aet", self.ae_title, "-od", str(self.out)]
        self._spawn([*cmd, str(self.port)])
        self._wait_until(lambda: port_open(self.port), 30, "DICOM port")

    def count(self) -> int:
        return sum(1 for entry in os.scandir(self.out) if entry.is_file())

    def after_run(self) -> None:
        # Set aside, not deleted: a deletion would slow the next run's file creates, whoever
        # runs next (see runner.FILE_SYSTEM_SETTLE_S); the phase deletes its folder at its end.
        self._runs += 1
        self.out.rename(self.work / f"received-{self._runs}")
        self.out.mkdir(parents=True, exist_ok=True)


class OrthancServer(Receiver):
    name = "orthanc"

    def __init__(self, work: Path, orthanc: Tool) -> None:
        super().__init__(work)
        self.tool = orthanc
        self.ae_title = "ORTHANC"
        self.http_port = free_port()
        self.http = HttpClient(self.http_port)
        self.config: dict[str, object] = {
            "Name": "dicomflow-bench",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowFind": True,
            "Plugins": [],
            "SaveJobs": False,
        }

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        self._spawn([self.tool.path, str(path)])
        self._wait_until(self._ready, 60, "DICOM port and /system")

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            return self.http.get("/system")[0] == 200
        except OSError:
            return False

    def count(self) -> int:
        stats = self.http.get_json("/statistics")
        return int(stats["CountInstances"])

    def stop(self) -> None:
        super().stop()
        self.http.close()
