"""The receive path: raw PDUs into both DICOM acceptors, datasets and files into the receiver.

Input layouts (the first bytes choose what a network peer would have chosen):

- ``fastpath``, ``pynetdicom``: one byte of read size (0: whole reads, n: n bytes per read),
  then the bytes a peer sends on a fresh connection (PDUs, A-ASSOCIATE-RQ first).
- ``dataset``, ``durable``: one byte choosing the negotiated transfer syntax, one byte of
  command options (AffectedSOPInstanceUID / Class UID given or not), then the dataset.
- ``part10``, ``metadata``: a Part 10 object (preamble, file meta, dataset).
"""

import itertools
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import _PDU_TYPES
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA

from dicomflow.ingest.access import AccessGuard
from dicomflow.ingest.exceptions import InvalidObject
from dicomflow.ingest.receiver import DurableReceiver, identity_of, identity_of_file_bytes
from dicomflow.ingest.scp import (
    STATUS_SUCCESS,
    TRANSFER_SYNTAXES,
    build_ae,
    make_fast_acceptor,
    make_store_handler,
    store_encoded,
)
from dicomflow.kernel.backends import open_bus
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import Record
from dicomflow.kernel.events import (
    BlobRef,
    InstanceIdentity,
    Namespace,
    ObjectStored,
    Source,
    SourceKind,
    encode_event,
)
from dicomflow.kernel.settings import Settings
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.metadata import MetadataProcessor
from fuzz import seeds
from fuzz.harness import ErrorLogTrap, MemoryBlobStore, NullBus, ScriptedSocket, split_pdus

OneInput = Callable[[bytes], None]
SOURCE = Source(kind=SourceKind.DIMSE, calling_ae="FUZZSCU", address="127.0.0.1:4242")
# DIMSE statuses of IngestError refusals: anything else from a store is a processing failure.
REFUSALS = frozenset({0xC000, 0xC210, 0xA700})
_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def _settings(workdir: Path) -> Settings:
    return Settings(data_dir=workdir / "data", dev_mode=True)


def _memory_receiver() -> DurableReceiver:
    return DurableReceiver(MemoryBlobStore(), NullBus(), max_object_bytes=1 << 20)


def check_store_status(status: int | Dataset) -> None:
    """A C-STORE status must be success or the refusal of a documented IngestError."""
    code = int(status.Status) if isinstance(status, Dataset) else status
    if code != STATUS_SUCCESS and code not in REFUSALS:
        raise AssertionError(f"C-STORE answered 0x{code:04X}")


# --- raw PDUs ----------------------------------------------------------------------------------


def seeds_streams() -> Iterator[bytes]:
    for stream in seeds.pdu_streams():
        yield b"\x00" + stream
        yield b"\x05" + stream  # five bytes per read: every header is split


def build_fastpath(workdir: Path) -> OneInput:
    """The hand-written acceptor serving a whole connection, store included (in memory)."""
    settings = _settings(workdir)
    acceptor = make_fast_acceptor(build_ae(settings), _memory_receiver(), settings, AccessGuard())
    trap = ErrorLogTrap.install()

    def one(data: bytes) -> None:
        if not data:
            return
        sock = ScriptedSocket(data[1:], chunk=data[0] or 1 << 16)
        with trap:
            acceptor.serve(cast(Any, sock), ("127.0.0.1", 4242))
        # Whatever happened, what went back to the peer is a sequence of whole PDUs.
        sent = bytes(sock.sent)
        if sum(len(pdu) for pdu in split_pdus(sent)) != len(sent):
            raise AssertionError(f"the acceptor sent malformed PDUs: {sent[:64]!r}")

    return one


