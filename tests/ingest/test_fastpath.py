"""The receive hot path: UID scanner, file meta encoder, direct storage acceptor, spool writes."""

import os
import socket
import threading
import tracemalloc
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomflow.ingest import fastpath, findpath, pdu
from dicomflow.ingest.exceptions import InvalidObject
from dicomflow.ingest.receiver import (
    file_meta_bytes,
    identity_of,
    identity_of_file_bytes,
    parse_header,
    scan_identity,
)
from dicomflow.kernel.blobs import filesystem
from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.events import Namespace

STORAGE = frozenset({str(CTImageStorage), str(Verification)})


@pytest.mark.parametrize("implicit", [False, True])
def test_scanner_reads_the_uids_through_undefined_length_sequences(
    ct_instance: Dataset, implicit: bool
) -> None:
    item = Dataset()
    item.CodeValue = "X"
    inner = Dataset()
    inner.CodeMeaning = "nested"
    item.ConceptNameCodeSequence = Sequence([inner])
    ct_instance.ProcedureCodeSequence = Sequence([item])
    encoded = encode(ct_instance, implicit, True)
    for elem in ct_instance.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
    encoded_undefined = encode(ct_instance, implicit, True)
    assert b"\xfe\xff\xdd\xe0" in encoded_undefined  # there is a sequence delimiter to skip
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    expected = identity_of(ct_instance, syntax)
    assert scan_identity(encoded, syntax) == expected
    assert scan_identity(encoded_undefined, syntax) == expected


def test_scanner_leaves_what_it_does_not_read_to_pydicom(ct_instance: Dataset) -> None:
    encoded = encode(ct_instance, False, True)
    assert scan_identity(encoded, "1.2.840.10008.1.2.1.99") is None  # deflated
    assert scan_identity(encoded[:-7], "1.2.840.10008.1.2.1") is None  # truncated
    ct_instance.StudyInstanceUID = "../../x"
    with pytest.raises(InvalidObject, match="StudyInstanceUID"):
        scan_identity(encode(ct_instance, False, True), "1.2.840.10008.1.2.1")
    del ct_instance.SeriesInstanceUID
    ct_instance.StudyInstanceUID = "1.2.3"
    with pytest.raises(InvalidObject, match="has no SeriesInstanceUID"):
        scan_identity(encode(ct_instance, False, True), "1.2.840.10008.1.2.1")


def test_scanner_agrees_with_pydicom_on_pydicom_test_files() -> None:
    compared = 0
    for path in get_testdata_files("*.dcm"):
        data = Path(path).read_bytes()
        try:
            ds = parse_header(data)
            expected = identity_of(ds, str(ds.file_meta.TransferSyntaxUID))
        except Exception:
            continue
        assert identity_of_file_bytes(data) == expected, path
        compared += 1
    assert compared > 10


def test_file_meta_bytes_match_pynetdicom() -> None:
    for sop_class, sop_instance, syntax in [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2"),
    ]:
        meta = create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
        )
        expected = b"\0" * 128 + b"DICM" + encode_file_meta(meta)
        assert file_meta_bytes(sop_class, sop_instance, syntax) == expected


def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + len(value).to_bytes(2, "big") + value


def _associate_rq(*abstract_syntaxes: str, user_identity: bool = False) -> bytes:
    """An A-ASSOCIATE-RQ PDU written by hand from PS3.8 9.3.2 (independent of the code)."""
    items = [_item(0x10, b"1.2.840.10008.3.1.1.1")]
    for n, syntax in enumerate(abstract_syntaxes):
        sub = _item(0x30, syntax.encode())
        sub += _item(0x40, b"1.2.840.10008.1.2") + _item(0x40, b"1.2.840.10008.1.2.1\0")
        items.append(_item(0x20, bytes((2 * n + 1, 0, 0, 0)) + sub))
    user = _item(0x51, (16384).to_bytes(4, "big")) + _item(0x52, b"1.2.3.4")
    user += _item(0x55, b"TEST_1")
    if user_identity:
        user += _item(0x58, bytes((1, 0)) + (4).to_bytes(2, "big") + b"user" + b"\0\0")
    items.append(_item(0x50, user))
    body = (1).to_bytes(2, "big") + b"\0\0" + b"DICOMFLOW".ljust(16) + b"SCU".ljust(16)
    body += b"\0" * 32 + b"".join(items)
    return bytes((0x01, 0)) + len(body).to_bytes(4, "big") + body


