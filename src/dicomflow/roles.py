"""The process roles of dicomflow and the supervisor that runs them as one process family.

Roles: ``ingest`` (the DICOM SCP), ``processors`` (every selected processor, one thread each),
``processor:NAME[,NAME...]`` (some processors), ``api`` (HTTP). `dicomflow serve` runs them all
as child processes of one supervisor that restarts a child that dies and stops them all on
SIGTERM or Ctrl-C; `dicomflow serve --role X` runs one role alone (what compose.yaml does).

The supervisor runs the processors in several processes: the search path in three (storage,
metadata and index, one each: DICOMFLOW_SEARCH_PROCESSORS) and the others in one more at a
lower CPU priority. The processors of one process share one core (the GIL);
several processes use every core, and the priority lets a burst become searchable before its
de-identified copies are made.
"""

import contextlib
import fcntl
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.progress import Progress

from dicomflow.kernel.activity import open_receive_activity
from dicomflow.kernel.backends import open_blob_store, open_bus, open_spool
from dicomflow.kernel.settings import Settings, get_settings
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.plugins import plugin_manager, processor_classes, select
from dicomflow.processors.runtime import (
    Deferral,
    ProcessorRunner,
    dead_letter_topic,
    group_name,
    pipeline_lag,
)

log = logging.getLogger(__name__)

ALL_ROLES = ("ingest", "processors", "api")


def configure_logging(settings: Settings) -> None:
    fmt = (
        '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if settings.log_json
        else "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=settings.log_level.upper(), format=fmt, force=True)
    # pynetdicom logs every PDU at INFO: far too much on the hot path.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # The Elasticsearch client logs every request at INFO.
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)


def _wait_for_stop() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def run_ingest(settings: Settings, reuse_port: bool) -> None:
    from dicomflow.api.dimse import QueryRetrieveService
    from dicomflow.ingest.access import AccessGuard, AccessPolicy
    from dicomflow.ingest.audit import DimseAudit
    from dicomflow.ingest.receiver import open_receiver
    from dicomflow.ingest.scp import start_scp
    from dicomflow.kernel.audit import open_audit_trail

    stop = _wait_for_stop()
    policy = AccessPolicy.from_settings(settings)  # a malformed allowlist stops the start here
    bus = open_bus(settings)
    trail = open_audit_trail(settings, bus)
    audit = DimseAudit(trail)
    guard = AccessGuard(policy, on_denied=audit.denied)
    receiver = open_receiver(settings, bus)
    query_retrieve = QueryRetrieveService(settings, guard=guard, audit=audit)
    server = start_scp(
        settings,
        receiver,
        reuse_port=reuse_port,
        extensions=[query_retrieve.extension()],
        guard=guard,
    )
    stop.wait()
    server.shutdown()
    query_retrieve.close()
    receiver.close()
    trail.close()
    bus.close()


def build_runners(
    settings: Settings,
    only: str | None = None,
    group: str | None = None,
    defer_background: bool = False,
) -> list[ProcessorRunner]:
    """A runner per selected processor (DICOMFLOW_PROCESSORS, or just `only`).

    `group` replaces the consumer group of a single processor: a new group starts from the
    earliest offset, which is how an index is rebuilt from the event log. With
    `defer_background`, the processors that are not on the search path hold back while this
    machine's receivers take objects in (DICOMFLOW_BACKGROUND_DEFER_SECONDS).
    """
    classes = select(
        processor_classes(plugin_manager(settings.plugins)), only or settings.processors
    )
    bus = open_bus(settings)
    context = ProcessorContext(
        settings=settings, bus=bus, blobs=open_blob_store(settings), spool=open_spool(settings)
    )
    background = set(background_processors(settings, list(classes)))
    deferral = None
    if defer_background and background and settings.background_defer_seconds > 0:
        deferral = Deferral(open_receive_activity(settings), settings.background_defer_seconds)
    runners = []
    producer = bus.producer()
    for name, cls in classes.items():
        consumer = bus.consumer(
            group or group_name(settings.topic_prefix, name), [bus.topic(t) for t in cls.topics]
        )
        runners.append(
            ProcessorRunner(
                cls(context),
                consumer,
                producer,
                dead_letter_topic(bus.topic_prefix),
                deferral=deferral if name in background else None,
                linger=settings.processor_linger_ms / 1000,
            )
        )
    return runners


