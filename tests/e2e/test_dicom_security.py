"""DICOM access control and limits end to end: `dicomflow serve` with AE allowlists, an object
size limit, an association limit and a mutual-TLS listener, against DCMTK's echoscu, storescu,
findscu, movescu and getscu (each with -aet CALLING) and a DCMTK storescp as destination."""

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance, write_tree
from tests.conftest import Pki, free_port, make_pki
from tests.e2e.conftest import Server, server_env
from tests.e2e.test_query_retrieve import run

pytestmark = pytest.mark.e2e

REJECTED = "Calling AE Title Not Recognized"


@dataclass
class Secured:
    server: Server
    pki: Pki
    tls_port: int
    study_uid: str
    files: list[Path]
    storescp_dir: Path
    big_file: Path

    @property
    def address(self) -> list[str]:
        return ["127.0.0.1", str(self.server.dicom_port)]

    def study_keys(self) -> list[str]:
        return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={self.study_uid}"]

    def tls(self) -> list[str]:
        return ["+tls", str(self.pki.client_key), str(self.pki.client_certificate), "-pw",
                "+cf", str(self.pki.ca)]  # fmt: skip


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, storescp: tuple[Path, int]
) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("security")
    pki = make_pki(folder / "pki")
    storescp_dir, storescp_port = storescp
    dicom_port, http_port, tls_port = free_port(), free_port(), free_port()
    env = server_env(folder / "data", dicom_port, http_port)
    env.update(
        DICOMFLOW_DESTINATIONS=(
            f"STORESCP@127.0.0.1:{storescp_port},ELSEWHERE@127.0.0.1:{storescp_port}"
        ),
        DICOMFLOW_DICOM_ALLOWED_AES="STORER,FINDER,MOVER,GETTER",
        DICOMFLOW_DICOM_STORE_AES="STORER",
        DICOMFLOW_DICOM_FIND_AES="FINDER",
        DICOMFLOW_DICOM_RETRIEVE_AES="MOVER,GETTER",
        DICOMFLOW_DICOM_MOVE_DESTINATIONS="MOVER=STORESCP",
        DICOMFLOW_MAX_OBJECT_BYTES="300000",
        DICOMFLOW_DICOM_MAX_ASSOCIATIONS="2",
        DICOMFLOW_DICOM_TLS_PORT=str(tls_port),
        DICOMFLOW_DICOM_TLS_CERTIFICATE=str(pki.server_certificate),
        DICOMFLOW_DICOM_TLS_KEY=str(pki.server_key),
        DICOMFLOW_DICOM_TLS_CA=str(pki.ca),
    )
    server = Server(folder / "data", dicom_port, http_port, env, folder / "server.log")
    server.start()
    try:
        files = write_tree(iter_study_tree(1, 1, 1, 3), folder / "send")
        big = make_instance(PatientSpec(patient_id="BIG"), 0, 0, 0, rows=512, columns=512)
        big_file = folder / "big.dcm"
        big.save_as(big_file, enforce_file_format=True)
        sent = run("storescu", "-aet", "STORER", "-aec", "DICOMFLOW", "127.0.0.1",
                   str(dicom_port), *map(str, files))  # fmt: skip
        assert sent.returncode == 0, sent.stdout[-3000:]
        server.wait_idle()
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        yield Secured(server, pki, tls_port, study_uid, files, storescp_dir, big_file)
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-3000:]


def test_the_open_default_says_so_at_start(server: Server) -> None:
    assert "accepts associations from any calling AE title" in server.log_path.read_text()


def test_echo(secured: Secured) -> None:
    allowed = run("echoscu", "-aet", "FINDER", "-aec", "DICOMFLOW", *secured.address)
    assert allowed.returncode == 0, allowed.stdout
    refused = run("echoscu", "-aet", "STRANGER", "-aec", "DICOMFLOW", *secured.address)
    assert refused.returncode != 0
    assert REJECTED in refused.stdout


def test_store(secured: Secured) -> None:
    allowed = run("storescu", "-aet", "STORER", "-aec", "DICOMFLOW", *secured.address,
                  str(secured.files[0]))  # fmt: skip
    assert allowed.returncode == 0 and "Success" in allowed.stdout, allowed.stdout
    refused = run("storescu", "-aet", "FINDER", "-aec", "DICOMFLOW", *secured.address,
                  str(secured.files[0]))  # fmt: skip
    assert refused.returncode != 0
    assert REJECTED in refused.stdout