def test_plain_storage_requests_are_served_directly() -> None:
    request = pdu.parse_associate_rq(_associate_rq(str(CTImageStorage), str(Verification)), STORAGE)
    assert request.max_pdu == 16384
    assert request.called_ae.strip() == b"DICOMFLOW"
    accepted, answers = pdu.negotiate(request, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assert accepted == {1: "1.2.840.10008.1.2.1", 3: "1.2.840.10008.1.2.1"}
    assert [result for _, result, _ in answers] == [0, 0]
    _, refused = pdu.negotiate(request, ["1.2.840.10008.1.2.4.50"])
    assert [result for _, result, _ in refused] == [4, 4]


@pytest.mark.parametrize(
    ("syntaxes", "user_identity"),
    [
        ((str(CTImageStorage), str(StudyRootQueryRetrieveInformationModelFind)), False),
        ((str(CTImageStorage),), True),
    ],
)
def test_other_requests_are_left_to_pynetdicom(
    syntaxes: tuple[str, ...], user_identity: bool
) -> None:
    with pytest.raises(pdu.NotForUs):
        pdu.parse_associate_rq(_associate_rq(*syntaxes, user_identity=user_identity), STORAGE)


def test_responses_respect_the_peer_maximum_pdu() -> None:
    command = pdu.encode_response(0x8001, b"\x01\x00", b"1.2.3", 0xC210, b"4.5.6", "bad")
    fields = pdu.parse_command(command)
    assert fields[0x00000900] == b"\x10\xc2"
    assert fields[0x00000902].rstrip() == b"bad"
    whole = pdu.encode_p_data(1, command, 0)
    assert whole[0] == 0x04 and whole.count(b"\x04\x00") >= 1
    pieces = pdu.encode_p_data(1, command, 40)
    assert len(pieces) > len(whole)
    # every PDU body is within the limit and only the last PDV is flagged last
    pos, flags = 0, []
    while pos < len(pieces):
        length = int.from_bytes(pieces[pos + 2 : pos + 6], "big")
        assert length <= 40
        flags.append(pieces[pos + 11])
        pos += 6 + length
    assert flags[-1] == 0x03 and set(flags[:-1]) == {0x01}


def test_a_claimed_pdu_length_is_not_allocated_before_its_bytes_arrive() -> None:
    """Found by fuzzing: a P-DATA header claiming 4 GiB made the acceptor allocate 4 GiB
    (and zero it) before reading a byte of it: six bytes per connection to exhaust memory."""
    acceptor = fastpath.FastAcceptor(
        store=lambda *args: 0x0000,
        supported=STORAGE,
        transfer_syntaxes=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
        max_pdu=0,
        implementation_uid="1.2.3.4",
        implementation_version="TEST",
    )
    peer, ours = socket.socketpair()
    with peer, ours:
        peer.sendall(_associate_rq(str(CTImageStorage)) + b"\x04\x00\xff\xff\xff\xf0" + bytes(100))
        peer.shutdown(socket.SHUT_WR)  # the peer sends no more than these 100 bytes
        tracemalloc.start()
        try:
            assert acceptor.serve(ours, ("127.0.0.1", 4242))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peer.recv(1) == b"\x02"  # the association was accepted before the P-DATA
    assert peak < 64 << 20


def test_spool_objects_have_no_checksum_side_file(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    ref = store.put(Namespace.SPOOL, "d/h/x.dcm", b"spooled")
    assert sorted(p.name for p in (tmp_path / "spool" / "d" / "h").iterdir()) == ["x.dcm"]
    assert store.stat(Namespace.SPOOL, "d/h/x.dcm") == ref
    assert store.get_verified(ref) == b"spooled"
    original = store.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", b"kept")
    spooled = tmp_path / "spool" / "d" / "h" / "x.dcm"
    assert os.listxattr(spooled) == []
    kept = tmp_path / "original" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    side_file = kept.with_name(kept.name + ".sha256")  # where attributes are missing
    assert "user.dicomflow.sha256" in os.listxattr(kept) or side_file.is_file()
    assert store.stat(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm") == original


def test_concurrent_writers_share_folder_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = filesystem.fsync_dir

    def counting(path: Path) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(filesystem, "fsync_dir", counting)
    store = FilesystemBlobStore(tmp_path)
    barrier = threading.Barrier(8)

    def write(n: int) -> None:
        barrier.wait()
        for i in range(20):
            store.put(Namespace.SPOOL, f"d/h/{n}-{i}.dcm", b"x" * 1000)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list((tmp_path / "spool" / "d" / "h").iterdir())) == 160
    assert 0 < len(calls) <= 160
    assert filesystem._folder_sync._folders == {}  # nothing left behind


def test_a_stored_object_reads_back_with_its_meta(ct_instance: Dataset) -> None:
    encoded = encode(ct_instance, False, True)
    data = file_meta_bytes(
        str(ct_instance.SOPClassUID), str(ct_instance.SOPInstanceUID), "1.2.840.10008.1.2.1"
    )
    ds = pydicom.dcmread(BytesIO(data + encoded))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PixelData == ct_instance.PixelData


@pytest.mark.parametrize(
    ("status", "with_dataset", "comment", "offending"),
    [
        (0xFF00, True, "", []),
        (0x0000, False, "", []),
        (0xFE00, False, "", []),
        (0xA900, False, "QueryRetrieveLevel 'WARD' is not PATIENT/STUDY/SERIES/IMAGE", [0x80052]),
        (0xC000, False, "two offending", [0x100010, 0x80020]),
        (0xA700, False, "Müller: not ASCII", []),
    ],
)
def test_find_responses_match_pynetdicom(
    status: int, with_dataset: bool, comment: str, offending: list[int]
) -> None:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    if offending:
        rsp.OffendingElement = offending
    if with_dataset:
        rsp.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    expected = encode(message.command_set, True, True)
    sop_class = str(StudyRootQueryRetrieveInformationModelFind).encode() + b"\0"
    command = findpath.encode_find_response(
        (7).to_bytes(2, "little"), sop_class, status, with_dataset, comment, offending
    )
    assert command == expected


def test_identifiers_go_in_data_set_fragments() -> None:
    data = bytes(range(100))
    pieces = pdu.encode_p_data(3, data, 40, command=False)
    found = [(cid, header, bytes(fragment)) for cid, header, fragment in _pdvs(pieces)]
    assert b"".join(fragment for _, _, fragment in found) == data
    assert {cid for cid, _, _ in found} == {3}
    assert [header for _, header, _ in found] == [0x00] * (len(found) - 1) + [0x02]


def _pdvs(pieces: bytes) -> list[tuple[int, int, memoryview]]:
    out = []
    pos = 0
    while pos < len(pieces):
        length = int.from_bytes(pieces[pos + 2 : pos + 6], "big")
        out.extend(pdu.pdvs(pieces[pos + 6 : pos + 6 + length]))
        pos += 6 + length
    return out


def test_find_associations_are_served_directly_when_a_find_service_is_given() -> None:
    rq = _associate_rq(str(CTImageStorage), str(StudyRootQueryRetrieveInformationModelFind))
    find = str(StudyRootQueryRetrieveInformationModelFind)
    request = pdu.parse_associate_rq(rq, STORAGE | {find})
    accepted, _ = pdu.negotiate(
        request, ["1.2.840.10008.1.2"], {find: ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]}
    )
    assert accepted == {1: "1.2.840.10008.1.2", 3: "1.2.840.10008.1.2.1"}