def run_processors(settings: Settings, only: str | None = None, group: str | None = None) -> None:
    stop = _wait_for_stop()
    runners = build_runners(settings, only, group, defer_background=True)
    threads = [
        threading.Thread(target=runner.run, name=f"processor-{runner.processor.name}")
        for runner in runners
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(1.0):
        if any(runner.state.failed for runner in runners):
            break
    for runner in runners:
        runner.stop()
    for thread in threads:
        thread.join(timeout=30)
    failed = [runner.processor.name for runner in runners if runner.state.failed]
    if failed:
        raise SystemExit(f"processor(s) failed: {', '.join(failed)}; see the log above")


def run_api(settings: Settings) -> None:
    import uvicorn

    from dicomflow.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
    )


PROCESS_NAME_PREFIX = "df:"


def process_name(role: str) -> str:
    """The name `top` and `ps -o comm` show for a role's process (Linux keeps 15 bytes)."""
    return (PROCESS_NAME_PREFIX + role.removeprefix("processor:"))[:15]


def name_process(role: str) -> None:
    """Name this process after its role: every child of `serve` is `python` otherwise."""
    with contextlib.suppress(OSError):  # not Linux: the name stays
        Path("/proc/self/comm").write_text(process_name(role))


def run_role(role: str, reuse_port: bool = False, group: str | None = None, nice: int = 0) -> None:
    """Entry point of a child process (and of `serve --role`)."""
    name_process(role)
    if nice:
        os.nice(nice)
    settings = get_settings()
    configure_logging(settings)
    if role == "ingest":
        run_ingest(settings, reuse_port)
    elif role == "processors":
        run_processors(settings)
    elif role.startswith("processor:"):
        run_processors(settings, only=role.split(":", 1)[1], group=group)
    elif role == "api":
        run_api(settings)
    else:
        raise ValueError(f"unknown role {role!r}; roles: ingest, processors, processor:NAME, api")


@dataclass
class _Child:
    role: str
    reuse_port: bool
    nice: int = 0
    process: multiprocessing.context.SpawnProcess | None = None
    restarts: int = 0
    started_at: float = 0.0


