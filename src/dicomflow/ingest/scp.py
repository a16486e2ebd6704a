"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, thin handlers.

The C-STORE handler takes the encoded bytes as received (no decode/re-encode of pixel data),
hands them to the `DurableReceiver` and answers Success only once the object is durable.
Refusals map to DICOM statuses with an ErrorComment saying why.

Plain storage associations (the bulk of the traffic) are served by `fastpath.FastAcceptor`
on the same port, without pynetdicom's polling reactors; every other association (query and
retrieve, unusual negotiations) goes to pynetdicom untouched. Both end in `store_encoded`.
"""

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
)
from pynetdicom.dsutils import decode
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomflow.ingest.exceptions import IngestError, InvalidObject
from dicomflow.ingest.fastpath import FastAcceptor
from dicomflow.ingest.receiver import (
    DurableReceiver,
    file_meta_bytes,
    identity_of,
    scan_identity,
)
from dicomflow.kernel.events import Source, SourceKind
from dicomflow.kernel.settings import Settings

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110

# Every transfer syntax pydicom knows, the uncompressed ones first (preferred when a
# requestor proposes several in one context).
TRANSFER_SYNTAXES: list[str] = sorted(
    (str(uid) for uid in AllTransferSyntaxes),
    key=lambda uid: (
        uid
        not in (
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2",
        ),
        uid,
    ),
)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # ErrorComment is LO: at most 64 characters.
    status.ErrorComment = comment.replace("\\", "/")[:64]
    return status


def store_status(error: IngestError) -> Dataset:
    return _status(error.dimse_status, str(error))


def source_of(event: Any) -> Source:
    assoc = event.assoc
    return Source(
        kind=SourceKind.DIMSE,
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        address=f"{assoc.requestor.address}:{assoc.requestor.port}",
    )


def store_encoded(
    receiver: DurableReceiver,
    encoded: bytes,
    syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    source: Source,
) -> int | Dataset:
    """Make one received dataset durable; the status of the C-STORE response.

    The command's Affected SOP Instance UID, when given, must be the dataset's; the file
    meta is written from the dataset's validated UIDs (`sop_class_uid`, the command's, is
    not used for it).
    """
    try:
        # The UIDs from a scan of the element headers; pydicom decodes only what the
        # scanner leaves to it (big endian, deflate, unusual structures).
        identity = scan_identity(encoded, syntax)
        if identity is None:
            ts = UID(syntax)
            try:
                ds = decode(
                    BytesIO(encoded), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated
                )
            except Exception as exc:  # pydicom raises many types on corrupt input
                raise InvalidObject(f"malformed dataset: {type(exc).__name__}") from exc
            identity = identity_of(ds, syntax)
        requested = sop_instance_uid.strip()
        if requested and requested != identity.sop_instance_uid:
            raise InvalidObject("AffectedSOPInstanceUID differs from the dataset's")
        # The bytes as received behind the file meta pynetdicom would write, from the
        # validated UIDs: the command's SOP Class UID is not checked (a non-ASCII one was
        # a processing failure, found by fuzzing).
        meta = file_meta_bytes(
            identity.sop_class_uid, identity.sop_instance_uid, identity.transfer_syntax_uid
        )
        receiver.receive(meta + encoded, identity, source)
    except IngestError as exc:
        log.warning("C-STORE refused: %s", exc)
        return store_status(exc)
    except Exception as exc:
        log.exception("C-STORE failed")
        return _status(STATUS_PROCESSING_FAILURE, f"processing failure: {type(exc).__name__}")
    return STATUS_SUCCESS


def make_store_handler(receiver: DurableReceiver) -> Callable[[Any], int | Dataset]:
    def handle_store(event: Any) -> int | Dataset:
        request = event.request
        return store_encoded(
            receiver,
            request.DataSet.getvalue(),
            str(event.context.transfer_syntax),
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
            source_of(event),
        )

    return handle_store


def make_fast_acceptor(ae: AE, receiver: DurableReceiver, settings: Settings) -> FastAcceptor:
    """The direct path for plain storage associations, with the AE's limits and timeouts."""

    def store(
        encoded: bytes,
        syntax: str,
        sop_class: str,
        sop_instance: str,
        calling: str,
        called: str,
        address: str,
    ) -> int | Dataset:
        source = Source(
            kind=SourceKind.DIMSE, calling_ae=calling, called_ae=called, address=address
        )
        return store_encoded(receiver, encoded, syntax, sop_class, sop_instance, source)

    supported = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    acceptor = FastAcceptor(
        store=store,
        supported=frozenset(supported | {str(Verification)}),
        transfer_syntaxes=TRANSFER_SYNTAXES,
        max_pdu=settings.dicom_max_pdu,
        implementation_uid=str(PYNETDICOM_IMPLEMENTATION_UID),
        implementation_version=str(PYNETDICOM_IMPLEMENTATION_VERSION),
        acse_timeout=float(ae.acse_timeout or 30),
        network_timeout=float(ae.network_timeout or 60),
    )
    acceptor.can_accept = lambda: (
        len(ae.active_associations) + acceptor.active < ae.maximum_associations
    )
    return acceptor


def tune_socket(event: Any) -> None:
    """Disable Nagle and delayed ACKs on accepted connections (cuts stalls with Nagle clients)."""
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except (AttributeError, OSError):  # a notification handler must never fail
        return


class StoreServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the storage fast path in front of it."""

    fast: FastAcceptor | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        fast = self.fast
        if fast is not None and isinstance(request, socket.socket) and not self.ssl_context:
            try:
                served = fast.serve(request, client_address)
            except Exception:
                log.exception("storage association from %s failed", client_address)
                served = True
            if served:
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        if self.fast is not None:
            self.fast.abort_all()
        super().shutdown()


class ReusePortServer(StoreServer):
    """An association server whose port several worker processes can share (SO_REUSEPORT)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.maximum_associations = settings.dicom_max_associations
    ae.require_called_aet = False
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


@dataclass(frozen=True)
class ServiceExtension:
    """More DIMSE services on the same AE and port (query/retrieve, from the serving side).

    `contexts` are (abstract syntax, transfer syntaxes) pairs to support; `scu_contexts` are
    abstract syntaxes the AE may propose as SCP/SCU role (C-GET sends C-STOREs back);
    `handlers` are pynetdicom ``(event, handler)`` pairs.
    """

    contexts: Sequence[tuple[str, Sequence[str]]] = ()
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = ()
    configure: Callable[[AE], None] | None = None


def start_scp(
    settings: Settings,
    receiver: DurableReceiver,
    reuse_port: bool = False,
    extensions: Sequence[ServiceExtension] = (),
) -> ThreadedAssociationServer:
    """Start the SCP in background threads; call `.shutdown()` on the result to stop it."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, make_store_handler(receiver)),
        (evt.EVT_CONN_OPEN, tune_socket),
    ]
    for extension in extensions:
        for abstract_syntax, syntaxes in extension.contexts:
            ae.add_supported_context(abstract_syntax, list(syntaxes))
        handlers.extend(extension.handlers)
        if extension.configure is not None:
            extension.configure(ae)
    server_class: type[StoreServer] = ReusePortServer if reuse_port else StoreServer
    server = ae.make_server(
        (settings.dicom_host, settings.dicom_port),
        evt_handlers=handlers,
        server_class=server_class,
    )
    assert isinstance(server, StoreServer)
    server.fast = make_fast_acceptor(ae, receiver, settings)
    ae._servers.append(server)  # as AE.start_server does: server.shutdown() expects it
    threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True).start()
    return server
