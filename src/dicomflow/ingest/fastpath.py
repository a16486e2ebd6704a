"""A direct acceptor for plain storage and query associations, beside pynetdicom.

pynetdicom runs two polling threads per association (its DUL and association reactors sleep
1 ms per loop) and decodes every PDU into primitives: about 2.5-3 ms of CPU and one or two
polling delays per object or per C-FIND response, more than Orthanc needs to answer. This
module serves the common cases directly, one blocking thread per association: read a PDU,
answer.

Which association goes where is decided before anything is read: the A-ASSOCIATE-RQ is
peeked at (MSG_PEEK), and only an association whose every presentation context proposes a
storage SOP class, Verification or (when a `FindService` is given) a C-FIND information
model, with nothing else negotiated (no user identity, role selection, asynchronous window or
extended negotiation), is served here. Everything else (an association that proposes C-MOVE
or C-GET, unusual requests, errors) is left untouched on the socket for pynetdicom, which
answers exactly as before: C-MOVE and C-GET are served by pynetdicom only.

The protocol parts (`pdu`) are those of PS3.8 (upper layer PDUs) and PS3.7 (command sets,
implicit VR little endian): the acceptor negotiates like pynetdicom (the first of its transfer
syntaxes that the requestor proposes), honours the requestor's maximum PDU length, answers
A-RELEASE and stops on A-ABORT; anything unexpected in an established association is
answered by an A-ABORT, as the standard's state machine does. C-FIND (`findpath`) checks for
a C-CANCEL-RQ between matches without blocking.
"""

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicomflow.ingest import pdu
from dicomflow.ingest.findpath import (
    FindRequest,
    FindService,
    decode_identifier,
    encode_find_response,
    serve_find,
)
from dicomflow.ingest.pdu import Abort, AssociateRequest, NotForUs

log = logging.getLogger(__name__)

_MAX_RQ_BYTES = 1 << 20  # larger associate requests are left to pynetdicom
_PREALLOCATED_BYTES = 4 << 20  # larger PDUs are read in parts of this size


def _status_fields(status: int | Dataset) -> tuple[int, str]:
    if isinstance(status, Dataset):
        return int(status.Status), str(status.get("ErrorComment", "") or "")
    return status, ""


StoreFunction = Callable[[bytes, str, str, str, str, str, str], int | Dataset]
"""(encoded dataset, transfer syntax, SOP class, SOP instance, calling AE, called AE,
address) -> status of the C-STORE."""

AdmitFunction = Callable[[AssociateRequest, tuple[str, int]], tuple[int, int, int] | None]
"""(association request, peer address) -> the A-ASSOCIATE-RJ (result, source, reason) to
answer with, or None to accept."""

OUT_OF_RESOURCES = 0xA700


def _admit_all(request: AssociateRequest, address: tuple[str, int]) -> None:
    return None


