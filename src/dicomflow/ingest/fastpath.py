"""A direct C-STORE/C-ECHO acceptor for plain storage associations, beside pynetdicom.

pynetdicom runs two polling threads per association (its DUL and association reactors sleep
1 ms per loop) and decodes every PDU into primitives: about 2.5-3 ms of CPU and one or two
polling delays per object, more than Orthanc needs to receive and store one. This module
serves the common case directly, one blocking thread per association: read a PDU, answer.

Which association goes where is decided before anything is read: the A-ASSOCIATE-RQ is
peeked at (MSG_PEEK), and only an association whose every presentation context proposes a
storage SOP class or Verification, with nothing else negotiated (no user identity, role
selection, asynchronous window or extended negotiation), is served here. Everything else
(C-FIND, C-GET and C-MOVE of the query/retrieve extension, unusual requests, errors) is left
untouched on the socket for pynetdicom, which answers exactly as before.

The protocol parts are those of PS3.8 (upper layer PDUs) and PS3.7 (command sets, implicit VR
little endian): the acceptor negotiates like pynetdicom (the first of its transfer syntaxes
that the requestor proposes), honours the requestor's maximum PDU length, answers A-RELEASE
and stops on A-ABORT; anything unexpected in an established association is answered by an
A-ABORT, as the standard's state machine does.
"""

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3)
_ASSOCIATE_RQ, _ASSOCIATE_AC, _ASSOCIATE_RJ = 0x01, 0x02, 0x03
_P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x04, 0x05, 0x06, 0x07
# Items of an A-ASSOCIATE-RQ
_APPLICATION_CONTEXT_ITEM, _CONTEXT_RQ_ITEM, _CONTEXT_AC_ITEM = 0x10, 0x20, 0x21
_ABSTRACT_SYNTAX_ITEM, _TRANSFER_SYNTAX_ITEM, _USER_ITEM = 0x30, 0x40, 0x50
_MAX_LENGTH_ITEM, _IMPLEMENTATION_UID_ITEM, _IMPLEMENTATION_VERSION_ITEM = 0x51, 0x52, 0x55
# Command fields (PS3.7 E.1)
_C_STORE_RQ, _C_STORE_RSP, _C_ECHO_RQ, _C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
_NO_DATASET = 0x0101

_MAX_RQ_BYTES = 1 << 20  # larger associate requests are left to pynetdicom
_PREALLOCATED_BYTES = 4 << 20  # larger PDUs are read in parts of this size
_U16, _U32, _BE16, _BE32 = (
    struct.Struct("<H"),
    struct.Struct("<I"),
    struct.Struct(">H"),
    struct.Struct(">I"),
)
_ELEMENT = struct.Struct("<HHI")


class _NotForUs(Exception):
    """The association is left to pynetdicom."""


class _Abort(Exception):
    """The peer broke the protocol: answer with an A-ABORT and close."""


