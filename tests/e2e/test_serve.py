"""`dicomflow serve` end to end: DCMTK storescu in, QIDO-RS / search / WADO-RS out."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pynetdicom.association
import pynetdicom.dsutils
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance, write_tree
from tests.e2e.conftest import (
    Server,
    dataset_bytes,
    dcmtk,
    parse_multipart,
    read_dataset,
    server_env,
)

pytestmark = pytest.mark.e2e

IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StationName",
)


def _three_studies(folder: Path) -> list[Path]:
    # 3 patients x 1 study x 2 series x 35 instances = 210 instances
    return write_tree(
        iter_study_tree(patients=3, series_per_study=2, instances_per_series=35), folder
    )


def _count_stored_originals(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "blobs" / "original").rglob("*.dcm"))


def test_storescu_to_searchable_retrievable_and_deidentified(
    server: Server, tmp_path: Path
) -> None:
    files = _three_studies(tmp_path / "send")
    server.storescu(tmp_path / "send")
    server.wait_idle()

    studies = server.http.get("/dicomweb/studies").json()
    assert len(studies) == 3
    for study in studies:
        assert study["00201208"]["Value"] == [70]  # NumberOfStudyRelatedInstances
        assert study["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
        assert set(study["00080061"]["Value"]) <= {"CT", "MR"}  # ModalitiesInStudy

    found = server.http.get("/api/search", params={"q": "PatientName:DOE*", "level": "study"})
    assert found.status_code == 200, found.text
    assert found.json()["total"] == 1
    by_modality = server.http.get(
        "/api/search",
        params={"q": "Modality:CT AND StudyDate:[20240101 TO 20241231]", "level": "series"},
    ).json()
    assert by_modality["total"] == 3

    sent = read_dataset(files[0].read_bytes())
    study_uid, series_uid, sop_uid = (
        sent.StudyInstanceUID,
        sent.SeriesInstanceUID,
        sent.SOPInstanceUID,
    )
    series = server.http.get(f"/dicomweb/studies/{study_uid}/series").json()
    assert len(series) == 2
    instances = server.http.get(
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances"
    ).json()
    assert len(instances) == 35

    url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    response = server.http.get(url)
    assert response.status_code == 200
    [part] = parse_multipart(response)
    assert dataset_bytes(part) == dataset_bytes(files[0].read_bytes())
    whole_series = parse_multipart(
        server.http.get(f"/dicomweb/studies/{study_uid}/series/{series_uid}")
    )
    assert len(whole_series) == 35

    # The de-identified namespace: same structure, pseudonymous UIDs, no identifying values.
    deid_studies = server.http.get("/dicomweb/deidentified/studies").json()
    assert len(deid_studies) == 3
    deid_study_uids = {s["0020000D"]["Value"][0] for s in deid_studies}
    assert study_uid not in deid_study_uids
    for deid_uid in deid_study_uids:
        parts = parse_multipart(server.http.get(f"/dicomweb/deidentified/studies/{deid_uid}"))
        assert len(parts) == 70
        series_uids = set()
        for data in parts[:70]:
            ds = read_dataset(data)
            assert ds.StudyInstanceUID == deid_uid
            series_uids.add(ds.SeriesInstanceUID)
            for keyword in IDENTIFYING:
                value = str(ds.get(keyword, ""))
                assert value not in {str(sent.get(keyword, "")) for sent in [sent]} or value == ""
            assert "DOE" not in str(ds.PatientName) and "ROE" not in str(ds.PatientName)
            assert ds.get("PatientIdentityRemoved") == "YES"
        assert len(series_uids) == 2


def test_sending_twice_creates_no_duplicates(server: Server, tmp_path: Path) -> None:
    write_tree(
        iter_study_tree(patients=1, series_per_study=1, instances_per_series=20), tmp_path / "s"
    )
    server.storescu(tmp_path / "s")
    server.storescu(tmp_path / "s")
    server.wait_idle()
    assert server.http.get("/api/search", params={"level": "instance"}).json()["total"] == 20
    assert (
        server.http.get(
            "/api/search", params={"level": "instance", "namespace": "deidentified"}
        ).json()["total"]
        == 20
    )
    [study] = server.http.get("/dicomweb/studies").json()
    assert study["00201208"]["Value"] == [20]
    assert _count_stored_originals(server.data_dir) == 20
    assert sum(1 for _ in (server.data_dir / "blobs" / "deidentified").rglob("*.dcm")) == 20


def _succeeded_files(storescu_output: str) -> list[str]:
    """Files that storescu saw acknowledged with Success, from its -v log."""
    succeeded, current = [], None
    for line in storescu_output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            succeeded.append(current)
            current = None
    return succeeded


def test_kill_9_loses_no_acknowledged_instance(server: Server, tmp_path: Path) -> None:
    files = write_tree(
        iter_study_tree(patients=5, series_per_study=1, instances_per_series=100), tmp_path / "s"
    )
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    sender = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aec",
            "DICOMFLOW",
            "+sd",
            "+r",
            "-nh",
            "127.0.0.1",
            str(server.dicom_port),
            str(tmp_path / "s"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        received = server.http.get("/api/status").json()["topics"].get("dicomflow.received", 0)
        if received >= 150:
            break
        time.sleep(0.05)
    server.kill9()
    output, _ = sender.communicate(timeout=120)
    acknowledged = _succeeded_files(output)
    assert 100 <= len(acknowledged) < len(files), output[-2000:]

    server.start()
    server.wait_idle()
    for path in acknowledged:
        ds = read_dataset(Path(path).read_bytes())
        url = (
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        response = server.http.get(url, headers={"Accept": "application/dicom"})
        assert response.status_code == 200, path
        assert dataset_bytes(response.content) == dataset_bytes(Path(path).read_bytes())
    total = server.http.get("/api/search", params={"level": "instance"}).json()["total"]
    print(f"kill -9: sent {len(files)}, acknowledged {len(acknowledged)}, searchable {total}")
    assert total >= len(acknowledged)


def _pynetdicom_store(server: Server, payload: Dataset | Path) -> Dataset:
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="DICOMFLOW")
    assert assoc.is_established
    try:
        status: Dataset = assoc.send_c_store(payload)
    finally:
        assoc.release()
    return status


def test_bad_input_gets_clear_statuses_and_the_server_keeps_serving(
    server: Server, tmp_path: Path
) -> None:
    good = make_instance(PatientSpec(), 0, 0, 0)
    # A UID with path characters.
    hostile = make_instance(PatientSpec(), 0, 0, 1)
    hostile.StudyInstanceUID = "../../x"
    status = _pynetdicom_store(server, hostile)
    assert status.Status == 0xC210 and "StudyInstanceUID" in status.ErrorComment

    # A malformed dataset: the encoded bytes are cut in the middle of an element.
    def truncated_encode(ds: Dataset, *args: object) -> bytes:
        return bytes(pynetdicom.dsutils.encode(ds, *args))[:200] + b"\x08\x00\x18\x00UI\xff\xff"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pynetdicom.association, "encode", truncated_encode)
        status = _pynetdicom_store(server, make_instance(PatientSpec(), 0, 0, 2))
    assert status.Status == 0xC210, status
    assert "malformed" in status.ErrorComment or "UID" in status.ErrorComment

    # A truncated association: the peer vanishes in the middle of a transfer.
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="DICOMFLOW")
    assert assoc.is_established
    assoc.abort()

    # The server still serves, and a good object still goes all the way through.
    assert _pynetdicom_store(server, good).Status == 0x0000
    server.wait_idle()
    assert server.http.get("/api/search", params={"level": "instance"}).json()["total"] == 1


def test_import_reports_and_ingests_without_and_with_a_server(tmp_path: Path) -> None:
    from tests.conftest import free_port

    folder = tmp_path / "in"
    write_tree(iter_study_tree(patients=2, series_per_study=2, instances_per_series=5), folder)
    (folder / "notes.txt").write_text("not dicom")
    truncated = folder / "PID0000" / "truncated.dcm"
    truncated.write_bytes((folder / "PID0000" / "1" / "1" / "00001.dcm").read_bytes()[:300])
    data_dir = tmp_path / "data"
    env = server_env(data_dir, free_port(), free_port())
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow.cli", "import", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert "20 ingested" in out, out + result.stderr
    assert "1 skipped" in out and "notes.txt" in out
    assert "1 errors" in out and "truncated.dcm" in out
    assert result.returncode == 2  # errors were reported

    srv = Server(
        data_dir,
        int(env["DICOMFLOW_DICOM_PORT"]),
        int(env["DICOMFLOW_HTTP_PORT"]),
        env,
        tmp_path / "server.log",
    )
    srv.start()
    try:
        assert srv.http.get("/api/search", params={"level": "instance"}).json()["total"] == 20
        again = subprocess.run(
            [sys.executable, "-m", "dicomflow.cli", "import", str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "0 ingested" in again.stdout and "20 duplicates" in again.stdout, again.stdout
        more = tmp_path / "more"
        write_tree(
            iter_study_tree(patients=1, series_per_study=1, instances_per_series=4, seed="other"),
            more,
        )
        third = subprocess.run(
            [sys.executable, "-m", "dicomflow.cli", "import", str(more)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "4 ingested" in third.stdout, third.stdout + third.stderr
        assert srv.http.get("/api/search", params={"level": "instance"}).json()["total"] == 24
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("option", "name"),
    [("-xw", "JPEG2000.dcm"), ("-xr", "MR_small_RLE.dcm"), ("-xd", "image_dfl.dcm")],
)
def test_compressed_objects_are_kept_in_their_transfer_syntax(
    server: Server, tmp_path: Path, option: str, name: str
) -> None:
    from pydicom.data import get_testdata_file

    source = get_testdata_file(name, download=False)
    assert source is not None, name
    path = Path(str(source))
    result = subprocess.run(
        [
            dcmtk("storescu"),
            option,
            "-aec",
            "DICOMFLOW",
            "127.0.0.1",
            str(server.dicom_port),
            str(path),
        ],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server.wait_idle()
    sent = read_dataset(path.read_bytes())
    url = (
        f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
        f"/instances/{sent.SOPInstanceUID}"
    )
    response = server.http.get(url, headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    stored = read_dataset(response.content)
    # storescu re-encodes the attributes it sends, so the check is on what must not change:
    # the transfer syntax and the (compressed) pixel data, byte for byte.
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert stored.PixelData == sent.PixelData
