"""Reindex: rebuild one namespace of the search index from the metadata topic.

The index is a projection of ``dicomflow.metadata`` (docs/events.md), so a rebuild clears the
namespace and replays the topic from its beginning into the index, in a thread of the API
process, with a consumer group of its own (``<prefix>.reindex.<namespace>.<run id>``) that it
commits as it goes: its lag is the work left, on the embedded log and on Kafka alike.

Why not reset the index processor's group instead: the group belongs to a running processor
(maybe in another process or on another host) that keeps its own position and would commit
over a reset; Kafka refuses to reset an active group at all. Replaying beside it is safe,
because indexing is idempotent by (namespace, SOP Instance UID): the live processor goes on
indexing new objects while the replay brings back the old ones. Should the API process stop
during a rebuild, the namespace stays partly indexed until the rebuild is started again.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pydantic import ValidationError

from dicomflow.api.exceptions import ApiError
from dicomflow.indexer.base import StudyIndex
from dicomflow.kernel.bus.base import Consumer, EventBus
from dicomflow.kernel.events import MetadataExtracted, Namespace, Topic, decode_event
from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure

log = logging.getLogger(__name__)

BATCH = 500
MAX_TRANSIENT_FAILURES = 30


class ReindexRunning(ApiError):
    """A reindex is running already; wait for it to finish."""


class ReindexState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReindexProgress:
    """Where a rebuild is: records of the metadata topic read, of how many, and indexed."""

    state: ReindexState = ReindexState.IDLE
    namespace: Namespace | None = None
    run_id: str = ""
    read: int = 0
    total: int = 0
    indexed: int = 0
    skipped: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""

    @property
    def percent(self) -> int:
        if self.state is ReindexState.DONE:
            return 100
        if self.total <= 0:
            return 0
        return min(99, int(100 * self.read / self.total))

    @property
    def elapsed(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


@dataclass
class Reindexer:
    """Runs at most one rebuild at a time in this process and reports its progress."""

    bus: EventBus
    index: StudyIndex
    on_done: Callable[[], None] | None = None
    _progress: ReindexProgress = field(default_factory=ReindexProgress)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def progress(self) -> ReindexProgress:
        with self._lock:
            return self._progress

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)  # type: ignore[arg-type]

    def start(self, namespace: Namespace) -> ReindexProgress:
        """Clear `namespace` and start replaying into it; raises ReindexRunning."""
        with self._lock:
            if self._progress.state is ReindexState.RUNNING:
                raise ReindexRunning(
                    f"a reindex of {self._progress.namespace} is running "
                    f"({self._progress.percent}%); wait until it is done"
                )
            topic = self.bus.topic(Topic.METADATA)
            self._progress = ReindexProgress(
                state=ReindexState.RUNNING,
                namespace=namespace,
                run_id=uuid.uuid4().hex[:12],
                total=self.bus.topic_sizes().get(topic, 0),
                started_at=time.time(),
            )
            self._stop.clear()
            progress = self._progress
            self._thread = threading.Thread(
                target=self._run, args=(progress,), name="reindex", daemon=True
            )
            self._thread.start()
        return progress

    def stop(self) -> None:
        """Stop a running rebuild (at application shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def wait(self, timeout: float) -> ReindexProgress:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.progress

    def _run(self, progress: ReindexProgress) -> None:
        namespace = progress.namespace
        assert namespace is not None
        group = f"{self.bus.topic_prefix}.reindex.{namespace.value}.{progress.run_id}"
        consumer: Consumer | None = None
        try:
            self.index.clear(namespace)
            consumer = self.bus.consumer(group, [self.bus.topic(Topic.METADATA)])
            self._replay(consumer, namespace)
        except Exception as exc:
            log.exception("reindex of %s failed", namespace)
            self._update(state=ReindexState.FAILED, error=str(exc)[:500], finished_at=time.time())
        finally:
            if consumer is not None:
                consumer.close()
            if self.on_done is not None:
                self.on_done()

    def _replay(self, consumer: Consumer, namespace: Namespace) -> None:
        failures = 0
        read = indexed = skipped = 0
        while not self._stop.is_set():
            records = consumer.poll(BATCH, timeout=0.5)
            if not records:
                if consumer.lag() == 0:
                    self._update(state=ReindexState.DONE, finished_at=time.time())
                    log.info("reindex of %s done: %d objects", namespace, indexed)
                    return
                continue
            events: list[MetadataExtracted] = []
            for record in records:
                try:
                    event = decode_event(record.value, MetadataExtracted)
                except ValidationError:
                    skipped += 1  # the index processor dead-letters it already
                    continue
                if event.namespace is namespace:
                    events.append(event)
            try:
                self.index.upsert(events)
            except (BackPressure, BackendUnavailable) as exc:
                failures += 1
                if failures > MAX_TRANSIENT_FAILURES:
                    raise
                log.warning("reindex: index busy (%s); retrying the batch", exc)
                consumer.seek_to_committed()
                self._stop.wait(min(5.0, 0.2 * failures))
                continue
            failures = 0
            consumer.commit(records)
            read += len(records)
            indexed += len(events)
            self._update(read=read, indexed=indexed, skipped=skipped)
        self._update(state=ReindexState.STOPPED, finished_at=time.time())