def build_pynetdicom(workdir: Path) -> OneInput:
    """pynetdicom's decoding of what a peer sends, as scp.py uses it, and our C-STORE handler.

    What pynetdicom does per PDU without threads or sockets: decode it (dul.py), make it a
    primitive (the state machine's actions), assemble P-DATA into a DIMSE message
    (dimse.py) and hand a C-STORE request to the handler that scp.py registers. An exception
    in pynetdicom's own decoding is answered by pynetdicom with an A-ABORT (its DUL and
    state machine catch everything), so only the handler's result is checked here.
    """
    handle_store = make_store_handler(_memory_receiver(), AccessGuard())
    trap = ErrorLogTrap.install()
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(ae_title="FUZZSCU", address="127.0.0.1", port=4242),
        acceptor=SimpleNamespace(ae_title="DICOMFLOW"),
        dimse=SimpleNamespace(),  # no size-limited receiver: nothing was dropped
    )

    def one(data: bytes) -> None:
        syntaxes: dict[int, str] = {}
        message = DIMSEMessage()
        for raw in split_pdus(data[1:]):
            try:
                pdu_class, _ = _PDU_TYPES[raw[0:1]]
                pdu = pdu_class()
                pdu.decode(raw)
                primitive = pdu.to_primitive()
            except Exception:  # pynetdicom: Evt19, A-ABORT
                return
            if isinstance(primitive, A_ASSOCIATE):
                for context in primitive.presentation_context_definition_list:
                    if context.context_id is not None and context.transfer_syntax:
                        syntaxes[context.context_id] = str(context.transfer_syntax[0])
                continue
            if not isinstance(primitive, P_DATA):
                continue
            try:
                if not message.decode_msg(primitive):
                    continue
                request = message.message_to_primitive()
            except Exception:  # pynetdicom: Evt19, A-ABORT
                return
            context_id = message.context_id
            message = DIMSEMessage()
            if not isinstance(request, C_STORE):
                continue
            if request.DataSet is None or context_id not in syntaxes:
                continue  # pynetdicom refuses these before any handler runs
            event = SimpleNamespace(
                assoc=assoc,
                request=request,
                context=SimpleNamespace(transfer_syntax=syntaxes[context_id]),
            )
            with trap:
                status = handle_store(event)
            check_store_status(status)

    return one


# --- datasets and files ------------------------------------------------------------------------


def seeds_datasets() -> Iterator[bytes]:
    indexes = {syntax: n for n, syntax in enumerate(TRANSFER_SYNTAXES)}
    options = itertools.cycle(range(4))
    for syntax, encoded in seeds.encoded_datasets():
        if syntax in indexes:
            yield bytes((indexes[syntax], next(options))) + encoded


def _store_function(receiver: DurableReceiver) -> OneInput:
    """`store_encoded` as both acceptors call it, on the input's syntax and command options."""
    trap = ErrorLogTrap.install()

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        syntax = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)]
        sop_instance = "1.2.3.4" if data[1] & 1 else ""  # given: it must match the dataset
        sop_class = _SOP_CLASS if data[1] & 2 else ""
        with trap:
            status = store_encoded(receiver, data[2:], syntax, sop_class, sop_instance, SOURCE)
        check_store_status(status)

    return one


def build_dataset(workdir: Path) -> OneInput:
    """scan_identity, pydicom's fallback, identity checks, file meta, receive (in memory)."""
    return _store_function(_memory_receiver())


def build_durable(workdir: Path) -> OneInput:
    """The same on the real spool (fsync'd files) and the embedded event bus (SQLite)."""
    settings = _settings(workdir)
    spool_root = workdir / "spool"
    receiver = DurableReceiver(
        FilesystemBlobStore(spool_root), open_bus(settings), max_object_bytes=1 << 20
    )
    store = _store_function(receiver)
    count = itertools.count(1)

    def one(data: bytes) -> None:
        store(data)
        if next(count) % 1000 == 0:  # the spool is nobody's to empty here
            shutil.rmtree(spool_root / Namespace.SPOOL.value, ignore_errors=True)

    return one


def seeds_files() -> Iterator[bytes]:
    yield from seeds.part10_files()


def build_part10(workdir: Path) -> OneInput:
    """The identity of a Part 10 object (STOW-RS, import): scanner first, pydicom otherwise.

    Where both the scanner and pydicom read the object, they must find the same UIDs.
    """
    from dicomflow.ingest.receiver import parse_header

    def one(data: bytes) -> None:
        try:
            identity = identity_of_file_bytes(data)
        except InvalidObject:
            return
        try:
            ds = parse_header(data)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            expected = identity_of(ds, syntax)
        except (InvalidObject, AttributeError):
            return
        if identity != expected:
            raise AssertionError(f"scanner {identity} != pydicom {expected}")

    return one


def build_metadata(workdir: Path) -> OneInput:
    """The metadata processor on a stored object: DICOM JSON, search fields, its event."""
    blobs = MemoryBlobStore()
    context = ProcessorContext(_settings(workdir), NullBus(), blobs, MemoryBlobStore())
    processor = MetadataProcessor(context)
    identity = InstanceIdentity(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid=_SOP_CLASS,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    received = datetime(2024, 1, 15, tzinfo=UTC)

    def one(data: bytes) -> None:
        ref: BlobRef = blobs.put(Namespace.ORIGINAL, "1.2.3/1.2.3.4/1.2.3.4.5.dcm", data)
        event = ObjectStored(identity=identity, blob=ref, source=SOURCE, received_at=received)
        record = Record("stored", 0, 0, "1.2.3", encode_event(event), 0.0)
        try:
            processor.handle(record)
        except PoisonEvent:
            return

    return one