@contextlib.contextmanager
def serve_lock(data_dir: Path) -> Iterator[bool]:
    """Hold ``<data_dir>/serve.lock`` while serving; yields False if another serve holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (data_dir / "serve.lock").open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield True
    finally:
        handle.close()


def is_serving(data_dir: Path) -> bool:
    """Whether a `dicomflow serve` process holds this data directory."""
    path = data_dir / "serve.lock"
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def selected_processor_names(settings: Settings) -> list[str]:
    """The processors DICOMFLOW_PROCESSORS selects among the installed ones (imports them)."""
    return list(select(processor_classes(plugin_manager(settings.plugins)), settings.processors))


def _search_path_groups(settings: Settings) -> list[list[str]]:
    """DICOMFLOW_SEARCH_PROCESSORS: the processes of the search path, each its processors."""
    groups = [
        [name.strip() for name in group.split(",") if name.strip()]
        for group in settings.search_processors.split(";")
    ]
    return [group for group in groups if group]


def background_processors(settings: Settings, selected: list[str]) -> list[str]:
    """The selected processors that are not on the search path (none if it is not set)."""
    on_search_path = {name for group in _search_path_groups(settings) for name in group}
    if not on_search_path:
        return []
    return [name for name in selected if name not in on_search_path]


def _processor_children(settings: Settings, selected: list[str]) -> list[_Child]:
    """The search path's processes (DICOMFLOW_SEARCH_PROCESSORS), then one lower-priority
    process for every other selected processor."""
    children = []
    for group in _search_path_groups(settings):
        names = [name for name in group if name in selected]
        if names:
            children.append(_Child(f"processor:{','.join(names)}", False))
    background = background_processors(settings, selected)
    if background:
        children.append(
            _Child(f"processor:{','.join(background)}", False, nice=settings.background_nice)
        )
    if len(children) < 2:
        return [_Child("processors", False)]
    return children


def _ingest_children(settings: Settings) -> list[_Child]:
    """The DICOM receiver processes: several share the port (SO_REUSEPORT)."""
    workers = settings.dicom_workers or os.cpu_count() or 1
    return [_Child("ingest", workers > 1, nice=settings.ingest_nice) for _ in range(workers)]


def supervise(roles: list[str], settings: Settings) -> int:
    """Run roles as child processes until SIGTERM/SIGINT; restart children that die."""
    name_process("serve")
    ctx = multiprocessing.get_context("spawn")
    children: list[_Child] = []
    for role in roles:
        if role == "ingest":
            children.extend(_ingest_children(settings))
        elif role == "processors":
            children.extend(_processor_children(settings, selected_processor_names(settings)))
        else:
            children.append(_Child(role, False))
    stop = _wait_for_stop()

    def start(child: _Child) -> None:
        child.process = ctx.Process(
            target=run_role,
            args=(child.role, child.reuse_port, None, child.nice),
            name=child.role,
            daemon=False,
        )
        child.process.start()
        child.started_at = time.monotonic()

    for child in children:
        start(child)
    while not stop.wait(0.5):
        for child in children:
            assert child.process is not None
            if child.process.is_alive():
                continue
            child.restarts += 1
            log.error(
                "%s exited with code %s; restarting (restart %d)",
                child.role,
                child.process.exitcode,
                child.restarts,
            )
            # A child that dies at once repeatedly is throttled, not restarted in a hot loop.
            if time.monotonic() - child.started_at < 5:
                time.sleep(min(30, 2**child.restarts))
            start(child)
    for child in children:
        if child.process is not None and child.process.is_alive():
            child.process.terminate()
    for child in children:
        if child.process is not None:
            child.process.join(timeout=30)
            if child.process.is_alive():
                child.process.kill()
    return 0


def drain_pipeline(
    settings: Settings, progress: Progress | None = None, timeout: float = 3600
) -> None:
    """Run every processor in this process until no group has anything left to do."""
    runners = build_runners(settings)
    task = progress.add_task("processing", total=None) if progress else None
    stop = threading.Event()
    threads = [threading.Thread(target=runner.run, daemon=True) for runner in runners]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            lag = sum(runner.consumer.lag() for runner in runners)
            done = sum(runner.state.processed for runner in runners)
            if progress is not None and task is not None:
                progress.update(task, completed=done, total=done + lag)
            if lag == 0:
                break
            stop.wait(0.2)
    finally:
        for runner in runners:
            runner.stop()
        for thread in threads:
            thread.join(timeout=30)


def wait_for_server(settings: Settings, progress: Progress | None, timeout: float = 3600) -> None:
    """Wait until the serving process's processors have consumed everything."""
    bus = open_bus(settings)
    classes = select(processor_classes(plugin_manager(settings.plugins)), settings.processors)
    task = progress.add_task("processing (server)", total=None) if progress else None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            lag = pipeline_lag(bus, settings.topic_prefix, classes)
            if progress is not None and task is not None:
                progress.update(task, description=f"processing (server), {lag} to go")
            if lag == 0:
                return
            time.sleep(0.2)
    finally:
        bus.close()


def wait_until_processed(settings: Settings, progress: Progress | None = None) -> None:
    """Let the pipeline catch up: the serving process's if one runs, else this process's own."""
    if is_serving(settings.data_dir):
        wait_for_server(settings, progress)
    else:
        drain_pipeline(settings, progress)
