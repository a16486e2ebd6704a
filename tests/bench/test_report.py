"""Targets, table rows and the JSON file, computed from a made-up results document."""

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dicomflow.bench.report import build_rows, compute_targets, render, ui_slowest_page, write_json
from dicomflow.bench.runner import summarize_ingest, summarize_queries
from dicomflow.bench.stats import Status


def _run(receiver: str, case: str, assoc: int, rate: float, nodelay: bool = True) -> dict[str, Any]:
    return {
        "receiver": receiver,
        "case": case,
        "associations": assoc,
        "nodelay": nodelay,
        "repeat": 0,
        "instances": 100,
        "rate": rate,
        "mb_per_s": rate * 0.5,
        "cpu_s": 0.2,
        "settle_s": 0.0,
        "machine": {"steal": 0.01},
        "ok": True,
    }


def _level(
    instances: int, qido_p95: float, df_find: float | None, orthanc_find: float
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "instances": instances,
        "import": {
            "files": instances,
            "files_per_s_durable": 1200.0,
            "files_per_s_searchable": 800.0,
            "mb_per_s_durable": 11.0,
            "mb_per_s_searchable": 7.0,
        },
        "qido": summarize_queries({"PatientID": [qido_p95 / 2] * 19 + [qido_p95 * 1.1]}),
        "cfind_orthanc": summarize_queries({"PatientID": [orthanc_find] * 5}),
        "rss_after": {"total_bytes": 400 * 2**20 + instances, "by_role_bytes": {}},
    }
    level["cfind_dicomflow"] = (
        summarize_queries({"PatientID": [df_find] * 5})
        if df_find is not None
        else {"status": "n/a (no C-FIND SCP)"}
    )
    return level


@pytest.fixture
def results() -> dict[str, Any]:
    runs = [
        _run("dicomflow", "ct", 1, 400.0),
        _run("dicomflow", "ct", 1, 380.0),
        _run("dicomflow", "ct", 1, 420.0),
        _run("dcmtk", "ct", 1, 700.0),
        _run("orthanc", "ct", 1, 230.0),
        _run("dicomflow", "ct", 4, 700.0),
        _run("dicomflow-ingest", "ct", 4, 900.0),
        _run("dcmtk", "ct", 4, 1080.0),
        _run("orthanc", "ct", 4, 380.0),
        _run("dicomflow", "tiny", 1, 100.0, nodelay=False),
        _run("orthanc", "tiny", 1, 11.0, nodelay=False),
    ]
    return {
        "machine": {"cpu_model": "test cpu", "cores": 2, "filesystem": "ext4"},
        "versions": {"dicomflow": "0"},
        "notes": ["a note"],
        "ingest": {"runs": runs, "summary": summarize_ingest(runs)},
        "searchable": {
            "case": "ct",
            "associations": 4,
            "ingest_seconds": 60.0,
            "rate": 500.0,
            "latency": {"p50_s": 0.2, "p95_s": 0.8, "p99_s": 1.2},
            "never_seen": 0,
            "max_lag": 120,
            "drain_after_ingest_s": 1.5,
        },
        "archive": {
            "levels": [_level(10_000, 0.01, None, 0.05), _level(100_000, 0.02, 0.004, 0.08)]
        },
        "memory": {
            "ingest": {
                "sum_of_peaks_bytes": 300 * 2**20,
                "by_role_bytes": {"ingest": 100 * 2**20, "api": 200 * 2**20},
            }
        },
    }


def test_ingest_summary_takes_medians(results: dict[str, Any]) -> None:
    summary = {
        (r["case"], r["associations"], r["nodelay"], r["receiver"]): r
        for r in results["ingest"]["summary"]
    }
    ct1 = summary[("ct", 1, True, "dicomflow")]
    assert ct1["rate"] == 400.0
    assert ct1["runs"] == 3
    assert (ct1["rate_min"], ct1["rate_max"]) == (380.0, 420.0)
    assert ct1["cpu_ms_per_object"] == pytest.approx(2.0)


def test_targets(results: dict[str, Any]) -> None:
    targets = {t.key: t for t in compute_targets(results)}
    assert targets["ingest.ctx1.vs_orthanc"].value == pytest.approx(400 / 230)
    assert targets["ingest.ctx1.vs_orthanc"].status is Status.MET
    assert targets["ingest.ctx4.vs_orthanc"].status is Status.MET
    assert targets["ingest.ctx4.vs_dcmtk"].value == pytest.approx(700 / 1080)
    assert targets["ingest.ctx4.vs_dcmtk"].status is Status.MISSED
    assert "ingest.ctx1.vs_dcmtk" not in targets
    assert targets["ingest.tinyx1-nagle.vs_orthanc"].status is Status.MET
    assert targets["searchable.p95"].status is Status.MET
    assert targets["query.qido.p95_at_1m"].status is Status.NOT_MEASURED
    assert "1M not measured" in targets["query.qido.p95_at_1m"].note
    assert targets["query.cfind.vs_orthanc_at_100k"].value == pytest.approx(0.05)
    assert targets["query.cfind.vs_orthanc_at_100k"].status is Status.MET
    assert targets["import.100000.durable"].status is Status.MET
    assert targets["import.100000.searchable"].status is Status.MISSED
    assert targets["memory.rss_1m_vs_10k"].status is Status.NOT_MEASURED


