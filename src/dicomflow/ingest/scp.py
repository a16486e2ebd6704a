"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, thin handlers.

The C-STORE handler takes the encoded bytes as received (no decode/re-encode of pixel data),
hands them to the `DurableReceiver` and answers Success only once the object is durable.
Refusals map to DICOM statuses with an ErrorComment saying why.

Plain storage associations (the bulk of the traffic) and plain C-FIND ones (when an extension
gives a `FindService`) are served by `fastpath.FastAcceptor` on the same port, without
pynetdicom's polling reactors; every other association (C-MOVE, C-GET, unusual negotiations)
goes to pynetdicom untouched. Both end in `store_encoded` and the same find handler.
"""

import logging
import socket
import ssl
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
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomflow.ingest.access import (
    NOT_AUTHORIZED,
    REJECT_LOCAL_LIMIT,
    REJECT_NOT_RECOGNIZED,
    AccessGuard,
    AccessPolicy,
    DimseService,
)
from dicomflow.ingest.exceptions import AccessConfigError, IngestError, InvalidObject
from dicomflow.ingest.fastpath import FastAcceptor
from dicomflow.ingest.findpath import FindService
from dicomflow.ingest.pdu import AssociateRequest
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
STATUS_OUT_OF_RESOURCES = 0xA700

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


def make_store_handler(
    receiver: DurableReceiver, guard: AccessGuard
) -> Callable[[Any], int | Dataset]:
    def handle_store(event: Any) -> int | Dataset:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        if not guard.permits(DimseService.STORE, calling, requestor.address, requestor.port):
            return _status(NOT_AUTHORIZED, f"{calling} may not store here (not authorized)")
        request = event.request
        dropped = getattr(event.assoc.dimse, "oversize", None)
        size = dropped.pop(int(request.MessageID), None) if dropped else None
        if size is not None:
            log.warning(
                "C-STORE refused from %s: object of %d bytes exceeds the limit", calling, size
            )
            limit = receiver.max_object_bytes
            return _status(
                STATUS_OUT_OF_RESOURCES,
                f"object of {size} bytes exceeds the limit of {limit} bytes",
            )
        return store_encoded(
            receiver,
            request.DataSet.getvalue(),
            str(event.context.transfer_syntax),
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
            source_of(event),
        )

    return handle_store


def make_fast_acceptor(
    ae: AE,
    receiver: DurableReceiver,
    settings: Settings,
    guard: AccessGuard,
    find: FindService | None = None,
) -> FastAcceptor:
    """The direct path for plain storage (and, with `find`, C-FIND) associations, with the
    AE's limits and timeouts."""

    def admit(request: AssociateRequest, peer: tuple[str, int]) -> tuple[int, int, int] | None:
        calling = request.calling_ae.decode("ascii", "replace").strip()
        syntaxes = [abstract for _, abstract, _ in request.contexts]
        if guard.admit(calling, peer[0], peer[1], syntaxes):
            return None
        return REJECT_NOT_RECOGNIZED

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
        admit=admit,
        max_object_bytes=settings.max_object_bytes,
        find=find,
    )
    return acceptor


def acceptor_associations(ae: AE, fast: FastAcceptor | None) -> int:
    """Associations in progress that peers requested, on both paths and every listener."""
    served = sum(1 for assoc in ae.active_associations if assoc.is_acceptor)
    return served + (fast.active if fast is not None else 0)


def tune_socket(event: Any) -> None:
    """Disable Nagle and delayed ACKs on accepted connections (cuts stalls with Nagle clients)."""
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except (AttributeError, OSError):  # a notification handler must never fail
        return


