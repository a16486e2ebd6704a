"""C-FIND on the direct acceptor: the service's handler, given by injection, answered over DIMSE.

The query itself (identifier rules, index search, access guard, audit, deadline) is the
query/retrieve service's (`dicomflow.api.dimse`): `ingest` does not import `api`, so the
service hands a `FindService` to `start_scp` in its `ServiceExtension`, and pynetdicom's
EVT_C_FIND handler and this path run the very same code. What is here is what pynetdicom's
Query/Retrieve service class does around the handler (PS3.4 C.4.1, PS3.7 9.1.2): one
C-FIND-RSP per yielded response, Pending ones with their identifier, the first other status
final, Success when the handler ends without one, 0xC311 when it raises, 0xC312 when an
identifier cannot be encoded.
"""

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Protocol, TypeAlias

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from dicomflow.ingest import pdu

log = logging.getLogger(__name__)

PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
HANDLER_FAILED = 0xC311  # pynetdicom: exception in the handler
ENCODING_FAILED = 0xC312  # pynetdicom: the handler's identifier cannot be encoded
SUCCESS = 0x0000


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND-RQ as the query service sees it, whichever acceptor received it."""

    sop_class: str  # the Affected SOP Class UID of the request
    transfer_syntax: str  # of the presentation context: the answers are encoded in it
    calling_ae: str
    host: str
    port: int
    identifier: Callable[[], Dataset]  # decoded on call; raises if it cannot be
    is_cancelled: Callable[[], bool]  # whether the peer has sent a C-CANCEL-RQ for it


Status: TypeAlias = int | Dataset
EncodedFindResponse: TypeAlias = tuple[Status, bytes | None]
"""(status, identifier encoded in the request's transfer syntax, for Pending statuses)."""

FindHandler = Callable[[FindRequest], Iterator[EncodedFindResponse]]


@dataclass(frozen=True)
class FindService:
    """The C-FIND SCP that the direct acceptor serves: a handler and its contexts.

    `contexts` maps each FIND information model (abstract syntax) to the transfer syntaxes
    accepted for it, preferred first (as the AE's supported contexts for pynetdicom).
    """

    handler: FindHandler
    contexts: Mapping[str, Sequence[str]]


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """An identifier as pynetdicom's ``event.identifier`` decodes it (lazily: elements are
    converted, and may raise, on access)."""
    if not data:
        return Dataset()
    syntax = UID(transfer_syntax)
    ds = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    return ds


class Channel(Protocol):
    """What a C-FIND needs of the association it runs on."""

    def send(self, data: bytes) -> None: ...

    @property
    def max_pdu(self) -> int: ...


def status_fields(status: Status) -> tuple[int, str, list[int]]:
    """(code, Error Comment, Offending Element tags) of a handler's status."""
    if not isinstance(status, Dataset):
        return int(status), "", []
    if "Status" not in status:
        return 0xC001, "", []  # pynetdicom: a status dataset without a Status
    offending = status.get("OffendingElement", None)
    if offending is None:
        tags = []
    elif isinstance(offending, int):  # AT: one tag, or a list of them
        tags = [int(offending)]
    else:
        tags = [int(tag) for tag in offending]
    return int(status.Status), str(status.get("ErrorComment", "") or ""), tags


def encode_find_response(
    message_id: bytes,
    sop_class: bytes,
    status: int,
    with_dataset: bool = False,
    comment: str = "",
    offending: Sequence[int] = (),
) -> bytes:
    """A C-FIND-RSP command set, element for element as pynetdicom writes it."""
    elements = [
        (pdu.AFFECTED_SOP_CLASS_UID, pdu.uid_value(sop_class)),
        (pdu.COMMAND_FIELD, pdu.U16.pack(pdu.C_FIND_RSP)),
        (pdu.MESSAGE_ID_BEING_RESPONDED_TO, message_id),
        (
            pdu.COMMAND_DATA_SET_TYPE,
            pdu.U16.pack(pdu.WITH_DATASET if with_dataset else pdu.NO_DATASET),
        ),
        (pdu.STATUS, pdu.U16.pack(status)),
    ]
    if offending:
        elements.append(
            (
                pdu.OFFENDING_ELEMENT,
                b"".join(pdu.U16.pack(t >> 16) + pdu.U16.pack(t & 0xFFFF) for t in offending),
            )
        )
    if comment:
        elements.append((pdu.ERROR_COMMENT, pdu.comment_value(comment)))
    return pdu.encode_command(elements)


def serve_find(
    channel: Channel,
    handler: FindHandler,
    context_id: int,
    fields: Mapping[int, bytes],
    request: FindRequest,
) -> None:
    """Answer one C-FIND-RQ on `channel` with the responses of `handler`.

    Connection errors (an A-ABORT, a closed socket, a protocol error read while checking for
    a C-CANCEL-RQ) and an A-RELEASE-RQ propagate: no more is sent for this request.
    """
    message_id = fields.get(pdu.MESSAGE_ID, b"\0\0")
    sop_class = fields.get(pdu.AFFECTED_SOP_CLASS_UID, b"")
    max_pdu = channel.max_pdu

    def final(code: int, comment: str = "", offending: Sequence[int] = ()) -> None:
        command = encode_find_response(message_id, sop_class, code, False, comment, offending)
        channel.send(pdu.encode_p_data(context_id, command, max_pdu))

    responses = handler(request)
    while True:
        try:
            response = next(responses, None)
        except (ConnectionError, TimeoutError, pdu.Abort, pdu.Released):
            raise  # the association ends (or is released): nothing more to answer
        except Exception:
            log.exception("C-FIND: the handler failed")
            final(HANDLER_FAILED)
            return
        if response is None:
            final(SUCCESS)
            return
        status, identifier = response
        code, comment, offending = status_fields(status)
        if code not in PENDING_STATUSES:
            final(code, comment, offending)
            return
        if not identifier:
            log.error("C-FIND: an answer could not be encoded")
            final(ENCODING_FAILED)
            return
        command = encode_find_response(message_id, sop_class, code, True, comment, offending)
        channel.send(
            pdu.encode_p_data(context_id, command, max_pdu)
            + pdu.encode_p_data(context_id, identifier, max_pdu, command=False)
        )
