"""The DICOM upper layer and DIMSE command codec of the direct acceptor (`fastpath`).

PS3.8 (upper layer PDUs: A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE, A-ABORT) and PS3.7
(command sets, always implicit VR little endian): only what the direct acceptor serves, each
part written from the standard and checked against pynetdicom's encoding by the tests.
"""

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
# Items of an A-ASSOCIATE-RQ
_APPLICATION_CONTEXT_ITEM, _CONTEXT_RQ_ITEM, _CONTEXT_AC_ITEM = 0x10, 0x20, 0x21
_ABSTRACT_SYNTAX_ITEM, _TRANSFER_SYNTAX_ITEM, _USER_ITEM = 0x30, 0x40, 0x50
_MAX_LENGTH_ITEM, _IMPLEMENTATION_UID_ITEM, _IMPLEMENTATION_VERSION_ITEM = 0x51, 0x52, 0x55

# Command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
# Command Data Set Type: no data set; pynetdicom writes 0x0001 when there is one.
NO_DATASET, WITH_DATASET = 0x0101, 0x0001

# Command set elements (group 0000)
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000

U16, U32, BE16, BE32 = (
    struct.Struct("<H"),
    struct.Struct("<I"),
    struct.Struct(">H"),
    struct.Struct(">I"),
)
_ELEMENT = struct.Struct("<HHI")


class NotForUs(Exception):
    """The association is left to pynetdicom."""


class Abort(Exception):
    """The peer broke the protocol: answer with an A-ABORT and close."""


class Released(Exception):
    """The peer asked to release the association while a message was being answered."""


