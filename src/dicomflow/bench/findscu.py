"""A minimal C-FIND SCU for the query phase: one kept association, blocking socket reads.

The bench times study-level C-FIND against dicomflow and Orthanc with the same client. A
pynetdicom client costs more than either server on this path: its reactor threads poll with
1 ms sleeps and every response is decoded into a pydicom Dataset (1.2-1.5 ms per response,
measured against a raw client on the same server), so the figures measured the client. This
one sends each request in one write and reads the responses with blocking reads, decoding
only their command sets (the matches are counted, not parsed), like DCMTK's findscu would
minus its process start per query.

PS3.8 upper layer and PS3.7 command sets, with the codec of the direct acceptor
(`dicomflow.ingest.pdu`); only what a Study Root C-FIND needs.
"""

import socket
import time
from collections import deque

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from dicomflow.bench.receivers import BenchError
from dicomflow.ingest import pdu

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_EXPLICIT_LITTLE, _IMPLICIT_LITTLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_PRIORITY = 0x00000700
_PENDING = frozenset({0xFF00, 0xFF01})
_CONTEXT_ID = 1


class FindError(BenchError):
    """The peer refused, aborted, or answered what a C-FIND SCP should not."""


class FindNotSupported(FindError):
    """The peer has no Study Root C-FIND SCP."""


def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + pdu.BE16.pack(len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)[:16]


