"""The one durable receive path shared by C-STORE, STOW-RS and bulk import.

`DurableReceiver.receive` writes the object to the spool (fsync'd), appends its ``received``
event to the bus (durable), and only then returns: the caller may acknowledge its client.
`DurableReceiver.receive_many` does the same for a batch (bulk import): every object fsync'd,
one folder fsync and one event log append for the batch.

The identity of an object (its four UIDs) comes from a small scanner of the encoded element
headers (`scan_identity`), several times cheaper than decoding with pydicom; whatever it does
not handle (big endian, deflate, malformed input) goes through pydicom as before, so the
answers (and the error messages) stay those of pydicom's parse.
"""

import struct
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from io import BytesIO
from typing import TYPE_CHECKING, BinaryIO

from dicomflow.ingest.exceptions import (
    IngestError,
    InvalidObject,
    ObjectTooLarge,
    StorageUnavailable,
)
from dicomflow.kernel.activity import ReceiveActivity, open_receive_activity
from dicomflow.kernel.backends import open_spool
from dicomflow.kernel.blobs.base import BlobStore, new_key
from dicomflow.kernel.bus.base import EventBus, OutgoingRecord, Producer
from dicomflow.kernel.elements import LONG_LENGTH_VRS, element_header
from dicomflow.kernel.events import (
    SPOOL_BOOT_HEADER,
    BlobRef,
    InstanceIdentity,
    Namespace,
    ObjectReceived,
    Source,
    Topic,
    encode_event,
)
from dicomflow.kernel.exceptions import BackendUnavailable, InvalidUID
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import validate_uid

if TYPE_CHECKING:  # pydicom is imported where it is used: `dicomflow import` starts without it
    from pydicom.dataset import Dataset

_REQUIRED = (
    ("StudyInstanceUID", "study_instance_uid"),
    ("SeriesInstanceUID", "series_instance_uid"),
    ("SOPInstanceUID", "sop_instance_uid"),
    ("SOPClassUID", "sop_class_uid"),
)


def identity_of(ds: "Dataset", transfer_syntax_uid: str) -> InstanceIdentity:
    """The validated UIDs of a dataset; raises InvalidObject naming what is missing or bad."""
    values: dict[str, str] = {}
    for keyword, field in _REQUIRED:
        try:
            raw = ds.get(keyword)
        except Exception as exc:  # pydicom converts values lazily, raising many types
            raise InvalidObject(
                f"the dataset's {keyword} cannot be read: {type(exc).__name__}"
            ) from exc
        if raw is None or str(raw).strip() == "":
            raise InvalidObject(f"the dataset has no {keyword}")
        try:
            values[field] = validate_uid(str(raw).strip().rstrip("\0"), keyword)
        except InvalidUID as exc:
            raise InvalidObject(str(exc)) from exc
    try:
        values["transfer_syntax_uid"] = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
    except InvalidUID as exc:
        raise InvalidObject(str(exc)) from exc
    return InstanceIdentity(**values)