def _items(data: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    while pos < end:
        if pos + 4 > end:
            raise NotForUs("truncated item")
        kind, length = data[pos], BE16.unpack_from(data, pos + 2)[0]
        if pos + 4 + length > end:
            raise NotForUs("item runs past its PDU")
        yield kind, data[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + BE16.pack(len(value)) + value


def pdu(kind: int, body: bytes) -> bytes:
    return bytes((kind, 0)) + BE32.pack(len(body)) + body


def uid_text(raw: bytes) -> str:
    return raw.decode("ascii").strip().rstrip("\0").strip()


@dataclass(frozen=True)
class AssociateRequest:
    """What the fast path needs of an A-ASSOCIATE-RQ it accepts to serve."""

    called_ae: bytes  # 16 bytes, as received
    calling_ae: bytes
    contexts: list[tuple[int, str, list[str]]]  # (context ID, abstract syntax, transfer syntaxes)
    max_pdu: int  # the requestor's maximum PDU length (0: no limit)


def parse_associate_rq(pdu: bytes, supported: frozenset[str]) -> AssociateRequest:
    """Parse an A-ASSOCIATE-RQ PDU; raises NotForUs unless every context is `supported` and
    nothing else is negotiated."""
    if len(pdu) < 74 or pdu[0] != ASSOCIATE_RQ:
        raise NotForUs("not an A-ASSOCIATE-RQ")
    body = pdu[6:]
    if not BE16.unpack_from(body, 0)[0] & 1:
        raise NotForUs("protocol version")
    contexts: list[tuple[int, str, list[str]]] = []
    max_pdu = 0
    application_context = ""
    try:
        for kind, value in _items(body, 68, len(body)):
            if kind == _APPLICATION_CONTEXT_ITEM:
                application_context = uid_text(value)
            elif kind == _CONTEXT_RQ_ITEM:
                abstract = ""
                syntaxes: list[str] = []
                for sub, sub_value in _items(value, 4, len(value)):
                    if sub == _ABSTRACT_SYNTAX_ITEM and not abstract:
                        abstract = uid_text(sub_value)
                    elif sub == _TRANSFER_SYNTAX_ITEM:
                        syntaxes.append(uid_text(sub_value))
                    else:
                        raise NotForUs("unexpected presentation context sub-item")
                if abstract not in supported or not syntaxes:
                    raise NotForUs(f"abstract syntax {abstract!r}")
                contexts.append((value[0], abstract, syntaxes))
            elif kind == _USER_ITEM:
                for sub, sub_value in _items(value, 0, len(value)):
                    if sub == _MAX_LENGTH_ITEM and len(sub_value) == 4:
                        max_pdu = BE32.unpack(sub_value)[0]
                    elif sub not in (_IMPLEMENTATION_UID_ITEM, _IMPLEMENTATION_VERSION_ITEM):
                        raise NotForUs(f"user information sub-item 0x{sub:02X}")
            else:
                raise NotForUs(f"item 0x{kind:02X}")
    except UnicodeDecodeError:
        raise NotForUs("non-ASCII UID") from None
    if application_context != APPLICATION_CONTEXT or not contexts:
        raise NotForUs("application context or no presentation context")
    if len({cid for cid, _, _ in contexts}) != len(contexts):
        raise NotForUs("duplicate presentation context IDs")
    return AssociateRequest(body[4:20], body[20:36], contexts, max_pdu)


def negotiate(
    request: AssociateRequest,
    preferred: Sequence[str],
    preferred_for: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    """Accepted contexts {ID: transfer syntax} and every (ID, result, syntax) to answer.

    As pynetdicom's acceptor: the first of our transfer syntaxes (`preferred_for` the abstract
    syntax, else `preferred`) that the requestor proposed; result 4 (transfer syntaxes not
    supported) with the requestor's first otherwise.
    """
    accepted: dict[int, str] = {}
    answers: list[tuple[int, int, str]] = []
    for cid, abstract, syntaxes in sorted(request.contexts):
        ours = (preferred_for or {}).get(abstract, preferred)
        chosen = next((ts for ts in ours if ts in syntaxes), None)
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
        _item(_MAX_LENGTH_ITEM, BE32.pack(max_pdu))
        + _item(_IMPLEMENTATION_UID_ITEM, implementation_uid.encode())
        + _item(_IMPLEMENTATION_VERSION_ITEM, implementation_version.encode())
    )
    items.append(_item(_USER_ITEM, user))
    body = (
        BE16.pack(1)
        + b"\0\0"
        + request.called_ae
        + request.calling_ae
        + b"\0" * 32
        + b"".join(items)
    )
    return pdu(ASSOCIATE_AC, body)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    return pdu(ABORT, bytes((0, 0, source, reason)))


RELEASE_RP_PDU = pdu(RELEASE_RP, b"\0\0\0\0")


def parse_command(data: bytes) -> dict[int, bytes]:
    """A command set (implicit VR little endian) as {tag: raw value}."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise Abort("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if pos + length > end:
            raise Abort("command element runs past the end")
        out[group << 16 | element] = data[pos : pos + length]
        pos += length
    return out


def command_field(fields: Mapping[int, bytes]) -> int:
    raw = fields.get(COMMAND_FIELD, b"")
    if len(raw) != 2:
        raise Abort("command without a Command Field")
    return int(U16.unpack(raw)[0])


def has_dataset(fields: Mapping[int, bytes]) -> bool:
    return int(U16.unpack(fields.get(COMMAND_DATA_SET_TYPE, b"\x01\x01")[:2])[0]) != NO_DATASET


def _command_element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def uid_value(raw: bytes) -> bytes:
    """A UID as pynetdicom re-encodes one it received: padding stripped, NUL-padded."""
    return even(raw.rstrip(b"\0 "), b"\0")


def comment_value(comment: str) -> bytes:
    """An Error Comment (LO) as pydicom encodes it without a character set."""
    return even(comment.encode("latin-1", "replace"), b" ")


def encode_command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """A command set from (tag, encoded value) pairs in tag order, with its group length."""
    body = b"".join(_command_element(tag, value) for tag, value in elements)
    return _command_element(0x00000000, U32.pack(len(body))) + body


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
        (AFFECTED_SOP_CLASS_UID, uid_value(sop_class)),
        (COMMAND_FIELD, U16.pack(command_field)),
        (MESSAGE_ID_BEING_RESPONDED_TO, message_id),
        (COMMAND_DATA_SET_TYPE, U16.pack(NO_DATASET)),
        (STATUS, U16.pack(status)),
    ]
    if comment:
        elements.append((ERROR_COMMENT, even(comment.encode("ascii", "replace"), b" ")))
    if sop_instance is not None:
        elements.append((AFFECTED_SOP_INSTANCE_UID, uid_value(sop_instance)))
    return encode_command(elements)


def encode_p_data(context_id: int, data: bytes, max_pdu: int, command: bool = True) -> bytes:
    """A command set (or a data set) in P-DATA-TF PDUs no longer than the peer accepts."""
    room = max(1, len(data)) if max_pdu == 0 else max(1, max_pdu - 6)
    kind = 0x01 if command else 0x00
    out = []
    for start in range(0, max(1, len(data)), room):
        fragment = data[start : start + room]
        header = kind | (0x02 if start + room >= len(data) else 0x00)
        pdv = bytes((context_id, header)) + fragment
        out.append(pdu(P_DATA, BE32.pack(len(pdv)) + pdv))
    return b"".join(out)


def pdvs(body: bytes | bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """The presentation data values of a P-DATA-TF body: (context ID, header, fragment)."""
    view = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            raise Abort("truncated PDV")
        length = BE32.unpack_from(body, pos)[0]
        if length < 2 or pos + 4 + length > end:
            raise Abort("bad PDV length")
        yield body[pos + 4], body[pos + 5], view[pos + 6 : pos + 4 + length]
        pos += 4 + length
