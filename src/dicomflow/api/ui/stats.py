"""The dashboard's figures: live ones from the event log, archive-wide ones from the index.

- `EventLogFollower` reads the ``received``, ``stored`` and ``deidentified`` topics in a
  background thread of the API process (its own consumer group, never committed), and keeps
  running totals: objects and bytes received and stored per namespace, objects received per
  second (the ingest rate) and per sending AE title. It works the same on the embedded log
  and on Kafka; what Kafka's retention dropped is not counted.
- `index_figures` counts studies per study date and series per modality with bounded count
  queries on the index (one per day, one per modality), cached for a few seconds: the
  `StudyIndex` interface has no aggregation, and counts are exact where a scan would not be.
"""

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydantic import ValidationError

from dicomflow.api.ui import charts
from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.searching import MODALITIES
from dicomflow.indexer.base import Level, SearchRequest, StudyIndex, flatten
from dicomflow.indexer.query import Match, Range
from dicomflow.indexer.values import parse_date
from dicomflow.kernel.bus.base import EventBus, Record
from dicomflow.kernel.events import (
    Namespace,
    ObjectReceived,
    ObjectStored,
    SourceKind,
    Topic,
    decode_event,
)

log = logging.getLogger(__name__)

RATE_HISTORY_SECONDS = 600
RATE_BUCKET_SECONDS = 10
TOP_SENDERS = 8
DAYS_SHOWN = 30
INDEX_FIGURES_TTL = 15.0
STALLED_AFTER = 30.0


def sender_of(event: ObjectReceived) -> str:
    """Who sent an object: the calling AE title, or how it came (STOW-RS, import)."""
    source = event.source
    if source.kind is SourceKind.DIMSE:
        return source.calling_ae.strip() or "(no AE title)"
    return "STOW-RS" if source.kind is SourceKind.STOW else "import"


@dataclass
class Tally:
    """Running totals of the event log (what the follower has read so far)."""

    received: int = 0
    received_bytes: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    stored_bytes: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    per_second: dict[int, int] = field(default_factory=dict)
    records_read: int = 0
    undecodable: int = 0


@dataclass(frozen=True)
class LiveFigures:
    """A snapshot of the follower's tally, as the dashboard shows it."""

    received: int
    received_bytes: int
    stored: dict[str, int]
    stored_bytes: dict[str, int]
    senders: list[tuple[str, int]]
    rate_10s: float
    rate_60s: float
    history: list[tuple[str, int]]
    records_read: int
    records_total: int
    last_error: str

    @property
    def catching_up(self) -> bool:
        return self.records_read < self.records_total