_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# Transfer syntaxes the scanner does not read (the dataset is not explicit/implicit VR little
# endian as it stands): explicit VR big endian and the deflated ones.
_NOT_SCANNED = frozenset(
    {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.201"}
    | {"1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
)
_UID_TAGS = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}
_LONG_VRS = frozenset(vr.encode("ascii") for vr in LONG_LENGTH_VRS)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_U16, _U32, _TAG = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<HH")


class _Unscannable(Exception):
    """The scanner gives up; pydicom decides (and words the error)."""


def _skip_items(data: bytes, pos: int, end: int, implicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length value up to its sequence delimiter."""
    if depth > _MAX_DEPTH:
        raise _Unscannable("nested too deeply")
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(data, pos)
        tag = group << 16 | element
        length = _U32.unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unscannable("unexpected element in a sequence")
        if length == _UNDEFINED:
            pos = _scan(data, pos, end, implicit, depth + 1, None)
        else:
            pos += length
    raise _Unscannable("sequence not terminated")


def _scan(
    data: bytes, pos: int, end: int, implicit: bool, depth: int, found: dict[int, bytes] | None
) -> int:
    """Walk the element headers of a dataset (or of an item, to its delimiter).

    Top-level values of the UID tags go into `found`; every header and length is checked
    against the buffer, as a lazy pydicom read would.
    """
    while pos < end:
        if pos + 8 > end:
            raise _Unscannable("truncated element header")
        group, element = _TAG.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if depth == 0:
                raise _Unscannable("item delimiter at the top level")
            return pos + 8
        if implicit or group == 0xFFFE:
            length = _U32.unpack_from(data, pos + 4)[0]
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Unscannable("truncated element header")
                length = _U32.unpack_from(data, pos + 8)[0]
                pos += 12
            elif vr.isalpha() and vr.isupper():
                length = _U16.unpack_from(data, pos + 6)[0]
                pos += 8
            else:
                raise _Unscannable("not an explicit VR")
        if length == _UNDEFINED:
            # A sequence (implicit VR items when the VR is UN), or encapsulated pixel data.
            inner_implicit = implicit or data[pos - 8 : pos - 6] == b"UN"
            pos = _skip_items(data, pos, end, inner_implicit, depth)
            continue
        if pos + length > end:
            raise _Unscannable("value runs past the end")
        if found is not None and tag in _UID_TAGS:
            found[tag] = data[pos : pos + length]
        pos += length
    if depth:
        raise _Unscannable("item not terminated")
    return pos


def scan_identity(
    data: bytes, transfer_syntax_uid: str, offset: int = 0
) -> InstanceIdentity | None:
    """The identity of an encoded dataset (from `offset`), or None where pydicom must decide.

    None: a transfer syntax the scanner does not read, a structure it does not follow, or
    UIDs that are not plain ASCII. Missing or invalid UIDs raise InvalidObject, as
    `identity_of` does.
    """
    if transfer_syntax_uid in _NOT_SCANNED:
        return None
    found: dict[int, bytes] = {}
    try:
        _scan(data, offset, len(data), transfer_syntax_uid == _IMPLICIT_VR_LITTLE_ENDIAN, 0, found)
        values = {
            keyword: found[tag].decode("ascii")
            for tag, keyword in _UID_TAGS.items()
            if tag in found
        }
    except (_Unscannable, struct.error, UnicodeDecodeError):
        return None
    if any("\\" in value for value in values.values()):
        return None  # multi-valued: let pydicom's reading of it decide
    return _identity_from(values, transfer_syntax_uid)


def _identity_from(values: dict[str, str], transfer_syntax_uid: str) -> InstanceIdentity:
    fields: dict[str, str] = {}
    for keyword, field in _REQUIRED:
        raw = values.get(keyword)
        if raw is None or raw.strip() == "":
            raise InvalidObject(f"the dataset has no {keyword}")
        try:
            fields[field] = validate_uid(raw.strip().rstrip("\0").strip(), keyword)
        except InvalidUID as exc:
            raise InvalidObject(str(exc)) from exc
    try:
        fields["transfer_syntax_uid"] = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
    except InvalidUID as exc:
        raise InvalidObject(str(exc)) from exc
    return InstanceIdentity(**fields)


def _element(group_element: int, vr: str, value: bytes) -> bytes:
    header = element_header(group_element, vr, len(value), implicit=False)
    assert header is not None  # file meta values are short
    return header + value


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


@cache
def _implementation() -> tuple[str, str]:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    return PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information, as pynetdicom's `encoded_dataset` writes them.

    The same elements and bytes as pynetdicom's ``create_file_meta`` + ``encode_file_meta``,
    without building and encoding a pydicom dataset for every object received.
    """
    implementation_uid, implementation_version = _implementation()
    body = b"".join(
        (
            _element(0x00020001, "OB", b"\0\1"),
            _element(0x00020002, "UI", _padded(sop_class_uid, b"\0")),
            _element(0x00020003, "UI", _padded(sop_instance_uid, b"\0")),
            _element(0x00020010, "UI", _padded(transfer_syntax_uid, b"\0")),
            _element(0x00020012, "UI", _padded(implementation_uid, b"\0")),
            _element(0x00020013, "SH", _padded(implementation_version, b" ")),
        )
    )
    return b"\0" * 128 + b"DICM" + _element(0x00020000, "UL", _U32.pack(len(body))) + body


def _file_meta_end(data: bytes) -> tuple[int, str] | None:
    """(offset of the dataset, transfer syntax) of a Part 10 object, None if unusual."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    pos, syntax = 132, ""
    try:
        while pos + 8 <= len(data):
            group, element = _TAG.unpack_from(data, pos)
            if group != 0x0002:
                break
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length = _U32.unpack_from(data, pos + 8)[0]
                pos += 12
            else:
                length = _U16.unpack_from(data, pos + 6)[0]
                pos += 8
            if element == 0x0010:
                syntax = data[pos : pos + length].decode("ascii").strip().rstrip("\0")
            pos += length
    except (struct.error, UnicodeDecodeError):
        return None
    return (pos, syntax) if syntax and pos <= len(data) else None


def parse_header(data: bytes | BinaryIO) -> "Dataset":
    """Parse a DICOM Part 10 object up to its pixel data; raises InvalidObject."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    stream = BytesIO(data) if isinstance(data, bytes) else data
    try:
        return pydicom.dcmread(stream, stop_before_pixels=True)
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidObject(f"not a readable DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidObject(f"malformed DICOM object: {type(exc).__name__}: {exc}") from exc


def identity_of_file_bytes(data: bytes) -> InstanceIdentity:
    """Identity of a Part 10 file (preamble, meta, dataset) held in memory."""
    meta = _file_meta_end(data)
    if meta is not None:
        identity = scan_identity(data, meta[1], meta[0])
        if identity is not None:
            return identity
    ds = parse_header(data)
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not syntax:
        raise InvalidObject("the object has no file meta TransferSyntaxUID")
    return identity_of(ds, syntax)


@dataclass(frozen=True)
class Incoming:
    """One object for `DurableReceiver.receive_many`: its Part 10 bytes, identity and source."""

    data: bytes
    identity: InstanceIdentity
    source: Source


def _spool_failure(exc: Exception) -> StorageUnavailable:
    if isinstance(exc, OSError):
        return StorageUnavailable(f"cannot write to the spool: {exc.strerror or exc}")
    return StorageUnavailable(f"cannot write to the spool: {exc}")  # a full disk


@dataclass
class DurableReceiver:
    """Spool + received event, durable before returning."""

    spool: BlobStore
    bus: EventBus
    max_object_bytes: int
    # Marked at every receive: background processors on this machine hold back meanwhile.
    activity: ReceiveActivity | None = None

    def __post_init__(self) -> None:
        self._producer: Producer = self.bus.producer()
        self._topic = self.bus.topic(Topic.RECEIVED)
        # Every spool write below completes before its record is appended: in this boot the
        # storage processor may link the object without reading it back (SPOOL_BOOT_HEADER).
        boot_id = self.spool.page_cache_boot_id()
        self._headers = {SPOOL_BOOT_HEADER: boot_id} if boot_id else {}

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_object_bytes:
            raise ObjectTooLarge(
                f"object of {len(data)} bytes exceeds the limit of {self.max_object_bytes} bytes"
            )

    def receive(self, data: bytes, identity: InstanceIdentity, source: Source) -> ObjectReceived:
        """Make one Part 10 object durable and announce it. Raises IngestError subclasses.

        The event log's commit of the ``received`` event runs while the spool object is
        fsync'd; this returns once both are durable. A crash (or a failed fsync) between
        the two can leave a committed event whose spool object is missing or incomplete:
        nothing was acknowledged for it, and the storage processor dead-letters such an
        event with its reason ("spool object ... is missing" / "... is corrupt").
        """
        self._check_size(data)
        now = datetime.now(UTC)
        announced: list[tuple[ObjectReceived, Future[None]]] = []

        def announce(ref: BlobRef) -> None:
            event = ObjectReceived(identity=identity, blob=ref, source=source, received_at=now)
            record = OutgoingRecord(
                self._topic, identity.study_instance_uid, encode_event(event), self._headers
            )
            announced.append((event, self._producer.begin_publish([record])))

        try:
            # The spool key is generated (by the store), never taken from the dataset.
            ref = self.spool.put_new(Namespace.SPOOL, data, before_sync=announce)
        except (OSError, BackendUnavailable) as exc:  # BackendUnavailable: a full disk
            for _, commit in announced:  # an event of a spool object that is not there
                commit.exception()  # (dead-lettered by the storage processor)
            raise _spool_failure(exc) from exc
        event, commit = announced[0]
        try:
            commit.result()
        except BackendUnavailable as exc:
            self.spool.delete(Namespace.SPOOL, ref.key)
            raise StorageUnavailable(f"the event bus did not confirm the object: {exc}") from exc
        if self.activity is not None:
            self.activity.mark()
        return event

    def receive_many(self, items: Sequence[Incoming]) -> list[ObjectReceived | IngestError]:
        """Make several objects durable and announce them, sharing the syncs (bulk import).

        One result per item, in order: its ``received`` event, or the IngestError that
        `receive` would have raised for it; a bad item does not fail the others. Every spool
        object is durable (bytes and folder entry) before the events are appended, and the
        events, in the order of the items, are committed in one append before this returns:
        an item whose result is an event may be reported imported.
        """
        results: list[ObjectReceived | IngestError] = []
        to_spool: list[tuple[int, str, datetime]] = []
        for index, item in enumerate(items):
            try:
                self._check_size(item.data)
            except ObjectTooLarge as exc:
                results.append(exc)
                continue
            now = datetime.now(UTC)
            to_spool.append((index, new_key(now), now))  # generated, never from the dataset
            results.append(StorageUnavailable("not written"))  # replaced below
        refs = self.spool.put_many(
            Namespace.SPOOL, [(key, items[index].data) for index, key, _ in to_spool]
        )
        announced: list[tuple[int, str]] = []
        records: list[OutgoingRecord] = []
        for (index, key, now), ref in zip(to_spool, refs, strict=True):
            if not isinstance(ref, BlobRef):
                results[index] = _spool_failure(ref)
                continue
            item = items[index]
            event = ObjectReceived(
                identity=item.identity, blob=ref, source=item.source, received_at=now
            )
            records.append(
                OutgoingRecord(
                    self._topic,
                    item.identity.study_instance_uid,
                    encode_event(event),
                    self._headers,
                )
            )
            results[index] = event
            announced.append((index, key))
        if not records:
            return results
        try:
            self._producer.publish_many(records)
            if self.activity is not None:
                self.activity.mark()
        except BackendUnavailable as exc:
            failure = f"the event bus did not confirm the object: {exc}"
            for index, key in announced:
                self.spool.delete(Namespace.SPOOL, key)
                results[index] = StorageUnavailable(failure)
        return results

    def receive_file_bytes(self, data: bytes, source: Source) -> ObjectReceived:
        return self.receive(data, identity_of_file_bytes(data), source)

    def close(self) -> None:
        """Close the producer and the spool (its names prepared in advance are removed)."""
        self._producer.close()
        self.spool.close()
        if self.activity is not None:
            self.activity.close()


def open_receiver(settings: Settings, bus: EventBus) -> DurableReceiver:
    """The receive path of C-STORE, STOW-RS and import: the configured spool and size limit,
    and this machine's receive mark (background processors hold back while it moves)."""
    return DurableReceiver(
        open_spool(settings), bus, settings.max_object_bytes, open_receive_activity(settings)
    )
