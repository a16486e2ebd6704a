"""What the fuzz targets share: crash detection through the logs, in-memory back ends, a socket.

Edges such as the SCP catch every exception so that one bad object never takes the server
down; they log the unexpected ones with a traceback (``log.exception``) and answer a generic
failure. For the fuzzer such a log record is a crash: `ErrorLogTrap` turns it back into an
exception that names the original one.
"""

import logging
import socket
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from dicomflow.kernel.blobs.base import BlobStore, check_key, sha256_of
from dicomflow.kernel.bus.base import Consumer, EventBus, OutgoingRecord, Producer, Record
from dicomflow.kernel.events import BlobRef, Namespace
from dicomflow.kernel.exceptions import BlobNotFound


class UnexpectedError(Exception):
    """An error that the code under test logged with a traceback instead of raising it."""


class ErrorLogTrap(logging.Handler):
    """Collects ERROR records with exception info from dicomflow's loggers.

    Installed on the ``dicomflow`` logger (which then stops propagating: warnings about
    refused input are expected by the million and are not printed). Third-party libraries'
    loggers are silenced: pynetdicom logs every malformed PDU it refuses, as it should.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)

    @classmethod
    def install(cls) -> "ErrorLogTrap":
        trap = cls()
        logger = logging.getLogger("dicomflow")
        logger.handlers = [trap]
        logger.setLevel(logging.ERROR)
        logger.propagate = False
        for name in ("pynetdicom", "pydicom", "luqum"):
            quiet = logging.getLogger(name)
            quiet.setLevel(logging.CRITICAL + 1)
            quiet.propagate = False
        return trap

    def check(self) -> None:
        """Raise `UnexpectedError` (from the logged exception) if anything was trapped."""
        if not self.records:
            return
        record, self.records = self.records[0], []
        assert record.exc_info is not None
        error = record.exc_info[1]
        # The logged traceback in the message: the fuzzer prints only the raised one.
        logged = "".join(traceback.format_exception(*record.exc_info))
        raise UnexpectedError(f"{record.name}: {record.getMessage()}\n{logged}") from error

    def __enter__(self) -> "ErrorLogTrap":
        self.records = []
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.check()


class MemoryBlobStore(BlobStore):
    """A blob store in a dict, keeping only the last `keep` objects (fuzzing writes millions)."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self.objects: dict[tuple[Namespace, str], bytes] = {}

    def put(self, namespace: Namespace, key: str, data: bytes) -> BlobRef:
        check_key(key)
        self.objects[namespace, key] = data
        while len(self.objects) > self.keep:
            del self.objects[next(iter(self.objects))]
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=sha256_of(data))

    def get(self, namespace: Namespace, key: str) -> bytes:
        try:
            return self.objects[namespace, key]
        except KeyError:
            raise BlobNotFound(f"{namespace}/{key}") from None

    def stat(self, namespace: Namespace, key: str) -> BlobRef | None:
        data = self.objects.get((namespace, key))
        if data is None:
            return None
        return BlobRef(namespace=namespace, key=key, size=len(data), sha256=sha256_of(data))

    def delete(self, namespace: Namespace, key: str) -> None:
        self.objects.pop((namespace, key), None)

    def keys(self, namespace: Namespace, prefix: str = "") -> Iterator[str]:
        return iter([k for ns, k in self.objects if ns == namespace and k.startswith(prefix)])

    def local_path(self, namespace: Namespace, key: str) -> Path | None:
        return None


class CountingProducer(Producer):
    """Counts what is published and drops it."""

    def __init__(self) -> None:
        self.published = 0

    def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        self.published += len(records)


class NullBus(EventBus):
    """A bus that only produces (the receive path never consumes)."""

    def producer(self) -> Producer:
        return CountingProducer()

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        raise NotImplementedError("the fuzzing bus only produces")

    def topic_sizes(self) -> dict[str, int]:
        return {}

    def group_lag(self, group: str, topics: Sequence[str]) -> int:
        return 0

    def read(self, topic: str, offset: int = 0, limit: int = 100) -> list[Record]:
        return []


class ScriptedSocket:
    """A connected socket whose peer sends `incoming` and then closes the connection.

    Reads hand out at most `chunk` bytes at a time (as TCP may), so that the code under test
    meets short reads; what it sends is collected in `sent`. Never blocks.
    """

    def __init__(self, incoming: bytes, chunk: int = 1 << 16) -> None:
        self.incoming = incoming
        self.position = 0
        self.chunk = max(1, chunk)
        self.sent = bytearray()

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = self.incoming[self.position : self.position + size]
        if not flags & socket.MSG_PEEK:
            data = data[: self.chunk]
            self.position += len(data)
        return data

    def recv_into(self, buffer: memoryview, size: int = 0) -> int:
        size = min(size or len(buffer), self.chunk)
        data = self.incoming[self.position : self.position + size]
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, timeout: float | None) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass


def split_pdus(stream: bytes) -> Iterator[bytes]:
    """The PDUs of a byte stream as a peer sends them (type, reserved, 4-byte length, body)."""
    position = 0
    while position + 6 <= len(stream):
        length = int.from_bytes(stream[position + 2 : position + 6], "big")
        yield stream[position : position + 6 + length]
        position += 6 + length
