"""Runs processors: poll a batch, handle it, publish the results, then commit (at-least-once).

Failure handling, in the order the runtime applies it:
- `BackPressure` / `BackendUnavailable` from the processor or the bus: nothing is committed; the
  consumer seeks back to its last commit and retries after a growing pause. Nothing is dropped.
- any other exception for one record (a poison event): the record goes to the dead-letter
  topic with the group, the position and the reason, and the stream moves on.
"""

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from dicomflow.kernel.activity import ReceiveActivity
from dicomflow.kernel.bus.base import Consumer, EventBus, OutgoingRecord, Producer, Record
from dicomflow.kernel.events import DeadLetter, Topic, encode_event
from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure
from dicomflow.processors.base import BatchResult, Processor

log = logging.getLogger(__name__)

PROCESSED = Counter("dicomflow_processor_records_total", "Records processed", ["processor"])
DEAD_LETTERED = Counter(
    "dicomflow_processor_dead_letters_total", "Records sent to the dead-letter topic", ["processor"]
)
RETRIES = Counter(
    "dicomflow_processor_retries_total", "Batches retried after a transient failure", ["processor"]
)
LAG = Gauge("dicomflow_processor_lag", "Records not yet committed by the group", ["processor"])
DEFERRED = Counter(
    "dicomflow_processor_deferred_seconds_total",
    "Time a background processor held a batch back while objects were arriving",
    ["processor"],
)

_MAX_BACKOFF = 30.0
_LINGER_SLICE = 0.1


@dataclass
class RunnerState:
    """What the status page shows of one processor."""

    name: str
    processed: int = 0
    dead_lettered: int = 0
    retries: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    running: bool = False
    failed: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def group_name(topic_prefix: str, processor_name: str) -> str:
    return f"{topic_prefix}.{processor_name}"


def pipeline_lag(bus: EventBus, topic_prefix: str, classes: Mapping[str, type[Processor]]) -> int:
    """Records of their topics that these processors' consumer groups have not processed."""
    return sum(
        bus.group_lag(group_name(topic_prefix, name), [bus.topic(t) for t in cls.topics])
        for name, cls in classes.items()
    )


@dataclass(frozen=True)
class Deferral:
    """When a background processor holds a batch back: while this machine's receivers take
    objects in, until their last receive is `quiet` seconds ago or the batch's oldest event
    is `max_delay` seconds old.

    On two cores the pipeline works while objects arrive; what is not on the search path
    (de-identification, plugins) need not compete with the acknowledgements of a burst. The
    bound keeps it from waiting forever under sustained load: it then runs `max_delay`
    behind, as it would have at its lower priority.
    """

    activity: ReceiveActivity
    max_delay: float
    quiet: float = 0.5
    check_every: float = 0.1

    def may_run(self, oldest: float) -> bool:
        if self.activity.idle_seconds() >= self.quiet:
            return True
        return time.time() - oldest >= self.max_delay