class GuardedACSE(ACSE):
    """pynetdicom's ACSE that first rejects the associations the access policy refuses, and
    those past DICOMFLOW_DICOM_MAX_ASSOCIATIONS counting the fast path's too."""

    def __init__(
        self, assoc: Association, guard: AccessGuard, count: Callable[[], int] | None = None
    ) -> None:
        super().__init__(assoc)
        self.guard = guard
        self.count = count

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        requestor = self.assoc.requestor
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        contexts = getattr(request, "presentation_context_definition_list", None) or []
        # A context proposed for the requestor's SCP role only is one the C-GET sends back
        # on, not a service asked of us (a C-STORE on it is still checked: 0x0124).
        roles = {str(uid): item for uid, item in self.requestor.role_selection.items()}
        syntaxes = [
            str(context.abstract_syntax or "")
            for context in contexts
            if not _scp_role_only(roles.get(str(context.abstract_syntax or "")))
        ]
        if not self.guard.admit(calling, requestor.address, requestor.port, syntaxes):
            self._reject(REJECT_NOT_RECOGNIZED)
            return
        # This association is among those counted.
        if self.count is not None and self.count() > self.assoc.ae.maximum_associations:
            log.warning(
                "association from %s:%s rejected: too many associations",
                requestor.address,
                requestor.port,
            )
            self._reject(REJECT_LOCAL_LIMIT)
            return
        super()._negotiate_as_acceptor()

    def _reject(self, reason: tuple[int, int, int]) -> None:
        self.send_reject(*reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class SizeLimitedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider that keeps at most `limit` bytes of a message's dataset.

    pynetdicom gathers a whole dataset in memory before the C-STORE handler runs: past the
    limit the fragments are read and dropped here (only their control headers are kept, so
    that the message still completes), and `oversize` records the Message ID and size for the
    handler to answer 0xA700 without looking at the truncated dataset.
    """

    def __init__(self, assoc: Association, limit: int) -> None:
        super().__init__(assoc)
        self.limit = limit
        self.received = 0
        self.oversize: dict[int, int] = {}

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.received = 0  # a new message
        pdvs = primitive.presentation_data_value_list
        kept: list[Any] = []
        dropped = False
        for context_id, data in pdvs:
            if data and not data[0] & 0x01:  # a dataset fragment
                self.received += len(data) - 1
                if self.received > self.limit:
                    data, dropped = bytes(data[:1]), True
            kept.append([context_id, bytes(data)])
        if dropped:
            command = getattr(self.message, "command_set", None)
            message_id = getattr(command, "MessageID", None)
            if message_id is not None:
                self.oversize[int(message_id)] = self.received
            primitive.presentation_data_value_list = kept
        super().receive_primitive(primitive)


def _scp_role_only(item: Any) -> bool:
    return item is not None and bool(item.scp_role) and not item.scu_role


class GuardedRequestHandler(RequestHandler):
    """Gives every association pynetdicom accepts the server's access guard, association
    count and object size limit."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        server = self.server
        limit = getattr(server, "max_object_bytes", 0)
        if limit:
            assoc.dimse = SizeLimitedDIMSE(assoc, limit)
        guard = getattr(server, "guard", None)
        assoc.acse = GuardedACSE(
            assoc,
            guard if isinstance(guard, AccessGuard) else AccessGuard(),
            getattr(server, "association_count", None),
        )
        return assoc


class StoreServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the storage fast path and the access guard in front.

    With an SSL context (the TLS listener), the handshake runs in the association's thread
    with a timeout, not in the accepting thread: a client that never completes it holds only
    its own thread. TLS associations are all served by pynetdicom (the fast path needs to
    peek at the plain request).
    """

    fast: FastAcceptor | None = None
    guard: AccessGuard = AccessGuard()
    association_count: Callable[[], int] | None = None
    max_object_bytes: int = 0  # datasets past it are dropped while received (0: no limit)
    handshake_timeout: float = 30.0
    companions: Sequence[ThreadedAssociationServer] = ()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset
            log.warning("TLS handshake with %s failed: %s", client_address, exc)
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            if not self._handshake(request, client_address):
                self.shutdown_request(request)
                return
        elif self.fast is not None and isinstance(request, socket.socket):
            try:
                served = self.fast.serve(request, client_address)
            except Exception:
                log.exception("association from %s failed (direct acceptor)", client_address)
                served = True
            if served:
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        for companion in self.companions:
            companion.shutdown()
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
    `handlers` are pynetdicom ``(event, handler)`` pairs; `find` serves C-FIND on the direct
    acceptor too (for associations that propose nothing pynetdicom must serve).
    """

    contexts: Sequence[tuple[str, Sequence[str]]] = ()
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = ()
    configure: Callable[[AE], None] | None = None
    find: FindService | None = None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server SSL context of the DICOM TLS listener (None when the port is 0).

    TLS 1.2 at least; with DICOMFLOW_DICOM_TLS_CA, a client certificate that chains to it is
    required (mutual TLS). Raises AccessConfigError naming the setting at fault.
    """
    if not settings.dicom_tls_port:
        return None
    if not settings.dicom_tls_certificate or not settings.dicom_tls_key:
        raise AccessConfigError(
            "DICOMFLOW_DICOM_TLS_PORT is set: DICOMFLOW_DICOM_TLS_CERTIFICATE and "
            "DICOMFLOW_DICOM_TLS_KEY must name the PEM certificate and key"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.dicom_tls_certificate, settings.dicom_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise AccessConfigError(
            f"DICOMFLOW_DICOM_TLS_CERTIFICATE / DICOMFLOW_DICOM_TLS_KEY cannot be loaded: {exc}"
        ) from exc
    if settings.dicom_tls_ca:
        try:
            context.load_verify_locations(cafile=settings.dicom_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise AccessConfigError(f"DICOMFLOW_DICOM_TLS_CA cannot be loaded: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _serve(server: StoreServer, name: str) -> None:
    server.ae._servers.append(server)  # as AE.start_server does: server.shutdown() expects it
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()


def start_scp(
    settings: Settings,
    receiver: DurableReceiver,
    reuse_port: bool = False,
    extensions: Sequence[ServiceExtension] = (),
    guard: AccessGuard | None = None,
) -> ThreadedAssociationServer:
    """Start the SCP in background threads; call `.shutdown()` on the result to stop it.

    `guard` applies the AE title allowlists (default: those of the settings); with
    DICOMFLOW_DICOM_TLS_PORT a TLS listener serves the same AE and services beside the plain
    one (and stops with it).
    """
    if guard is None:
        guard = AccessGuard(AccessPolicy.from_settings(settings))
    for warning in guard.policy.warnings():
        log.warning(warning)
    ssl_context = tls_context(settings)
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, make_store_handler(receiver, guard)),
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
        request_handler=GuardedRequestHandler,
    )
    assert isinstance(server, StoreServer)
    find = next((extension.find for extension in extensions if extension.find), None)
    fast = make_fast_acceptor(ae, receiver, settings, guard, find)

    def count() -> int:
        return acceptor_associations(ae, fast)

    fast.can_accept = lambda: count() < ae.maximum_associations
    server.guard, server.fast, server.association_count = guard, fast, count
    server.max_object_bytes = settings.max_object_bytes
    if ssl_context is not None:
        secure = ae.make_server(
            (settings.dicom_host, settings.dicom_tls_port),
            evt_handlers=handlers,
            server_class=server_class,
            ssl_context=ssl_context,
            request_handler=GuardedRequestHandler,
        )
        assert isinstance(secure, StoreServer)
        secure.guard, secure.association_count = guard, count
        secure.max_object_bytes = settings.max_object_bytes
        secure.handshake_timeout = float(ae.acse_timeout or 30)
        server.companions = [secure]
        _serve(secure, "dicom-scp-tls")
        log.info("DICOM TLS listener on port %d", settings.dicom_tls_port)
    _serve(server, "dicom-scp")
    return server
