"""The embedded event bus: a durable, append-only log in one SQLite file (WAL, fsync on commit).

Why SQLite: it gives crash-safe appends, multi-process access (the SCP workers, the import
command and the processors may be separate processes on one data directory) and cheap indexed
reads, with nothing to install. Each topic has one partition here: ordering is total, which is
stronger than Kafka's per-key ordering, so code written against the interface works on both.

Group commit: concurrent publishers in one process hand their records to one writer thread,
which appends everything pending in a single transaction (one fsync) and then releases them all.
"""

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from dicomflow.kernel.bus.base import Consumer, EventBus, OutgoingRecord, Producer, Record
from dicomflow.kernel.exceptions import BackendUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    headers TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (topic, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic)
);
"""

_POLL_INTERVAL = 0.02
# Another process's appends are only seen by looking: every _POLL_INTERVAL while records flow
# (each hop of the pipeline between processes waited up to 100 ms before), every
# _IDLE_POLL_INTERVAL once a consumer has found nothing for _IDLE_AFTER seconds.
_IDLE_POLL_INTERVAL = 0.1
_IDLE_AFTER = 1.0


def _connect(path: Path, durable: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsync'd at every commit, so a returned append survives power loss.
    # NORMAL (consumers: they only write offsets): no fsync per commit. A power cut may then
    # forget the last offset commits, never a record: the batches after the last durable
    # commit are delivered again, which every sink takes idempotently (at-least-once). An
    # offset commit so saves one fsync per batch and per hop of the pipeline.
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


class _GroupCommitter:
    """One writer thread per process: appends every pending batch in one transaction."""

    def __init__(self, path: Path, on_append: threading.Condition) -> None:
        self._conn = _connect(path)
        self._pending: list[tuple[Sequence[OutgoingRecord], Future[None]]] = []
        self._lock = threading.Condition()
        self._on_append = on_append
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

    def submit(self, records: Sequence[OutgoingRecord]) -> Future[None]:
        """Queue records for the next transaction; the future is done once they are durable."""
        done: Future[None] = Future()
        with self._lock:
            if self._closed:
                done.set_exception(BackendUnavailable("the embedded event log is closed"))
                return done
            self._pending.append((records, done))
            self._lock.notify()
        return done

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending, []
            try:
                self._append([r for records, _ in batch for r in records])
            except Exception as exc:  # every waiter must learn that its append failed
                failure = BackendUnavailable(f"event log append failed: {exc}")
                for _, done in batch:
                    done.set_exception(failure)
                continue
            for _, done in batch:
                done.set_result(None)
            with self._on_append:
                self._on_append.notify_all()

    def _append(self, records: list[OutgoingRecord]) -> None:
        conn = self._conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            next_offsets: dict[str, int] = {}
            rows = []
            for record in records:
                if record.topic not in next_offsets:
                    row = conn.execute(
                        "SELECT next_offset FROM topics WHERE name = ?", (record.topic,)
                    ).fetchone()
                    next_offsets[record.topic] = row[0] if row else 0
                offset = next_offsets[record.topic]
                next_offsets[record.topic] = offset + 1
                headers = json.dumps(record.headers) if record.headers else None
                rows.append((record.topic, offset, record.key, record.value, headers, now))
            conn.executemany(
                "INSERT INTO records (topic, offset, key, value, headers, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO topics (name, next_offset) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET next_offset = excluded.next_offset",
                list(next_offsets.items()),
            )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk): a second
            # ROLLBACK would fail and hide the reason.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self._conn.close()


class EmbeddedProducer(Producer):
    def __init__(self, committer: _GroupCommitter) -> None:
        self._committer = committer

    def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        if records:
            self._committer.submit(records).result()

    def begin_publish(self, records: Sequence[OutgoingRecord]) -> Future[None]:
        if records:
            return self._committer.submit(records)
        return super().begin_publish(records)


def _to_record(row: tuple[str, int, str | None, bytes, str | None, float]) -> Record:
    topic, offset, key, value, headers, ts = row
    return Record(
        topic=topic,
        partition=0,
        offset=offset,
        key=key,
        value=bytes(value),
        timestamp=ts,
        headers=json.loads(headers) if headers else {},
    )


class EmbeddedConsumer(Consumer):
    def __init__(
        self, path: Path, group: str, topics: Sequence[str], on_append: threading.Condition
    ) -> None:
        self._conn = _connect(path, durable=False)
        self._group = group
        self._topics = list(topics)
        self._on_append = on_append
        self._positions: dict[str, int] = {}
        self._last_found = 0.0
        self.seek_to_committed()

    def _committed(self) -> dict[str, int]:
        marks = ",".join("?" * len(self._topics))
        rows = self._conn.execute(
            f"SELECT topic, next_offset FROM group_offsets WHERE group_id = ? "
            f"AND topic IN ({marks})",
            (self._group, *self._topics),
        ).fetchall()
        committed = {topic: 0 for topic in self._topics}
        committed.update(dict(rows))
        return committed

    def seek_to_committed(self) -> None:
        self._positions = self._committed()

    def seek_to_beginning(self) -> None:
        self._positions = {topic: 0 for topic in self._topics}

    def _fetch(self, max_records: int) -> list[Record]:
        records: list[Record] = []
        for topic in self._topics:
            if len(records) >= max_records:
                break
            rows = self._conn.execute(
                "SELECT topic, offset, key, value, headers, ts FROM records "
                "WHERE topic = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, self._positions[topic], max_records - len(records)),
            ).fetchall()
            if rows:
                self._positions[topic] = rows[-1][1] + 1
                records.extend(_to_record(row) for row in rows)
        return records

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            records = self._fetch(max_records)
            now = time.monotonic()
            if records:
                self._last_found = now
                return records
            remaining = deadline - now
            if remaining <= 0:
                return records
            idle = now - self._last_found > _IDLE_AFTER
            interval = _IDLE_POLL_INTERVAL if idle else _POLL_INTERVAL
            # Woken at once by appends of this process; other processes' appends are seen
            # at the next interval.
            with self._on_append:
                self._on_append.wait(min(remaining, interval))

    def commit(self, records: Sequence[Record]) -> None:
        last: dict[str, int] = {}
        for record in records:
            last[record.topic] = max(last.get(record.topic, -1), record.offset)
        if not last:
            return
        try:
            self._conn.executemany(
                "INSERT INTO group_offsets (group_id, topic, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT(group_id, topic) DO UPDATE SET next_offset = excluded.next_offset",
                [(self._group, topic, offset + 1) for topic, offset in last.items()],
            )
        except sqlite3.OperationalError as exc:  # a full disk, a lock held too long
            raise BackendUnavailable(f"committing offsets failed: {exc}") from exc

    def lag(self) -> int:
        return _lag(self._conn, self._committed())

    def close(self) -> None:
        self._conn.close()


def _lag(conn: sqlite3.Connection, committed: dict[str, int]) -> int:
    total = 0
    for topic, position in committed.items():
        row = conn.execute("SELECT next_offset FROM topics WHERE name = ?", (topic,)).fetchone()
        total += max(0, (row[0] if row else 0) - position)
    return total


class EmbeddedBus(EventBus):
    """The durable local event log under ``<data_dir>/events``."""

    def __init__(self, directory: Path, topic_prefix: str = "dicomflow") -> None:
        super().__init__(topic_prefix)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "events.sqlite3"
        conn = _connect(self.path)
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._conn_lock = threading.Lock()
        self._on_append = threading.Condition()
        self._committer: _GroupCommitter | None = None
        self._committer_lock = threading.Lock()

    def producer(self) -> Producer:
        with self._committer_lock:
            if self._committer is None:
                self._committer = _GroupCommitter(self.path, self._on_append)
            return EmbeddedProducer(self._committer)

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        return EmbeddedConsumer(self.path, group, topics, self._on_append)

    def topic_sizes(self) -> dict[str, int]:
        with self._conn_lock:
            return dict(self._conn.execute("SELECT name, next_offset FROM topics").fetchall())

    def group_lag(self, group: str, topics: Sequence[str]) -> int:
        with self._conn_lock:
            marks = ",".join("?" * len(topics))
            rows = self._conn.execute(
                f"SELECT topic, next_offset FROM group_offsets WHERE group_id = ? "
                f"AND topic IN ({marks})",
                (group, *topics),
            ).fetchall()
            committed = {topic: 0 for topic in topics}
            committed.update(dict(rows))
            return _lag(self._conn, committed)

    def read(self, topic: str, offset: int = 0, limit: int = 100) -> list[Record]:
        with self._conn_lock:
            rows = self._conn.execute(
                "SELECT topic, offset, key, value, headers, ts FROM records "
                "WHERE topic = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, offset, limit),
            ).fetchall()
        return [_to_record(row) for row in rows]

    def close(self) -> None:
        with self._committer_lock:
            if self._committer is not None:
                self._committer.close()
                self._committer = None
        self._conn.close()
