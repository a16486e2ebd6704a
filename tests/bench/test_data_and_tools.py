"""Bench data stamping, query criteria, /proc parsing and tool discovery (no timing)."""

from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from dicomflow.bench import clients, procs
from dicomflow.bench.data import (
    CASES,
    Identity,
    Template,
    bench_uid,
    flat_identities,
    patient_name,
    study_date,
    tree_identities,
    write_flat,
    write_tree,
)
from dicomflow.bench.runner import query_criteria
from dicomflow.bench.tools import parse_dcmtk_version, parse_orthanc_version
from dicomflow.kernel.uids import is_valid_uid


def test_stamped_objects_are_valid_and_distinct() -> None:
    template = Template(CASES["tiny"])
    first = template.render(1234, Identity(study=3, series=7, instance=99, patient=3))
    second = template.render(1234, Identity(study=4, series=8, instance=100, patient=4))
    assert len(first) == len(second) == template.size
    ds = pydicom.dcmread(BytesIO(first))
    assert ds.SOPInstanceUID == bench_uid(3, 1234, 99)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == bench_uid(1, 1234, 3)
    assert ds.SeriesInstanceUID == bench_uid(2, 1234, 7)
    assert ds.PatientID == "BPID00000003"
    assert str(ds.PatientName) == patient_name(3)
    assert ds.StudyDate == study_date(3)
    assert ds.PixelData == pydicom.dcmread(BytesIO(template.data)).PixelData
    assert pydicom.dcmread(BytesIO(second)).SOPInstanceUID != ds.SOPInstanceUID
    assert all(is_valid_uid(u) for u in (ds.SOPInstanceUID, ds.StudyInstanceUID))


def test_bench_uids_have_a_fixed_length_and_range() -> None:
    assert len(bench_uid(1, 0, 0)) == len(bench_uid(6, 10**8 - 1, 10**12 - 1)) == 26
    with pytest.raises(ValueError, match="out of range"):
        bench_uid(7, 0, 0)


def test_patient_name_prefixes_select_one_in_676() -> None:
    names = [patient_name(n) for n in range(26 * 26 * 4)]
    assert all(len(n) == 14 for n in names)
    prefix = names[5][:5]
    assert sum(n.startswith(prefix) for n in names) == 4


def test_identity_layouts() -> None:
    flat = list(flat_identities(120, first=0, per_series=50, series_per_study=2))
    assert flat[49].series == 0 and flat[50].series == 1 and flat[100].study == 1
    tree = list(tree_identities(10, 2, series_per_study=2, per_series=3))
    assert len(tree) == 12
    assert len({i.instance for i in tree}) == 12
    assert {i.study for i in tree} == {10, 11}


def test_writers(tmp_path: Path) -> None:
    template = Template(CASES["tiny"])
    folders = [tmp_path / "a", tmp_path / "b"]
    written = write_flat(template, 1, folders, flat_identities(5))
    assert written == 5 * template.size
    assert sorted(len(list(f.iterdir())) for f in folders) == [2, 3]
    files = write_tree(template, 1, tmp_path / "tree", tree_identities(0, 4, 1, 2), groups=2)
    assert files == 8
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["g0", "g1"]


def test_a_flat_folder_is_sent_in_instance_order_and_a_tree_is_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat = tmp_path / "flat"
    write_flat(Template(CASES["tiny"]), 1, [flat], flat_identities(120))
    listed = clients.storescu_inputs(flat)
    names = [Path(arg).name for arg in listed]
    # The instances of a series one after the other (the file system lists them in hash order).
    assert names == [f"{n:012d}.dcm" for n in range(120)]
    tree = tmp_path / "tree"
    write_tree(Template(CASES["tiny"]), 1, tree, tree_identities(0, 2, 1, 2), groups=1)
    assert clients.storescu_inputs(tree) == ["+sd", "+r", str(tree)]
    monkeypatch.setattr(clients, "MAX_LISTED_FILES", 100)
    assert clients.storescu_inputs(flat) == ["+sd", "+r", str(flat)]


def test_query_criteria() -> None:
    assert query_criteria("PatientID", 12) == {"PatientID": "BPID00000012"}
    assert query_criteria("PatientName prefix", 12)["PatientName"].endswith("*")
    assert query_criteria("StudyDate", 12) == {"StudyDate": study_date(12)}
    with pytest.raises(ValueError, match="unknown query kind"):
        query_criteria("Nope", 1)


def test_proc_parsing() -> None:
    stat = procs.parse_stat(
        "1234 (python (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 10 5 20 0 4 0 777 0"
    )
    assert (stat.pid, stat.comm, stat.ppid) == (1234, "python (x) y", 1)
    assert stat.cpu_seconds == pytest.approx(300 / procs.CLOCK_TICKS)
    assert stat.children_cpu_seconds == pytest.approx(15 / procs.CLOCK_TICKS)
    assert stat.start_ticks == 777
    status = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
    assert procs.parse_status_kib(status, "VmRSS") == 1024 * 1024
    assert procs.parse_status_kib(status, "VmHWM") == 2048 * 1024
    assert procs.parse_status_kib(status, "VmSwap") == 0
    share = procs.contention([10, 0, 10, 70, 0, 0, 0, 10], [20, 0, 20, 140, 0, 0, 0, 20])
    assert share == {"busy": 0.2, "iowait": 0.0, "steal": 0.1}


def test_peak_rss_by_role() -> None:
    peaks = procs.PeakRss(peaks={1: 100, 2: 50, 3: 25}, labels={1: "ingest", 2: "ingest"})
    assert peaks.by_label() == {"ingest": 150, "other": 25}
    assert peaks.total() == 175
    assert peaks.to_json()["by_role_bytes"] == {"ingest": 150, "other": 25}


def test_version_parsing_tells_dcmtk_from_look_alikes() -> None:
    assert parse_dcmtk_version("$dcmtk: storescu v3.6.7 2022-04-22 $") == "3.6.7"
    assert parse_dcmtk_version("usage: storescu [options] addr port path") is None
    assert parse_orthanc_version("/usr/sbin/Orthanc 1.10.1\nCopyright") == "1.10.1"
    assert parse_orthanc_version("Orthanc 1.12.3") == "1.12.3"
    assert parse_orthanc_version("something else") is None