class ProcessorRunner:
    """One processor's consume-process-publish-commit loop, run in a thread."""

    def __init__(
        self,
        processor: Processor,
        consumer: Consumer,
        producer: Producer,
        dead_letter_topic: str,
        batch_size: int | None = None,
        deferral: Deferral | None = None,
        linger: float = 0.0,
    ) -> None:
        self.processor = processor
        self.consumer = consumer
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        # Nothing of a batch is published before all of it is handled, so its first record
        # waits for the whole batch: each processor says how many of its records fit in a
        # fraction of a second (a batch of 500 CT objects held each one ~5 s in the metadata
        # processor of a busy machine).
        self.batch_size = batch_size or processor.batch_size
        self.deferral = deferral
        self.linger = linger
        self.state = RunnerState(processor.name)
        self._stop = threading.Event()
        self._backoff = 0.0
        self._needs_seek = False

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.state.running = True
        try:
            while not self._stop.is_set():
                self.step()
        except Exception:
            # A bug, not a back-end outage (those are retried in step): stop loudly so that the
            # process exits and its supervisor restarts it from the last commit.
            log.exception("%s: processor loop failed", self.processor.name)
            self.state.failed = True
            raise
        finally:
            log.info(
                "%s: stopped after processing %d records (%d dead-lettered)",
                self.processor.name,
                self.state.processed,
                self.state.dead_lettered,
            )
            self.state.running = False
            self.processor.close()
            self.consumer.close()

    def step(self, timeout: float = 0.5) -> int:
        """Poll and process one batch; returns how many records were committed."""
        try:
            if self._needs_seek:
                # After a failed batch, go back to the last commit before reading on.
                self.consumer.seek_to_committed()
                self._needs_seek = False
            records = self.consumer.poll(self.batch_size, timeout=timeout)
            if records and len(records) < self.batch_size and self.linger > 0:
                records = self._top_up(records)
        except (BackPressure, BackendUnavailable) as exc:
            self._retry_later(exc)
            return 0
        if not records:
            self._update_lag()
            return 0
        if self.deferral is not None and not self._wait_for_quiet(records):
            self._needs_seek = True  # stopped while waiting: nothing of the batch was done
            return 0
        try:
            # One durability point for the blobs of the whole batch, before anything announces
            # them (the publish below).
            with self.processor.context.blobs.batch():
                result = self._handle(records)
            dead = [self._dead_letter(record, exc) for record, exc in result.failed]
            self.producer.publish_many([*result.publish, *dead])
            self.consumer.commit(records)
        except (BackPressure, BackendUnavailable) as exc:
            self._retry_later(exc)
            return 0
        try:
            self.processor.after_commit(records)
        except Exception as exc:  # the batch is safe; a failed clean-up is only reported
            log.warning("%s: clean-up after commit failed: %s", self.processor.name, exc)
        self._backoff = 0.0
        self.state.processed += len(records)
        self.state.dead_lettered += len(result.failed)
        PROCESSED.labels(self.processor.name).inc(len(records))
        if result.failed:
            DEAD_LETTERED.labels(self.processor.name).inc(len(result.failed))
        self._update_lag()
        return len(records)

    def _top_up(self, records: list[Record]) -> list[Record]:
        """Poll on for up to `linger` after a short batch: a steady trickle of records (a
        C-STORE stream) otherwise makes batches of a few, each paying a batch's fixed cost."""
        deadline = time.monotonic() + self.linger
        while len(records) < self.batch_size and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # In slices, so that a runner told to stop does not sit out a long linger.
            wait = min(remaining, _LINGER_SLICE)
            records.extend(self.consumer.poll(self.batch_size - len(records), timeout=wait))
        return records

    def _wait_for_quiet(self, records: Sequence[Record]) -> bool:
        """Hold the batch back as the deferral says; False if the runner stopped meanwhile."""
        assert self.deferral is not None
        oldest = min(record.timestamp for record in records)
        if self.deferral.may_run(oldest):
            return True
        started = time.monotonic()
        try:
            while not self.deferral.may_run(oldest):
                if self._stop.wait(self.deferral.check_every):
                    return False
            return True
        finally:
            DEFERRED.labels(self.processor.name).inc(time.monotonic() - started)

    def _handle(self, records: Sequence[Record]) -> BatchResult:
        try:
            return self.processor.handle_batch(records)
        except (BackPressure, BackendUnavailable):
            raise
        except Exception:
            if len(records) == 1:
                raise
            # A batching sink failed as a whole: retry record by record to isolate the poison.
            merged = BatchResult()
            for record in records:
                try:
                    single = self.processor.handle_batch([record])
                except (BackPressure, BackendUnavailable):
                    raise
                except Exception as exc:
                    merged.failed.append((record, exc))
                    continue
                merged.publish.extend(single.publish)
                merged.failed.extend(single.failed)
            return merged

    def _dead_letter(self, record: Record, exc: BaseException) -> OutgoingRecord:
        reason = str(exc) or type(exc).__name__
        log.warning(
            "dead-lettered %s[%d]@%d in %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self.processor.name,
            reason,
        )
        self.state.last_error = reason
        self.state.last_error_at = time.time()
        letter = DeadLetter(
            group=self.processor.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            payload=record.value,
            error_type=type(exc).__name__,
            reason=reason[:2000],
        )
        return OutgoingRecord(self.dead_letter_topic, record.key, encode_event(letter))

    def _retry_later(self, exc: BaseException) -> None:
        self._needs_seek = True
        retry_after = exc.retry_after if isinstance(exc, BackPressure) else 0.0
        self._backoff = min(_MAX_BACKOFF, max(retry_after, self._backoff * 2 or 0.5))
        self.state.retries += 1
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        self.state.last_error_at = time.time()
        RETRIES.labels(self.processor.name).inc()
        log.warning(
            "%s: transient failure, retrying in %.1fs: %s", self.processor.name, self._backoff, exc
        )
        self._stop.wait(self._backoff)

    def _update_lag(self) -> None:
        # Lag is only a metric: a bus error here surfaces in the next poll.
        with contextlib.suppress(Exception):
            LAG.labels(self.processor.name).set(self.consumer.lag())


def dead_letter_topic(topic_prefix: str) -> str:
    return f"{topic_prefix}.{Topic.DEAD_LETTER}"