def associate_rq(called_ae: str, calling_ae: str) -> bytes:
    """An A-ASSOCIATE-RQ proposing Study Root FIND in both little endian transfer syntaxes."""
    context = (
        bytes((_CONTEXT_ID, 0, 0, 0))
        + _item(0x30, STUDY_ROOT_FIND.encode())
        + _item(0x40, _EXPLICIT_LITTLE.encode())
        + _item(0x40, _IMPLICIT_LITTLE.encode())
    )
    user = _item(0x51, pdu.BE32.pack(0)) + _item(0x52, str(PYDICOM_IMPLEMENTATION_UID).encode())
    body = (
        pdu.BE16.pack(1)
        + b"\0\0"
        + _ae(called_ae)
        + _ae(calling_ae)
        + b"\0" * 32
        + _item(0x10, pdu.APPLICATION_CONTEXT.encode())
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return pdu.pdu(pdu.ASSOCIATE_RQ, body)


def parse_associate_ac(body: bytes) -> tuple[str, int]:
    """The transfer syntax accepted for our context and the peer's maximum PDU length."""
    syntax, max_pdu = "", 0
    pos = 68  # protocol version, reserved, called and calling AE titles, reserved
    while pos + 4 <= len(body):
        kind, length = body[pos], pdu.BE16.unpack_from(body, pos + 2)[0]
        value = body[pos + 4 : pos + 4 + length]
        if kind == 0x21 and len(value) >= 4 and value[0] == _CONTEXT_ID and value[2] == 0:
            sub = value[4:]
            if len(sub) >= 4 and sub[0] == 0x40:
                syntax = pdu.uid_text(sub[4 : 4 + pdu.BE16.unpack_from(sub, 2)[0]])
        elif kind == 0x50:
            sub_pos = 0
            while sub_pos + 4 <= len(value):
                sub_kind, sub_len = value[sub_pos], pdu.BE16.unpack_from(value, sub_pos + 2)[0]
                if sub_kind == 0x51 and sub_len == 4:
                    max_pdu = pdu.BE32.unpack_from(value, sub_pos + 4)[0]
                sub_pos += 4 + sub_len
        pos += 4 + length
    return syntax, max_pdu


class RawFindClient:
    """One association to a C-FIND SCP (Study Root), kept open for many timed queries."""

    def __init__(self, port: int, called_ae: str, calling_ae: str, timeout: float = 120.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # A request is one write, but the responses are many small ones: no Nagle either way.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pdvs: deque[tuple[int, bytes]] = deque()
        self._message_id = 0
        self._sock.sendall(associate_rq(called_ae, calling_ae))
        kind, body = self._read_pdu()
        if kind == pdu.ASSOCIATE_RJ:
            self._sock.close()
            raise FindNotSupported("association rejected")
        if kind != pdu.ASSOCIATE_AC:
            self._sock.close()
            raise FindError(f"answered the association request with PDU type {kind}")
        self._syntax, self._max_pdu = parse_associate_ac(body)
        if self._syntax not in (_EXPLICIT_LITTLE, _IMPLICIT_LITTLE):
            self.close()
            raise FindNotSupported("no C-FIND SCP (Study Root FIND not accepted)")

    def _recv_exact(self, count: int) -> bytes:
        chunks, left = [], count
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise FindError("the peer closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._recv_exact(6)
        return header[0], self._recv_exact(pdu.BE32.unpack_from(header, 2)[0])

    def _next_pdv(self) -> tuple[int, bytes]:
        while not self._pdvs:
            kind, body = self._read_pdu()
            if kind == pdu.ABORT:
                raise FindError("the peer aborted the association")
            if kind != pdu.P_DATA:
                raise FindError(f"unexpected PDU type {kind} during a C-FIND")
            self._pdvs.extend((header, bytes(data)) for _, header, data in pdu.pdvs(body))
        return self._pdvs.popleft()

    def _read_message(self) -> dict[int, bytes]:
        """The next message's command set; its data set (a match) is read and skipped."""
        command = bytearray()
        while True:
            header, fragment = self._next_pdv()
            if not header & 0x01:
                raise FindError("a data set fragment where a command was expected")
            command += fragment
            if header & 0x02:
                break
        fields = pdu.parse_command(bytes(command))
        if pdu.has_dataset(fields):
            while True:
                header, _ = self._next_pdv()
                if header & 0x01:
                    raise FindError("a command fragment inside a data set")
                if header & 0x02:
                    break
        return fields

    def _encode(self, identifier: Dataset) -> bytes:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = self._syntax == _IMPLICIT_LITTLE
        write_dataset(buffer, identifier)
        return buffer.getvalue()

    def find(self, identifier: Dataset) -> tuple[float, int]:
        """Seconds until the final response, and the number of matches."""
        started = time.perf_counter()
        self._message_id = self._message_id % 0xFFFF + 1
        command = pdu.encode_command(
            [
                (pdu.AFFECTED_SOP_CLASS_UID, pdu.even(STUDY_ROOT_FIND.encode(), b"\0")),
                (pdu.COMMAND_FIELD, pdu.U16.pack(pdu.C_FIND_RQ)),
                (pdu.MESSAGE_ID, pdu.U16.pack(self._message_id)),
                (_PRIORITY, pdu.U16.pack(0)),
                (pdu.COMMAND_DATA_SET_TYPE, pdu.U16.pack(pdu.WITH_DATASET)),
            ]
        )
        self._sock.sendall(
            pdu.encode_p_data(_CONTEXT_ID, command, self._max_pdu, command=True)
            + pdu.encode_p_data(_CONTEXT_ID, self._encode(identifier), self._max_pdu, False)
        )
        matches = 0
        while True:
            fields = self._read_message()
            status = pdu.U16.unpack(fields.get(pdu.STATUS, b"\xff\xff")[:2])[0]
            if status in _PENDING:
                matches += 1
            elif status == 0x0000:
                return time.perf_counter() - started, matches
            elif status == 0x0122:
                raise FindNotSupported("no C-FIND SCP (status 0x0122: SOP class not supported)")
            else:
                raise FindError(f"C-FIND failed with status 0x{status:04X}")

    def close(self) -> None:
        try:
            self._sock.sendall(pdu.pdu(pdu.RELEASE_RQ, b"\0\0\0\0"))
            self._read_pdu()  # A-RELEASE-RP (or whatever the peer says last)
        except (OSError, FindError):
            pass
        finally:
            self._sock.close()