def _items(data: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    while pos < end:
        if pos + 4 > end:
            raise _NotForUs("truncated item")
        kind, length = data[pos], _BE16.unpack_from(data, pos + 2)[0]
        if pos + 4 + length > end:
            raise _NotForUs("item runs past its PDU")
        yield kind, data[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + _BE16.pack(len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return bytes((kind, 0)) + _BE32.pack(len(body)) + body


def _uid_text(raw: bytes) -> str:
    return raw.decode("ascii").strip().rstrip("\0").strip()


@dataclass(frozen=True)
class AssociateRequest:
    """What the fast path needs of an A-ASSOCIATE-RQ it accepts to serve."""

    called_ae: bytes  # 16 bytes, as received
    calling_ae: bytes
    contexts: list[tuple[int, str, list[str]]]  # (context ID, abstract syntax, transfer syntaxes)
    max_pdu: int  # the requestor's maximum PDU length (0: no limit)


def parse_associate_rq(pdu: bytes, supported: frozenset[str]) -> AssociateRequest:
    """Parse an A-ASSOCIATE-RQ PDU; raises _NotForUs unless it is a plain storage request."""
    if len(pdu) < 74 or pdu[0] != _ASSOCIATE_RQ:
        raise _NotForUs("not an A-ASSOCIATE-RQ")
    body = pdu[6:]
    if not _BE16.unpack_from(body, 0)[0] & 1:
        raise _NotForUs("protocol version")
    contexts: list[tuple[int, str, list[str]]] = []
    max_pdu = 0
    application_context = ""
    try:
        for kind, value in _items(body, 68, len(body)):
            if kind == _APPLICATION_CONTEXT_ITEM:
                application_context = _uid_text(value)
            elif kind == _CONTEXT_RQ_ITEM:
                abstract = ""
                syntaxes: list[str] = []
                for sub, sub_value in _items(value, 4, len(value)):
                    if sub == _ABSTRACT_SYNTAX_ITEM and not abstract:
                        abstract = _uid_text(sub_value)
                    elif sub == _TRANSFER_SYNTAX_ITEM:
                        syntaxes.append(_uid_text(sub_value))
                    else:
                        raise _NotForUs("unexpected presentation context sub-item")
                if abstract not in supported or not syntaxes:
                    raise _NotForUs(f"abstract syntax {abstract!r}")
                contexts.append((value[0], abstract, syntaxes))
            elif kind == _USER_ITEM:
                for sub, sub_value in _items(value, 0, len(value)):
                    if sub == _MAX_LENGTH_ITEM and len(sub_value) == 4:
                        max_pdu = _BE32.unpack(sub_value)[0]
                    elif sub not in (_IMPLEMENTATION_UID_ITEM, _IMPLEMENTATION_VERSION_ITEM):
                        raise _NotForUs(f"user information sub-item 0x{sub:02X}")
            else:
                raise _NotForUs(f"item 0x{kind:02X}")
    except UnicodeDecodeError:
        raise _NotForUs("non-ASCII UID") from None
    if application_context != APPLICATION_CONTEXT or not contexts:
        raise _NotForUs("application context or no presentation context")
    if len({cid for cid, _, _ in contexts}) != len(contexts):
        raise _NotForUs("duplicate presentation context IDs")
    return AssociateRequest(body[4:20], body[20:36], contexts, max_pdu)


def negotiate(
    request: AssociateRequest, preferred: list[str]
) -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    """Accepted contexts {ID: transfer syntax} and every (ID, result, syntax) to answer.

    As pynetdicom's acceptor: the first of our transfer syntaxes that the requestor proposed;
    result 4 (transfer syntaxes not supported) with the requestor's first otherwise.
    """
    accepted: dict[int, str] = {}
    answers: list[tuple[int, int, str]] = []
    for cid, _, syntaxes in sorted(request.contexts):
        chosen = next((ts for ts in preferred if ts in syntaxes), None)
        if chosen is None:
            answers.append((cid, 4, syntaxes[0]))
        else:
            accepted[cid] = chosen
            answers.append((cid, 0, chosen))
    return accepted, answers


def encode_associate_ac(
    request: AssociateRequest,
    answers: list[tuple[int, int, str]],
    max_pdu: int,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    items = [_item(_APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT.encode())]
    for cid, result, syntax in answers:
        value = bytes((cid, 0, result, 0)) + _item(_TRANSFER_SYNTAX_ITEM, syntax.encode())
        items.append(_item(_CONTEXT_AC_ITEM, value))
    user = (
        _item(_MAX_LENGTH_ITEM, _BE32.pack(max_pdu))
        + _item(_IMPLEMENTATION_UID_ITEM, implementation_uid.encode())
        + _item(_IMPLEMENTATION_VERSION_ITEM, implementation_version.encode())
    )
    items.append(_item(_USER_ITEM, user))
    body = (
        _BE16.pack(1)
        + b"\0\0"
        + request.called_ae
        + request.calling_ae
        + b"\0" * 32
        + b"".join(items)
    )
    return _pdu(_ASSOCIATE_AC, body)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    return _pdu(_ABORT, bytes((0, 0, source, reason)))


def parse_command(data: bytes) -> dict[int, bytes]:
    """A command set (implicit VR little endian) as {tag: raw value}."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise _Abort("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if pos + length > end:
            raise _Abort("command element runs past the end")
        out[group << 16 | element] = data[pos : pos + length]
        pos += length
    return out


def _command_element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_response(
    command_field: int,
    message_id: bytes,
    sop_class: bytes,
    status: int,
    sop_instance: bytes | None = None,
    comment: str = "",
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set, with its group length."""
    elements = [
        (0x00000002, _even(sop_class.rstrip(b"\0 "), b"\0")),
        (0x00000100, _U16.pack(command_field)),
        (0x00000120, message_id),
        (0x00000800, _U16.pack(_NO_DATASET)),
        (0x00000900, _U16.pack(status)),
    ]
    if comment:
        elements.append((0x00000902, _even(comment.encode("ascii", "replace"), b" ")))
    if sop_instance is not None:
        elements.append((0x00001000, _even(sop_instance.rstrip(b"\0 "), b"\0")))
    body = b"".join(_command_element(tag, value) for tag, value in elements)
    return _command_element(0x00000000, _U32.pack(len(body))) + body


def encode_p_data(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """A command set in P-DATA-TF PDUs no longer than the peer accepts."""
    room = len(command) if max_pdu == 0 else max(1, max_pdu - 6)
    out = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = 0x03 if start + room >= len(command) else 0x01
        pdv = bytes((context_id, last)) + fragment
        out.append(_pdu(_P_DATA, _BE32.pack(len(pdv)) + pdv))
    return b"".join(out)


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
    """Serves plain storage associations on sockets accepted by the association server."""

    store: StoreFunction
    supported: frozenset[str]
    transfer_syntaxes: list[str]
    max_pdu: int
    implementation_uid: str
    implementation_version: str
    acse_timeout: float = 30
    network_timeout: float = 60
    can_accept: Callable[[], bool] = lambda: True
    admit: AdmitFunction = _admit_all
    max_object_bytes: int = 0  # 0: no limit; larger datasets are read, dropped and refused
    _sockets: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._sockets)

    def peek_request(self, sock: socket.socket) -> AssociateRequest | None:
        """The A-ASSOCIATE-RQ waiting on `sock` if this acceptor serves it (nothing is read)."""
        sock.settimeout(self.acse_timeout)
        head = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(head) < 6 or head[0] != _ASSOCIATE_RQ:
            return None
        length = _BE32.unpack_from(head, 2)[0]
        if length > _MAX_RQ_BYTES:
            return None
        pdu = sock.recv(6 + length, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(pdu) < 6 + length:
            return None
        try:
            return parse_associate_rq(pdu, self.supported)
        except _NotForUs as why:
            log.debug("association left to pynetdicom: %s", why)
            return None

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """Serve the association on `sock`; False (nothing read) if pynetdicom should."""
        request = self.peek_request(sock)
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
                sock.sendall(encode_abort())
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _tune(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


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
        self.contexts: dict[int, str] = {}

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
        return head[0], self._recv_exact(_BE32.unpack_from(head, 2)[0])

    def run(self) -> None:
        acceptor = self.acceptor
        self._read_pdu()  # the A-ASSOCIATE-RQ, parsed already from the peek
        rejection = acceptor.admit(self.request, self.peer)
        if rejection is None and not acceptor.can_accept():
            log.warning("association from %s rejected: too many associations", self.address)
            rejection = (2, 3, 2)  # transient, local limit exceeded
        if rejection is not None:
            self.sock.sendall(encode_associate_rj(*rejection))
            return
        self.contexts, answers = negotiate(self.request, acceptor.transfer_syntaxes)
        self.sock.sendall(
            encode_associate_ac(
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
        except _Abort as why:
            log.warning("association from %s aborted: %s", self.address, why)
            with contextlib.suppress(OSError):
                self.sock.sendall(encode_abort(2, 0))
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("association from %s ended: %s", self.address, exc)
        finally:
            acceptor.unregister(self.sock)

    def _serve(self) -> None:
        command = bytearray()
        data: list[memoryview] = []
        size = 0  # bytes of the dataset received so far (kept or not)
        limit = self.acceptor.max_object_bytes or None
        pending: tuple[int, dict[int, bytes]] | None = None  # a command awaiting its dataset
        while True:
            kind, body = self._read_pdu()
            if kind == _RELEASE_RQ:
                if pending is not None or command or data:
                    raise _Abort("release requested inside a message")
                self.sock.sendall(_pdu(_RELEASE_RP, b"\0\0\0\0"))
                return
            if kind == _ABORT:
                return
            if kind != _P_DATA:
                raise _Abort(f"unexpected PDU type 0x{kind:02X}")
            view = memoryview(body)
            pos, end = 0, len(body)
            while pos < end:
                if pos + 6 > end:
                    raise _Abort("truncated PDV")
                length = _BE32.unpack_from(body, pos)[0]
                if length < 2 or pos + 4 + length > end:
                    raise _Abort("bad PDV length")
                context_id, header = body[pos + 4], body[pos + 5]
                fragment = view[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if context_id not in self.contexts:
                    raise _Abort(f"presentation context {context_id} was not accepted")
                if header & 0x01:  # command fragment
                    if pending is not None:
                        raise _Abort("command received before the dataset of the previous one")
                    command += fragment
                    if header & 0x02:
                        fields = parse_command(bytes(command))
                        command = bytearray()
                        pending = self._on_command(context_id, fields)
                elif pending is None:
                    raise _Abort("dataset without a command")
                else:
                    size += len(fragment)
                    if limit is None or size <= limit:
                        data.append(fragment)
                    elif data:
                        data = []  # over the limit: the rest is read and dropped
                    if header & 0x02:
                        cid, fields = pending
                        if limit is not None and size > limit:
                            self._refuse_store(cid, fields, size, limit)
                        else:
                            self._on_store(cid, fields, b"".join(data))
                        data, pending, size = [], None, 0

    def _on_command(
        self, context_id: int, fields: dict[int, bytes]
    ) -> tuple[int, dict[int, bytes]] | None:
        raw_field = fields.get(0x00000100, b"")
        if len(raw_field) != 2:
            raise _Abort("command without a Command Field")
        command_field = _U16.unpack(raw_field)[0]
        has_dataset = _U16.unpack(fields.get(0x00000800, b"\x01\x01")[:2])[0] != _NO_DATASET
        if command_field == _C_ECHO_RQ and not has_dataset:
            response = encode_response(
                _C_ECHO_RSP,
                fields.get(0x00000110, b"\0\0"),
                fields.get(0x00000002, VERIFICATION.encode()),
                0x0000,
            )
            self.sock.sendall(encode_p_data(context_id, response, self.request.max_pdu))
            return None
        if command_field == _C_STORE_RQ and has_dataset:
            return context_id, fields
        raise _Abort(f"unsupported command 0x{command_field:04X} on a storage association")

    def _refuse_store(
        self, context_id: int, fields: dict[int, bytes], size: int, limit: int
    ) -> None:
        """Answer a dataset larger than the limit (read and dropped, nothing written)."""
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
        response = encode_response(
            _C_STORE_RSP,
            fields.get(0x00000110, b"\0\0"),
            fields.get(0x00000002, b""),
            status,
            fields.get(0x00001000, b""),
            comment[:64],  # ErrorComment is LO
        )
        self.sock.sendall(encode_p_data(context_id, response, self.request.max_pdu))

    def _on_store(self, context_id: int, fields: dict[int, bytes], encoded: bytes) -> None:
        sop_class = fields.get(0x00000002, b"")
        sop_instance = fields.get(0x00001000, b"")
        try:
            status, comment = _status_fields(
                self.acceptor.store(
                    encoded,
                    self.contexts[context_id],
                    _uid_text(sop_class),
                    _uid_text(sop_instance),
                    self.calling_ae,
                    self.called_ae,
                    self.address,
                )
            )
        except UnicodeDecodeError:
            status, comment = 0xC210, "non-ASCII SOP Class or Instance UID"
        self._respond_store(context_id, fields, status, comment)
