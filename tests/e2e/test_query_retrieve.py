"""DIMSE query/retrieve end to end: `dicomflow serve` against DCMTK's echoscu, storescu,
findscu, movescu (to a DCMTK storescp and to an Orthanc, both started here) and getscu."""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomflow.synthetic import iter_study_tree, write_tree
from tests.conftest import free_port
from tests.e2e.conftest import Server, dcmtk, server_env, wait_for_port

pytestmark = pytest.mark.e2e

# 4 patients (DOE, ROE, SMITH, MÜLLER) x 1 study x 2 series (CT, MR) x 3 instances = 24
PATIENTS, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 4, 2, 3


def run(*args: str | bytes, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool in verbose mode; stdout and stderr together."""
    result = subprocess.run(
        [dcmtk(str(args[0])), "-v", *args[1:]],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode("utf-8", "replace"), ""
    )


@dataclass
class Archive:
    server: Server
    sent: list[Dataset]
    storescp_dir: Path
    storescp_port: int

    @property
    def address(self) -> list[str]:
        return ["127.0.0.1", str(self.server.dicom_port)]

    def studies(self) -> dict[str, list[Dataset]]:
        result: dict[str, list[Dataset]] = {}
        for ds in self.sent:
            result.setdefault(ds.StudyInstanceUID, []).append(ds)
        return result


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, storescp: tuple[Path, int]
) -> Iterator[Archive]:
    """A served archive holding 24 instances sent with DCMTK storescu."""
    folder = tmp_path_factory.mktemp("qr")
    dicom_port, http_port = free_port(), free_port()
    env = server_env(folder / "data", dicom_port, http_port)
    env["DICOMFLOW_DESTINATIONS"] = f"STORESCP@127.0.0.1:{storescp[1]}"
    server = Server(folder / "data", dicom_port, http_port, env, folder / "server.log")
    server.start()
    try:
        files = write_tree(
            iter_study_tree(PATIENTS, 1, SERIES_PER_STUDY, INSTANCES_PER_SERIES), folder / "send"
        )
        sent = run("storescu", "-aec", "DICOMFLOW", "+sd", "+r", "-nh", "127.0.0.1",
                   str(dicom_port), str(folder / "send"))  # fmt: skip
        assert sent.returncode == 0, sent.stdout[-3000:]
        server.wait_idle()
        datasets = [pydicom.dcmread(path) for path in files]
        yield Archive(server, datasets, storescp[0], storescp[1])
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-3000:]


def findscu(archive: Archive, model: str, keys: list[str], out: Path) -> tuple[list[Dataset], str]:
    """(the answers, findscu's output) of one C-FIND by DCMTK findscu (-P or -S)."""
    out.mkdir(parents=True, exist_ok=True)
    args: list[str] = ["findscu", model, "-aec", "DICOMFLOW", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run(*args, *archive.address)
    assert result.returncode == 0, result.stdout[-3000:]
    answers = [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return answers, result.stdout


def test_echoscu(archive: Archive) -> None:
    result = run("echoscu", "-aec", "DICOMFLOW", *archive.address)
    assert result.returncode == 0 and "Received Echo Response (Success)" in result.stdout


def test_findscu_study_root_every_level(archive: Archive, tmp_path: Path) -> None:
    studies, output = findscu(
        archive,
        "-S",
        [
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ],
        tmp_path / "study",
    )
    assert "Received Final Find Response (Success)" in output
    assert len(studies) == PATIENTS
    for study in studies:
        assert study.NumberOfStudyRelatedSeries == SERIES_PER_STUDY
        assert study.NumberOfStudyRelatedInstances == SERIES_PER_STUDY * INSTANCES_PER_SERIES
        assert sorted(study.ModalitiesInStudy) == ["CT", "MR"]
    first = archive.sent[0]
    series, _ = findscu(
        archive,
        "-S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={first.StudyInstanceUID}",
            "SeriesInstanceUID",
            "Modality",
            "NumberOfSeriesRelatedInstances",
        ],
        tmp_path / "series",
    )
    assert sorted(s.Modality for s in series) == ["CT", "MR"]
    assert all(s.NumberOfSeriesRelatedInstances == INSTANCES_PER_SERIES for s in series)
    images, _ = findscu(
        archive,
        "-S",
        [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={first.StudyInstanceUID}",
            f"SeriesInstanceUID={first.SeriesInstanceUID}",
            "SOPInstanceUID",
            "InstanceNumber",
        ],
        tmp_path / "image",
    )
    expected = {
        ds.SOPInstanceUID for ds in archive.sent if ds.SeriesInstanceUID == first.SeriesInstanceUID
    }
    assert {i.SOPInstanceUID for i in images} == expected


def test_findscu_patient_root_every_level(archive: Archive, tmp_path: Path) -> None:
    patients, _ = findscu(
        archive,
        "-P",
        [
            "QueryRetrieveLevel=PATIENT",
            "PatientName=doe*",  # person names match case-insensitively
            "PatientID",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedInstances",
        ],
        tmp_path / "patient",
    )
    [patient] = patients
    assert patient.PatientID == "PID0000" and patient.NumberOfPatientRelatedInstances == 6
    studies, _ = findscu(
        archive,
        "-P",
        ["QueryRetrieveLevel=STUDY", "PatientID=PID0000", "StudyInstanceUID", "StudyDate"],
        tmp_path / "study",
    )
    [study] = studies
    series, _ = findscu(
        archive,
        "-P",
        [
            "QueryRetrieveLevel=SERIES",
            "PatientID=PID0000",
            f"StudyInstanceUID={study.StudyInstanceUID}",
            "SeriesInstanceUID",
        ],
        tmp_path / "series",
    )
    assert len(series) == SERIES_PER_STUDY
    images, _ = findscu(
        archive,
        "-P",
        [
            "QueryRetrieveLevel=IMAGE",
            "PatientID=PID0000",
            f"StudyInstanceUID={study.StudyInstanceUID}",
            f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
            "SOPInstanceUID",
        ],
        tmp_path / "image",
    )
    assert len(images) == INSTANCES_PER_SERIES


def test_findscu_date_range_and_character_set(archive: Archive, tmp_path: Path) -> None:
    dated, _ = findscu(
        archive,
        "-S",
        ["QueryRetrieveLevel=STUDY", "StudyDate=20240201-20240331", "PatientID"],
        tmp_path / "dates",
    )
    assert sorted(s.PatientID for s in dated) == ["PID0001", "PID0002"]
    # A Latin-1 query (raw bytes on the command line), answered in Latin-1.
    out = tmp_path / "latin1"
    out.mkdir()
    result = subprocess.run(
        [dcmtk("findscu"), "-S", "-aec", "DICOMFLOW", "-X", "-od", str(out),
         "-k", "SpecificCharacterSet=ISO_IR 100", "-k", "QueryRetrieveLevel=STUDY",
         "-k", "PatientName=M\xdcLLER*".encode("latin-1"), *archive.address],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [answer] = [pydicom.dcmread(path) for path in out.glob("rsp*.dcm")]
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    assert str(answer.PatientName) == "MÜLLER^JANE3"


def test_findscu_bad_queries_get_failure_statuses(archive: Archive, tmp_path: Path) -> None:
    cases = [
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2024x"], "Failed: UnableToProcess"),
        ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID"], "DataSetDoesNotMatchSOPClass"),
        ("-P", ["QueryRetrieveLevel=WARD", "PatientID"], "DataSetDoesNotMatchSOPClass"),
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.*"], "UnableToProcess"),
    ]
    for index, (model, keys, expected) in enumerate(cases):
        answers, output = findscu(archive, model, keys, tmp_path / str(index))
        assert answers == [] and expected in output, output[-2000:]
    injection, output = findscu(
        archive,
        "-S",
        ["QueryRetrieveLevel=STUDY", "PatientName=x' OR '1'='1"],
        tmp_path / "injection",
    )
    assert injection == [] and "Final Find Response (Success)" in output


def _move(
    archive: Archive, destination: str, model: str, keys: list[str], check: bool = True
) -> str:
    args = ["movescu", "-d", model, "-aec", "DICOMFLOW", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    result = run(*args, *archive.address)
    assert result.returncode == 0 or not check, result.stdout[-3000:]
    return result.stdout


def _final_counts(output: str) -> dict[str, int]:
    """The sub-operation counts of movescu's final response (from its debug output)."""
    final = output[output.rindex("Received Final Move Response") :]
    return {
        name: int(value)
        for name, value in re.findall(
            r"(Remaining|Completed|Failed|Warning) Suboperations\s*:\s*(\d+)", final
        )
    }


def test_movescu_to_a_dcmtk_storescp(archive: Archive) -> None:
    before = set(archive.storescp_dir.iterdir())
    study_uid, study = next(iter(archive.studies().items()))
    output = _move(
        archive, "STORESCP", "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]
    )
    assert "0x0000: Success" in output
    assert _final_counts(output) == {"Remaining": 0, "Completed": 6, "Failed": 0, "Warning": 0}
    received = [pydicom.dcmread(p) for p in set(archive.storescp_dir.iterdir()) - before]
    assert {ds.SOPInstanceUID for ds in received} == {ds.SOPInstanceUID for ds in study}
    by_uid = {ds.SOPInstanceUID: ds for ds in study}
    for ds in received:
        assert ds.PixelData == by_uid[ds.SOPInstanceUID].PixelData

    output = _move(archive, "STORESCP", "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=PID0003"])
    assert _final_counts(output)["Completed"] == 6
    study_keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]
    output = _move(archive, "NOBODY", "-S", study_keys, check=False)
    assert "0xa801: Refused: Move Destination unknown" in output
    output = _move(archive, "STORESCP", "-S", ["QueryRetrieveLevel=STUDY"], check=False)
    assert "0xa900" in output and "StudyInstanceUID" in output


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """An Orthanc of our own (DICOM port, HTTP port), with a generated configuration."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).exists():
        pytest.fail("Orthanc is not installed: scripts/bootstrap.sh installs it (apt orthanc)")
    folder = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "dicomflow-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {},
        "DicomCheckCalledAet": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=folder
    )
    wait_for_port(dicom_port)
    wait_for_port(http_port)
    yield dicom_port, http_port
    process.terminate()
    process.wait(timeout=30)


def test_movescu_to_orthanc_registered_through_the_admin_api(
    archive: Archive, orthanc: tuple[int, int]
) -> None:
    dicom_port, http_port = orthanc
    created = archive.server.http.post(
        "/api/admin/destinations",
        json={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port},
    )
    assert created.status_code == 201, created.text
    try:
        study_uids = list(archive.studies())[1:3]
        output = _move(
            archive,
            "ORTHANC",
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(study_uids)],
        )
        assert _final_counts(output) == {"Remaining": 0, "Completed": 12, "Failed": 0, "Warning": 0}
        statistics = httpx.get(f"http://127.0.0.1:{http_port}/statistics", timeout=10).json()
        assert statistics["CountInstances"] == 12 and statistics["CountStudies"] == 2
        stored = httpx.get(f"http://127.0.0.1:{http_port}/instances?expand", timeout=10).json()
        sent = {ds.SOPInstanceUID for uid in study_uids for ds in archive.studies()[uid]}
        assert {i["MainDicomTags"]["SOPInstanceUID"] for i in stored} == sent
    finally:
        archive.server.http.delete("/api/admin/destinations/ORTHANC")


def test_getscu(archive: Archive, tmp_path: Path) -> None:
    study_uid, study = next(iter(archive.studies().items()))
    result = run(
        "getscu", "-S", "-aec", "DICOMFLOW", "-od", str(tmp_path),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        *archive.address,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Number of Completed Suboperations : 6" in result.stdout
    assert "Number of Failed Suboperations    : 0" in result.stdout
    received = [pydicom.dcmread(path) for path in tmp_path.iterdir()]
    assert {ds.SOPInstanceUID for ds in received} == {ds.SOPInstanceUID for ds in study}

    series_dir = tmp_path / "series"
    series_dir.mkdir()
    first = study[0]
    result = run(
        "getscu", "-P", "-aec", "DICOMFLOW", "-od", str(series_dir),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"PatientID={first.PatientID}",
        "-k", f"StudyInstanceUID={study_uid}", "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
        *archive.address,
    )  # fmt: skip
    assert "Number of Completed Suboperations : 3" in result.stdout
    assert len(list(series_dir.iterdir())) == INSTANCES_PER_SERIES