class EventLogFollower:
    """Follows the ingest topics in a daemon thread and keeps a `Tally` (thread-safe)."""

    def __init__(self, bus: EventBus, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.topics = {
            bus.topic(Topic.RECEIVED): Topic.RECEIVED,
            bus.topic(Topic.STORED): Topic.STORED,
            bus.topic(Topic.DEIDENTIFIED): Topic.DEIDENTIFIED,
        }
        self.group = (
            f"{bus.topic_prefix}.ui.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        self._clock = clock
        self._tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ui-event-log-follower", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self.bus.consumer(self.group, list(self.topics))
                records = consumer.poll(2000, timeout=0.5)
                self.account(records)
                self._last_error = ""
            except Exception as exc:  # keep following: the dashboard shows the error
                log.warning("dashboard: reading the event log failed: %s", exc)
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(2.0)
        if consumer is not None:
            consumer.close()

    def account(self, records: Sequence[Record]) -> None:
        """Add `records` of the followed topics to the tally."""
        if not records:
            return
        horizon = int(self._clock()) - RATE_HISTORY_SECONDS
        with self._lock:
            tally = self._tally
            for record in records:
                tally.records_read += 1
                kind = self.topics.get(record.topic)
                try:
                    if kind is Topic.RECEIVED:
                        received = decode_event(record.value, ObjectReceived)
                        tally.received += 1
                        tally.received_bytes += received.blob.size
                        tally.senders[sender_of(received)] += 1
                        second = int(record.timestamp)
                        if second >= horizon:
                            tally.per_second[second] = tally.per_second.get(second, 0) + 1
                    elif kind is not None:
                        stored = decode_event(record.value, ObjectStored)
                        namespace = stored.blob.namespace.value
                        tally.stored[namespace] += 1
                        tally.stored_bytes[namespace] += stored.blob.size
                except ValidationError:
                    tally.undecodable += 1
            for second in [s for s in tally.per_second if s < horizon]:
                del tally.per_second[second]

    def figures(self, topic_sizes: dict[str, int]) -> LiveFigures:
        """A snapshot; `topic_sizes` (from the bus) tells how much is left to read."""
        now = int(self._clock())
        with self._lock:
            tally = self._tally
            per_second = dict(tally.per_second)
            snapshot = (
                tally.received,
                tally.received_bytes,
                dict(tally.stored),
                dict(tally.stored_bytes),
                tally.senders.most_common(TOP_SENDERS),
                tally.records_read,
            )
        received, received_bytes, stored, stored_bytes, senders, read = snapshot
        last_10 = sum(n for s, n in per_second.items() if now - 10 < s <= now)
        last_60 = sum(n for s, n in per_second.items() if now - 60 < s <= now)
        buckets = RATE_HISTORY_SECONDS // RATE_BUCKET_SECONDS
        start = now - now % RATE_BUCKET_SECONDS - (buckets - 1) * RATE_BUCKET_SECONDS
        history = [0] * buckets
        for second, count in per_second.items():
            slot = (second - start) // RATE_BUCKET_SECONDS
            if 0 <= slot < buckets:
                history[slot] += count
        ago = [(buckets - 1 - i) * RATE_BUCKET_SECONDS for i in range(buckets)]
        labels = [f"-{a // 60}:{a % 60:02d}" if a else "now" for a in ago]
        total = sum(topic_sizes.get(topic, 0) for topic in self.topics)
        return LiveFigures(
            received=received,
            received_bytes=received_bytes,
            stored=stored,
            stored_bytes=stored_bytes,
            senders=senders,
            rate_10s=last_10 / 10,
            rate_60s=last_60 / 60,
            history=list(zip(labels, history, strict=True)),
            records_read=read,
            records_total=max(total, read),
            last_error=self._last_error,
        )


# --- processor states -----------------------------------------------------------------------


@dataclass
class _LagSample:
    lag: int
    changed_at: float


class LagTracker:
    """Tells idle, working and stalled processors apart from how their lag moves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: dict[str, _LagSample] = {}
        self._lock = threading.Lock()

    def state(self, name: str, lag: int) -> str:
        now = self._clock()
        with self._lock:
            sample = self._samples.get(name)
            if sample is None or sample.lag != lag:
                sample = self._samples[name] = _LagSample(lag, now)
        if lag == 0:
            return "up to date"
        idle = now - sample.changed_at
        if idle >= STALLED_AFTER:
            return f"no progress for {idle:.0f} s"
        return "working"


# --- figures from the index -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexFigures:
    counts: dict[Level, int]
    per_day: charts.Chart
    modalities: charts.Chart
    latest_date: str
    computed_at: float
    took: float


def _count(index: StudyIndex, request: SearchRequest) -> int:
    return index.search(request).total


def latest_study_date(index: StudyIndex, namespace: Namespace) -> date | None:
    """The most recent study date in a namespace (the index sorts studies newest first)."""
    result = index.search(SearchRequest(namespace=namespace, level=Level.STUDY, limit=1))
    if not result.results:
        return None
    iso = parse_date(fmt.text(flatten(result.results[0]).get("StudyDate")))
    return date.fromisoformat(iso) if iso else None


def studies_per_day(
    index: StudyIndex, namespace: Namespace, last: date, days: int = DAYS_SHOWN
) -> list[tuple[str, int]]:
    """Studies per study date, for the `days` days up to `last` (one count query each)."""
    out: list[tuple[str, int]] = []
    for offset in range(days - 1, -1, -1):
        day = (last - timedelta(days=offset)).isoformat()
        query = Range("StudyDate", day, day)
        request = SearchRequest(namespace=namespace, level=Level.STUDY, query=query, limit=0)
        out.append((day, _count(index, request)))
    return out


def series_per_modality(
    index: StudyIndex, namespace: Namespace, total: int
) -> list[tuple[str, int]]:
    """Series per modality, largest first; modalities outside the usual list are "other"."""
    counted: list[tuple[str, int]] = []
    remaining = total
    for modality in MODALITIES:
        if remaining <= 0:
            break
        request = SearchRequest(
            namespace=namespace, level=Level.SERIES, query=Match("Modality", modality), limit=0
        )
        count = _count(index, request)
        if count:
            counted.append((modality, count))
            remaining -= count
    counted.sort(key=lambda item: -item[1])
    if remaining > 0:
        counted.append(("other", remaining))
    return counted


class IndexFiguresCache:
    """`index_figures` per namespace, recomputed at most every `ttl` seconds."""

    def __init__(self, ttl: float = INDEX_FIGURES_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[Namespace, IndexFigures] = {}
        self._lock = threading.Lock()

    def get(self, index: StudyIndex, namespace: Namespace) -> IndexFigures:
        with self._lock:
            cached = self._entries.get(namespace)
            if cached is not None and time.monotonic() - cached.computed_at < self.ttl:
                return cached
            figures = index_figures(index, namespace)
            self._entries[namespace] = figures
            return figures

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def index_figures(index: StudyIndex, namespace: Namespace) -> IndexFigures:
    """Counts, studies per day and series per modality of a namespace (bounded queries)."""
    started = time.monotonic()
    counts = index.counts(namespace)
    last = latest_study_date(index, namespace)
    per_day = studies_per_day(index, namespace, last) if last else []
    modalities = series_per_modality(index, namespace, counts.get(Level.SERIES, 0))
    day_labels = [(day[5:], count) for day, count in per_day]
    return IndexFigures(
        counts=counts,
        per_day=charts.columns("Studies per study date", day_labels),
        modalities=charts.bars("Series per modality", modalities),
        latest_date=last.isoformat() if last else "",
        computed_at=time.monotonic(),
        took=time.monotonic() - started,
    )


class DashboardState:
    """What the dashboard keeps between requests in one API process."""

    def __init__(self, bus: EventBus) -> None:
        self.follower = EventLogFollower(bus)
        self.lags = LagTracker()
        self.index_figures = IndexFiguresCache()

    def close(self) -> None:
        self.follower.stop()