@dataclass
class FastAcceptor:
    """Serves plain storage (and, with `find`, C-FIND) associations on sockets accepted by
    the association server."""

    store: StoreFunction
    supported: frozenset[str]  # storage SOP classes and Verification
    transfer_syntaxes: list[str]
    max_pdu: int
    implementation_uid: str
    implementation_version: str
    acse_timeout: float = 30
    network_timeout: float = 60
    can_accept: Callable[[], bool] = lambda: True
    admit: AdmitFunction = _admit_all
    max_object_bytes: int = 0  # 0: no limit; larger datasets are read, dropped and refused
    find: FindService | None = None  # the C-FIND SCP, if the query service is configured
    _sockets: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._sockets)

    @property
    def abstract_syntaxes(self) -> frozenset[str]:
        """Every abstract syntax an association may propose to be served here."""
        if self.find is None:
            return self.supported
        return self.supported | frozenset(self.find.contexts)

    def peek_request(self, sock: socket.socket) -> AssociateRequest | None:
        """The A-ASSOCIATE-RQ waiting on `sock` if this acceptor serves it (nothing is read)."""
        sock.settimeout(self.acse_timeout)
        head = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
        if not head:
            raise ConnectionError("the peer closed the connection before any request")
        if len(head) < 6 or head[0] != pdu.ASSOCIATE_RQ:
            return None
        length = pdu.BE32.unpack_from(head, 2)[0]
        if length > _MAX_RQ_BYTES:
            return None
        data = sock.recv(6 + length, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(data) < 6 + length:
            return None
        try:
            return pdu.parse_associate_rq(data, self.abstract_syntaxes)
        except NotForUs as why:
            log.debug("association left to pynetdicom: %s", why)
            return None

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """Serve the association on `sock`; False (nothing read) if pynetdicom should."""
        try:
            request = self.peek_request(sock)
        except (ConnectionError, TimeoutError) as exc:
            # Closed or silent before any request (a port probe, a health check): nothing to
            # serve, and no association slot to hold for pynetdicom's ACSE timeout.
            log.debug("connection from %s without a request: %s", address, exc)
            return True
        if request is None:
            return False
        _tune(sock)
        _Connection(sock, self, request, address).run()
        return True

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def abort_all(self) -> None:
        """Abort every association in progress (shutdown)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(pdu.encode_abort())
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _tune(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

Pending = tuple[int, dict[int, bytes]]
"""A command awaiting its dataset: (presentation context ID, command set fields)."""


class _Connection:
    def __init__(
        self,
        sock: socket.socket,
        acceptor: FastAcceptor,
        request: AssociateRequest,
        peer: tuple[str, int],
    ) -> None:
        self.sock = sock
        self.acceptor = acceptor
        self.request = request
        self.peer = peer
        self.address = f"{peer[0]}:{peer[1]}"
        self.calling_ae = request.calling_ae.decode("ascii", "replace").strip()
        self.called_ae = request.called_ae.decode("ascii", "replace").strip()
        self.contexts: dict[int, str] = {}  # accepted: ID -> transfer syntax
        self.abstracts = {cid: abstract for cid, abstract, _ in request.contexts}
        self.cancels: set[bytes] = set()  # Message IDs of the C-CANCEL-RQs received
        self._poller: select.poll | None = None

    @property
    def max_pdu(self) -> int:
        return self.request.max_pdu

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, count: int) -> bytearray:
        if count <= _PREALLOCATED_BYTES:
            return self._recv_into_new(count)
        # A PDU length is the peer's claim, up to 4 GiB in a 6-byte header: memory is
        # allocated as the bytes arrive, never for the claim alone.
        parts: list[bytearray] = []
        remaining = count
        while remaining:
            part = self._recv_into_new(min(remaining, _PREALLOCATED_BYTES))
            parts.append(part)
            remaining -= len(part)
        return bytearray().join(parts)

    def _recv_into_new(self, count: int) -> bytearray:
        buffer = bytearray(count)
        view = memoryview(buffer)
        got = 0
        while got < count:
            n = self.sock.recv_into(view[got:], count - got)
            if n == 0:
                raise ConnectionError("the peer closed the connection")
            got += n
        if _QUICKACK is not None:
            # Quick ACK mode does not last: re-arm it after each read, so that a client with
            # Nagle on never waits for our delayed ACK before sending its next segment.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buffer

    def _read_pdu(self) -> tuple[int, bytearray]:
        head = self._recv_exact(6)
        return head[0], self._recv_exact(pdu.BE32.unpack_from(head, 2)[0])

    def run(self) -> None:
        acceptor = self.acceptor
        self._read_pdu()  # the A-ASSOCIATE-RQ, parsed already from the peek
        rejection = acceptor.admit(self.request, self.peer)
        if rejection is None and not acceptor.can_accept():
            log.warning("association from %s rejected: too many associations", self.address)
            rejection = (2, 3, 2)  # transient, local limit exceeded
        if rejection is not None:
            self.sock.sendall(pdu.encode_associate_rj(*rejection))
            return
        self.contexts, answers = pdu.negotiate(
            self.request,
            acceptor.transfer_syntaxes,
            acceptor.find.contexts if acceptor.find is not None else None,
        )
        self.sock.sendall(
            pdu.encode_associate_ac(
                self.request,
                answers,
                acceptor.max_pdu,
                acceptor.implementation_uid,
                acceptor.implementation_version,
            )
        )
        self.sock.settimeout(acceptor.network_timeout)
        acceptor.register(self.sock)
        try:
            self._serve()
        except Abort as why:
            log.warning("association from %s aborted: %s", self.address, why)
            with contextlib.suppress(OSError):
                self.sock.sendall(pdu.encode_abort(2, 0))
        except pdu.Released:
            with contextlib.suppress(OSError):
                self.sock.sendall(pdu.RELEASE_RP_PDU)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("association from %s ended: %s", self.address, exc)
        finally:
            acceptor.unregister(self.sock)

    def _serve(self) -> None:
        command = bytearray()
        data: list[memoryview] = []
        size = 0  # bytes of the dataset received so far (kept or not)
        limit = self.acceptor.max_object_bytes or None
        pending: Pending | None = None
        while True:
            kind, body = self._read_pdu()
            if kind == pdu.RELEASE_RQ:
                if pending is not None or command or data:
                    raise Abort("release requested inside a message")
                self.sock.sendall(pdu.RELEASE_RP_PDU)
                return
            if kind == pdu.ABORT:
                return
            if kind != pdu.P_DATA:
                raise Abort(f"unexpected PDU type 0x{kind:02X}")
            for context_id, header, fragment in pdu.pdvs(body):
                if context_id not in self.contexts:
                    raise Abort(f"presentation context {context_id} was not accepted")
                if header & 0x01:  # command fragment
                    if pending is not None:
                        raise Abort("command received before the dataset of the previous one")
                    command += fragment
                    if header & 0x02:
                        fields = pdu.parse_command(bytes(command))
                        command = bytearray()
                        pending = self._on_command(context_id, fields)
                elif pending is None:
                    raise Abort("dataset without a command")
                else:
                    size += len(fragment)
                    if limit is None or size <= limit:
                        data.append(fragment)
                    elif data:
                        data = []  # over the limit: the rest is read and dropped
                    if header & 0x02:
                        cid, fields = pending
                        if limit is not None and size > limit:
                            self._refuse(cid, fields, size, limit)
                        elif pdu.command_field(fields) == pdu.C_FIND_RQ:
                            self._on_find(cid, fields, b"".join(data))
                        else:
                            self._on_store(cid, fields, b"".join(data))
                        data, pending, size = [], None, 0

    def _is_find_context(self, context_id: int) -> bool:
        find = self.acceptor.find
        return find is not None and self.abstracts.get(context_id) in find.contexts

    def _on_command(self, context_id: int, fields: dict[int, bytes]) -> Pending | None:
        command_field = pdu.command_field(fields)
        has_dataset = pdu.has_dataset(fields)
        if command_field == pdu.C_ECHO_RQ and not has_dataset:
            response = pdu.encode_response(
                pdu.C_ECHO_RSP,
                fields.get(pdu.MESSAGE_ID, b"\0\0"),
                fields.get(pdu.AFFECTED_SOP_CLASS_UID, pdu.VERIFICATION.encode()),
                0x0000,
            )
            self.sock.sendall(pdu.encode_p_data(context_id, response, self.request.max_pdu))
            return None
        if command_field == pdu.C_CANCEL_RQ:
            return None  # for a C-FIND answered already: nothing to cancel (as pynetdicom)
        if self._is_find_context(context_id):
            if command_field == pdu.C_FIND_RQ:
                if has_dataset:
                    return context_id, fields
                self._on_find(context_id, fields, b"")  # no identifier: the handler says so
                return None
        elif command_field == pdu.C_STORE_RQ and has_dataset:
            return context_id, fields
        raise Abort(f"unsupported command 0x{command_field:04X} on context {context_id}")

    def _refuse(self, context_id: int, fields: dict[int, bytes], size: int, limit: int) -> None:
        """Answer a dataset larger than the limit (read and dropped, nothing written)."""
        if pdu.command_field(fields) == pdu.C_FIND_RQ:
            comment = f"identifier of {size} bytes exceeds the limit of {limit} bytes"
            log.warning("C-FIND refused from %s: %s", self.address, comment)
            response = encode_find_response(
                fields.get(pdu.MESSAGE_ID, b"\0\0"),
                fields.get(pdu.AFFECTED_SOP_CLASS_UID, b""),
                OUT_OF_RESOURCES,
                comment=comment[:64],
            )
            self.sock.sendall(pdu.encode_p_data(context_id, response, self.request.max_pdu))
            return
        log.warning(
            "C-STORE refused from %s: object of %d bytes exceeds the limit", self.address, size
        )
        self._respond_store(
            context_id,
            fields,
            OUT_OF_RESOURCES,
            f"object of {size} bytes exceeds the limit of {limit} bytes",
        )

    def _respond_store(
        self, context_id: int, fields: dict[int, bytes], status: int, comment: str
    ) -> None:
        response = pdu.encode_response(
            pdu.C_STORE_RSP,
            fields.get(pdu.MESSAGE_ID, b"\0\0"),
            fields.get(pdu.AFFECTED_SOP_CLASS_UID, b""),
            status,
            fields.get(pdu.AFFECTED_SOP_INSTANCE_UID, b""),
            comment[:64],  # ErrorComment is LO
        )
        self.sock.sendall(pdu.encode_p_data(context_id, response, self.request.max_pdu))

    def _on_store(self, context_id: int, fields: dict[int, bytes], encoded: bytes) -> None:
        sop_class = fields.get(pdu.AFFECTED_SOP_CLASS_UID, b"")
        sop_instance = fields.get(pdu.AFFECTED_SOP_INSTANCE_UID, b"")
        try:
            status, comment = _status_fields(
                self.acceptor.store(
                    encoded,
                    self.contexts[context_id],
                    pdu.uid_text(sop_class),
                    pdu.uid_text(sop_instance),
                    self.calling_ae,
                    self.called_ae,
                    self.address,
                )
            )
        except UnicodeDecodeError:
            status, comment = 0xC210, "non-ASCII SOP Class or Instance UID"
        self._respond_store(context_id, fields, status, comment)

    # C-FIND

    def _on_find(self, context_id: int, fields: dict[int, bytes], identifier: bytes) -> None:
        find = self.acceptor.find
        assert find is not None
        syntax = self.contexts[context_id]
        message_id = fields.get(pdu.MESSAGE_ID, b"\0\0")
        request = FindRequest(
            sop_class=fields.get(pdu.AFFECTED_SOP_CLASS_UID, b"")
            .decode("ascii", "replace")
            .rstrip("\0 "),
            transfer_syntax=syntax,
            calling_ae=self.calling_ae,
            host=self.peer[0],
            port=self.peer[1],
            identifier=lambda: decode_identifier(identifier, syntax),
            is_cancelled=lambda: self._cancelled(message_id),
        )
        serve_find(self, find.handler, context_id, fields, request)

    def _cancelled(self, message_id: bytes) -> bool:
        """Whether a C-CANCEL-RQ for `message_id` has arrived (reads what waits, never blocks).

        While a C-FIND is answered the peer may only send C-CANCEL-RQs, A-RELEASE-RQ or
        A-ABORT: a release ends the answers (`pdu.Released`), anything else aborts.
        """
        while self._readable():
            kind, body = self._read_pdu()
            if kind == pdu.ABORT:
                raise ConnectionError("the peer aborted the association")
            if kind == pdu.RELEASE_RQ:
                raise pdu.Released
            if kind != pdu.P_DATA:
                raise Abort(f"unexpected PDU type 0x{kind:02X} during a C-FIND")
            self._read_cancel(body)
        if message_id in self.cancels:
            self.cancels.discard(message_id)
            return True
        return False

    def _readable(self) -> bool:
        """Whether the peer has sent something not read yet (a poll that does not wait)."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN)
        return bool(self._poller.poll(0))

    def _read_cancel(self, body: bytearray) -> None:
        """Read a C-CANCEL-RQ (its command may span P-DATA-TF PDUs): keep its Message ID."""
        command = bytearray()
        while True:
            for _, header, fragment in pdu.pdvs(body):
                if not header & 0x01:
                    raise Abort("a dataset during a C-FIND")
                command += fragment
                if header & 0x02:
                    fields = pdu.parse_command(bytes(command))
                    if pdu.command_field(fields) != pdu.C_CANCEL_RQ:
                        raise Abort("a request other than C-CANCEL during a C-FIND")
                    self.cancels.add(fields.get(pdu.MESSAGE_ID_BEING_RESPONDED_TO, b""))
                    command = bytearray()
            if not command:
                return
            kind, body = self._read_pdu()
            if kind != pdu.P_DATA:
                raise Abort(f"unexpected PDU type 0x{kind:02X} inside a C-CANCEL-RQ")