def test_unseen_objects_fail_the_searchable_target(results: dict[str, Any]) -> None:
    results["searchable"]["never_seen"] = 3
    target = next(t for t in compute_targets(results) if t.key == "searchable.p95")
    assert target.status is Status.MISSED
    assert "3 objects" in target.note


def test_missing_cfind_scp_is_reported_not_failed(results: dict[str, Any]) -> None:
    results["archive"]["levels"][1]["cfind_dicomflow"] = {"status": "n/a (no C-FIND SCP)"}
    target = next(t for t in compute_targets(results) if t.key.startswith("query.cfind"))
    assert target.status is Status.NOT_MEASURED
    assert target.note == "n/a (no C-FIND SCP)"


def test_rows_show_ratios_and_verdicts(results: dict[str, Any]) -> None:
    rows = build_rows(results, compute_targets(results))
    ct4 = next(r for r in rows if r.measure.startswith("CT") and "4 associations" in r.measure)
    assert ct4.vs_dcmtk == "0.65x"
    assert ct4.vs_orthanc == "1.84x"
    assert "ingest role alone: 900/s" in ct4.dicomflow
    assert ct4.status.splitlines() == ["met", "missed by 7%"]
    find_10k = next(r for r in rows if r.measure == "C-FIND at 10,000 instances")
    assert find_10k.dicomflow == "n/a (no C-FIND SCP)"
    assert any(r.measure.startswith("during ingest") for r in rows)


def test_render_and_json_round_trip(results: dict[str, Any], tmp_path: Path) -> None:
    targets = compute_targets(results)
    results["targets"] = [t.to_json() for t in targets]
    out = io.StringIO()
    render(Console(file=out, width=200), results, targets)
    text = out.getvalue()
    assert "dicomflow / Orthanc" in text and "a note" in text
    path = tmp_path / "deep" / "r.json"
    write_json(path, results)
    loaded = json.loads(path.read_text())
    assert loaded["targets"][0]["status"] in {"met", "missed", "n/a"}
    assert loaded["ingest"]["summary"] == results["ingest"]["summary"]


def test_the_slowest_ui_page_is_the_ui_target() -> None:
    def pages(**p95: float) -> dict[str, Any]:
        return {name.replace("_", " "): {"p50_s": s / 2, "p95_s": s} for name, s in p95.items()}

    ui = {"server": pages(study=0.02, dashboard=0.05), "browser": pages(study=0.3, dashboard=0.2)}
    results: dict[str, Any] = {
        "archive": {"levels": [{"instances": 100_000, "ui": ui, "rss_after": {"total_bytes": 1}}]}
    }
    assert ui_slowest_page(ui) == ("browser", "study", 0.3)
    target = next(t for t in compute_targets(results) if t.key == "ui.100000.slowest_page")
    assert target.status is Status.MET and target.note == "study"
    rows = [r for r in build_rows(results, compute_targets(results)) if "Web UI" in r.section]
    assert [r.measure for r in rows] == ["study", "dashboard"]
    assert "browser 150.0 ms / 300.0 ms" in rows[0].dicomflow and rows[0].status
    assert not rows[1].status
    ui["browser"] = {"status": "n/a (Chromium not found)"}
    assert ui_slowest_page(ui) == ("server", "dashboard", 0.05)
    rows = [r for r in build_rows(results, compute_targets(results)) if "Web UI" in r.section]
    assert all("browser n/a (Chromium not found)" in r.dicomflow for r in rows)


def test_the_import_row_shows_where_its_cpu_goes(results: dict[str, Any]) -> None:
    levels = results["archive"]["levels"]
    levels[0]["import"]["cpu_ms_per_file_by_role"] = {
        "import": 0.45,
        "storage,index": 0.75,
        "metadata": 0.8,
        "api": 0.004,  # idle processes are left out of the row
    }
    rows = build_rows(results, compute_targets(results))
    first = f"{levels[0]['import']['files']:,} files"
    searchable = next(r for r in rows if r.measure.startswith(first) and "searchable" in r.measure)
    assert searchable.dicomflow.splitlines()[-1] == (
        "CPU ms/file: import 0.45, storage,index 0.75, metadata 0.80 (2.00 in all)"
    )
    durable = next(r for r in rows if r.measure.startswith(first) and "durable" in r.measure)
    assert "CPU" not in durable.dicomflow
    # Results written before the breakdown existed still render.
    second = next(r for r in rows if "searchable" in r.measure and r is not searchable)
    assert "CPU" not in second.dicomflow
