"""What a processor is: a named consumer of logical topics that may publish new events."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import EventBus, OutgoingRecord, Record
from dicomflow.kernel.events import Topic
from dicomflow.kernel.settings import Settings


@dataclass
class ProcessorContext:
    """What the runtime hands to a processor: settings and the shared back ends."""

    settings: Settings
    bus: EventBus
    blobs: BlobStore
    spool: BlobStore
    extras: dict[str, object] = field(default_factory=dict)

    def topic(self, name: Topic | str) -> str:
        return self.bus.topic(str(name))


@dataclass(frozen=True)
class BatchResult:
    """Records to publish for a batch, and the records that failed for good (to dead-letter)."""

    publish: list[OutgoingRecord] = field(default_factory=list)
    failed: list[tuple[Record, BaseException]] = field(default_factory=list)


class Processor(ABC):
    """A consumer of the event stream, run by `dicomflow.processors.runtime`.

    Subclasses set `name` (its consumer group is ``<topic_prefix>.<name>``) and `topics`, and
    implement `handle` (one record) or override `handle_batch` (a batching sink). Handling must
    be idempotent on the SOP Instance UID: delivery is at-least-once.

    Raise `PoisonEvent` for an event that can never succeed (it goes to the dead-letter topic),
    and `BackPressure` or `BackendUnavailable` for a transient failure (the runtime waits and
    retries the batch from the last committed offset).
    """

    name: ClassVar[str]
    topics: ClassVar[tuple[Topic, ...]]
    description: ClassVar[str] = ""
    # Most records per batch. Nothing of a batch is published before all of it is handled:
    # a batch should take a fraction of a second, and be large enough to share its fixed
    # costs (one commit, one publish, one blob sync; a bulk request for an index).
    batch_size: ClassVar[int] = 100

    def __init__(self, context: ProcessorContext) -> None:
        self.context = context

    @abstractmethod
    def handle(self, record: Record) -> list[OutgoingRecord]:
        """Process one record; return the records to publish once it is done."""

    def handle_batch(self, records: Sequence[Record]) -> BatchResult:
        from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure

        result = BatchResult()
        for record in records:
            try:
                result.publish.extend(self.handle(record))
            except (BackPressure, BackendUnavailable):
                raise
            except Exception as exc:  # a processor's bug must not block the stream
                result.failed.append((record, exc))
        return result

    def after_commit(self, records: Sequence[Record]) -> None:  # noqa: B027 - optional hook
        """Called once the batch's results are published and its offsets committed.

        The place for clean-up that must not happen before the batch is safe, such as freeing
        the spool. A crash before it runs only leaves the clean-up undone.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources when the runtime stops."""