def test_find(secured: Secured, tmp_path: Path) -> None:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientID"]
    allowed = run("findscu", "-S", "-aet", "FINDER", "-aec", "DICOMFLOW", "-X", "-od",
                  str(tmp_path), *keys, *secured.address)  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    assert len(list(tmp_path.glob("rsp*.dcm"))) == 1
    refused = run("findscu", "-S", "-aet", "STORER", "-aec", "DICOMFLOW", *keys,
                  *secured.address)  # fmt: skip
    assert refused.returncode != 0
    assert REJECTED in refused.stdout


def test_move_and_its_destinations(secured: Secured) -> None:
    def move(calling: str, destination: str) -> subprocess.CompletedProcess[str]:
        return run("movescu", "-d", "-S", "-aet", calling, "-aec", "DICOMFLOW", "-aem", destination,
                   *secured.study_keys(), *secured.address)  # fmt: skip

    before = set(secured.storescp_dir.iterdir())
    allowed = move("MOVER", "STORESCP")
    assert allowed.returncode == 0 and "0x0000: Success" in allowed.stdout, allowed.stdout
    assert len(set(secured.storescp_dir.iterdir()) - before) == 3
    other = move("MOVER", "ELSEWHERE")  # registered, but not for MOVER
    assert "0xa801: Refused: Move Destination unknown" in other.stdout
    not_for_getter = move("GETTER", "STORESCP")  # may retrieve, to no destination
    assert "0xa801" in not_for_getter.stdout
    # movescu proposes C-FIND too, which FINDER may use: the association is accepted and the
    # C-MOVE refused on its own.
    refused = move("FINDER", "STORESCP")
    assert "Refused: Not authorized" in refused.stdout or "0x0124" in refused.stdout
    assert "FINDER may not retrieve (not authorized)" in refused.stdout
    assert len(set(secured.storescp_dir.iterdir()) - before) == 3  # nothing more sent


def test_get(secured: Secured, tmp_path: Path) -> None:
    allowed = run("getscu", "-S", "-aet", "GETTER", "-aec", "DICOMFLOW", "-od", str(tmp_path),
                  *secured.study_keys(), *secured.address)  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    assert len(list(tmp_path.iterdir())) == 3
    refused = run("getscu", "-S", "-aet", "STORER", "-aec", "DICOMFLOW", "-od", str(tmp_path),
                  *secured.study_keys(), *secured.address)  # fmt: skip
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout


def test_an_object_over_the_size_limit_is_refused(secured: Secured) -> None:
    result = run("storescu", "-d", "-aet", "STORER", "-aec", "DICOMFLOW", *secured.address,
                 str(secured.big_file))  # fmt: skip
    assert "0xa700: Refused: Out of resources" in result.stdout, result.stdout[-3000:]
    assert "exceeds the limit of 300000 bytes" in result.stdout
    spool = secured.server.data_dir / "spool"
    names = [p.name for p in spool.rglob("*.dcm")] if spool.exists() else []
    assert all("big" not in name for name in names)
    again = run("storescu", "-aet", "STORER", "-aec", "DICOMFLOW", *secured.address,
                str(secured.files[0]))  # fmt: skip
    assert again.returncode == 0, again.stdout


def test_the_association_limit(secured: Secured) -> None:
    ae = AE(ae_title="STORER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", secured.server.dicom_port) for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        refused = run("echoscu", "-aet", "STORER", "-aec", "DICOMFLOW", *secured.address)
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stdout, refused.stdout
        assert all(assoc.send_c_echo().Status == 0 for assoc in held)  # they go on
    finally:
        for assoc in held:
            assoc.release()


def test_tls(secured: Secured) -> None:
    tls_address = ["127.0.0.1", str(secured.tls_port)]
    stored = run("storescu", *secured.tls(), "-aet", "STORER", "-aec", "DICOMFLOW",
                 *tls_address, str(secured.files[1]))  # fmt: skip
    assert stored.returncode == 0 and "Success" in stored.stdout, stored.stdout
    plain = run("echoscu", "-aet", "STORER", "-aec", "DICOMFLOW", *tls_address, timeout=60)
    assert plain.returncode != 0
    anonymous = run("echoscu", "+tla", "+cf", str(secured.pki.ca), "-aet", "STORER",
                    "-aec", "DICOMFLOW", *tls_address)  # fmt: skip
    assert anonymous.returncode != 0  # mutual TLS: no client certificate, no association
    refused = run("echoscu", *secured.tls(), "-aet", "STRANGER", "-aec", "DICOMFLOW",
                  *tls_address)  # fmt: skip
    assert REJECTED in refused.stdout  # the allowlists hold on the TLS port too
    echoed = run("echoscu", *secured.tls(), "-aet", "FINDER", "-aec", "DICOMFLOW", *tls_address)
    assert echoed.returncode == 0, echoed.stdout
