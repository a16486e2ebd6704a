"""The web UI's routes with FastAPI's TestClient: pages, fragments, downloads, exports,
dead-letter retry, reindex; and the pure parts (search form, tag dump, charts, formatting)."""

import csv
import io
import json
import time
import zipfile
from datetime import date

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dicomflow.api import deadletters
from dicomflow.api.routes import downloads
from dicomflow.api.ui import charts, searching
from dicomflow.api.ui import formatting as fmt
from dicomflow.api.ui.stats import EventLogFollower, LagTracker, studies_per_day
from dicomflow.api.ui.tags import tag_rows
from dicomflow.indexer.base import Level
from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.query import And, Or, Range, Wildcard
from dicomflow.kernel.bus.base import Record
from dicomflow.kernel.events import DeadLetter, Namespace, Topic, encode_event
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance
from tests.ui.conftest import Archive

# --- the search form ------------------------------------------------------------------------


def test_filters_become_lucene_clauses_anded_with_the_query_box() -> None:
    form = searching.SearchForm.from_params(
        {
            "q": "Modality:CT OR Modality:MR",
            "patient_name": "doe",
            "patient_id": "PID 1",
            "modality": "ct",
            "date_from": "2024-01-01",
            "accession": "A1*",
            "description": "Chest",
        }
    )
    assert form.lucene() == (
        '(Modality:CT OR Modality:MR) AND PatientName:doe* AND PatientID:"PID 1" AND '
        'ModalitiesInStudy:"CT" AND StudyDate:["2024-01-01" TO *] AND AccessionNumber:A1* AND '
        "(StudyDescription:*Chest* OR StudyDescription:*CHEST*)"
    )
    form.query()  # parses


def test_filter_values_are_escaped_not_interpreted() -> None:
    form = searching.SearchForm(patient_name='O"BRIEN (X) AND:', description="a b")
    query = form.query()
    assert isinstance(query, And)
    assert query.items[0] == Wildcard("PatientName", 'O"BRIEN (X) AND:*')
    description = query.items[1]
    assert isinstance(description, Or)
    assert description.items == (
        Wildcard("StudyDescription", "*a b*"),
        Wildcard("StudyDescription", "*A B*"),
    )


def test_date_range_filter_is_a_range() -> None:
    query = searching.SearchForm(date_from="2024-02-01", date_to="2024-02-29").query()
    assert query == Range("StudyDate", "2024-02-01", "2024-02-29")


def test_form_falls_back_to_defaults_on_bad_paging_but_refuses_unknown_namespaces() -> None:
    form = searching.SearchForm.from_params({"page": "x", "page_size": "7", "sort": "nope"})
    assert (form.page, form.page_size, form.sort) == (1, 25, searching.DEFAULT_SORT)
    with pytest.raises(ValueError, match="original or deidentified"):
        searching.SearchForm.from_params({"namespace": "spool"})
    params = searching.SearchForm(q="x", namespace=Namespace.DEIDENTIFIED, page=3).params()
    assert params == {"q": "x", "namespace": "deidentified", "page": "3"}


def test_an_invalid_query_is_reported() -> None:
    with pytest.raises(InvalidQuery):
        searching.SearchForm(q="NoSuchKeyword:1").query()


# --- pages ----------------------------------------------------------------------------------


def test_search_page_groups_patients_studies_and_series_with_thumbnails(
    filled: Archive, client: TestClient
) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    assert "<strong>2</strong> studies" in html
    assert "DOE, JOHN0" in html and "ROE, JANE1" in html
    assert html.count('class="patient"') == 2
    assert html.count('class="study"') == 2
    assert html.count("/thumbnail?viewport=96,96") == 4
    assert "Original data." in html
    assert '<script src="/ui/static/vendor/htmx.min.js' in html
    assert "http://" not in html.split("<main")[0].replace("http://www.w3.org", "")


def test_search_filters_and_partial_results_for_htmx(filled: Archive, client: TestClient) -> None:
    response = client.get(
        "/", params={"patient_name": "DOE"}, headers={"HX-Request": "true", "HX-Target": "results"}
    )
    assert response.status_code == 200
    assert "<html" not in response.text
    assert "DOE, JOHN0" in response.text and "ROE" not in response.text
    assert "<strong>1</strong> study" in response.text
    # the namespace switch follows the search (out-of-band swap)
    assert 'hx-swap-oob="true"' in response.text
    assert 'href="/?patient_name=DOE&amp;namespace=deidentified"' in response.text


def test_search_sorts_and_paginates(filled: Archive, client: TestClient) -> None:
    filled.add(iter_study_tree(patients=4, series_per_study=1, instances_per_series=1, seed="p"))
    page1 = client.get("/", params={"page_size": 10, "sort": "PatientName"}).text
    assert "<strong>6</strong> studies" in page1
    names = [n for n in ("DOE, JOHN0", "MÜLLER, JANE3", "ROE, JANE1", "SMITH, JOHN2") if n in page1]
    assert names == sorted(names)
    descending = client.get("/", params={"sort": "-PatientName"}).text
    assert descending.index("SMITH, JOHN2") < descending.index("DOE, JOHN0")
    small = client.get("/", params={"page_size": 10, "page": 1}).text
    assert 'aria-label="Result pages"' not in small  # 6 studies fit one page of 10


def test_invalid_query_shows_the_reason(filled: Archive, client: TestClient) -> None:
    response = client.get("/", params={"q": "StudyDate:[nonsense TO 2]"})
    assert response.status_code == 400
    assert "The query cannot be run" in response.text


def test_deidentified_namespace_is_carried_in_links_and_announced(
    filled: Archive, client: TestClient
) -> None:
    response = client.get("/", params={"namespace": "deidentified"})
    assert response.status_code == 200
    assert "De-identified data." in response.text
    assert "<strong>0</strong> studies" in response.text
    assert 'href="/ui/dashboard?namespace=deidentified"' in response.text
    assert client.get("/", params={"namespace": "spool"}).status_code == 400


def test_study_page_shows_attributes_series_thumbnails_and_instances(
    filled: Archive, client: TestClient
) -> None:
    ds = filled.datasets[0]
    response = client.get(f"/ui/studies/{ds.StudyInstanceUID}")
    assert response.status_code == 200
    html = response.text
    assert "DOE, JOHN0" in html and str(ds.AccessionNumber) in html
    assert html.count('class="series-card') == 2
    thumbnail = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"
    assert thumbnail in html
    assert html.count("<tr>") >= 3  # instances of the first series
    image = client.get(thumbnail + "?viewport=96,96")
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    missing = client.get("/ui/studies/1.2.3.4")
    assert missing.status_code == 404 and "Study not found" in missing.text
    assert client.get("/ui/studies/not-a-uid").status_code == 400


def test_instance_list_fragment_pages_and_redirects_without_htmx(
    filled: Archive, client: TestClient
) -> None:
    ds = filled.datasets[0]
    url = f"/ui/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
    fragment = client.get(url, headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "Instances of CT series 1 (3)" in fragment.text
    plain = client.get(url, follow_redirects=False)
    assert plain.status_code == 303
    assert plain.headers["location"].endswith(f"series={ds.SeriesInstanceUID}#instances")


def test_viewer_lists_rendered_frames_that_are_images(filled: Archive, client: TestClient) -> None:
    ds = filled.datasets[0]
    response = client.get(f"/ui/viewer/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}")
    assert response.status_code == 200
    data = response.text.split('id="viewer-data">')[1].split("</script>")[0]
    frames = json.loads(data)["frames"]
    assert len(frames) == 3 and frames[0]["window"] == "40,400"
    rendered = client.get(frames[0]["url"], params={"accept": "image/png"})
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(rendered.content)))
    assert pixels.shape == (64, 64) and pixels.std() > 5
    assert client.get(f"/ui/viewer/{ds.StudyInstanceUID}/1.2.3").status_code == 404


def test_viewer_starts_at_the_instance_asked_for_and_expands_frames(
    archive: Archive, client: TestClient
) -> None:
    patient = PatientSpec()
    archive.add([make_instance(patient, 0, 0, 0), make_instance(patient, 0, 0, 1, frames=4)])
    second = archive.datasets[1]
    response = client.get(
        f"/ui/viewer/{second.StudyInstanceUID}/{second.SeriesInstanceUID}",
        params={"instance": second.SOPInstanceUID},
    )
    payload = json.loads(response.text.split('id="viewer-data">')[1].split("</script>")[0])
    assert len(payload["frames"]) == 5
    assert payload["first"] == 1
    assert payload["frames"][4]["url"].endswith("/frames/4/rendered")


def test_tag_dump_shows_every_element_with_patient_name(
    filled: Archive, client: TestClient
) -> None:
    ds = filled.datasets[0]
    url = f"/ui/tags/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}"
    response = client.get(url)
    assert response.status_code == 200
    html = response.text
    row = html.split('data-keyword="PatientName"')[1].split("</tr>")[0]
    assert "(0010,0010)" in row and "DOE^JOHN0" in row and ">PN<" in row
    assert "Item 1" in html  # ReferencedStudySequence expanded
    assert "/bulkdata/7FE00010" in html
    wrong = f"/ui/tags/{ds.StudyInstanceUID}/1.2.3/{ds.SOPInstanceUID}"
    assert client.get(wrong).status_code == 404


def test_tag_rows_expand_sequences_and_person_names() -> None:
    dicom_json = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^J", "Ideographic": "D"}]},
        "00081110": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2"]}}]},
        "00091010": {"vr": "LO", "Value": ["x"]},
        "00280010": {"vr": "US", "Value": list(range(100))},
    }
    rows = list(tag_rows(dicom_json))
    assert [r.tag or f"item {r.item}" for r in rows] == [
        "(0008,1110)",
        "item 1",
        "(0008,1150)",
        "(0009,1010)",
        "(0010,0010)",
        "(0028,0010)",
    ]
    assert rows[2].depth == 2 and rows[2].keyword == "ReferencedSOPClassUID"
    assert rows[3].name == "Private tag"
    assert rows[4].value == "DOE^J=D"
    assert rows[5].value.endswith("(100 values)")


# --- downloads and exports ------------------------------------------------------------------


def test_study_series_and_instance_downloads(filled: Archive, client: TestClient) -> None:
    ds = filled.datasets[0]
    study = client.get(f"/api/download/studies/{ds.StudyInstanceUID}.zip")
    assert study.status_code == 200 and study.headers["content-type"] == "application/zip"
    assert f'filename="{ds.StudyInstanceUID}.zip"' in study.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(study.content)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == 6
        name = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert archive.read(name) == filled.stored[str(ds.SOPInstanceUID)]
    series = client.get(
        f"/api/download/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}.zip"
    )
    with zipfile.ZipFile(io.BytesIO(series.content)) as archive:
        assert len(archive.namelist()) == 3
    instance = client.get(
        f"/api/download/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}.dcm"
    )
    assert instance.status_code == 200
    assert instance.content == filled.stored[str(ds.SOPInstanceUID)]
    assert instance.headers["content-type"] == "application/dicom"
    assert client.get("/api/download/studies/1.2.3.zip").status_code == 404
    missing_ns = client.get(f"/api/download/studies/{ds.StudyInstanceUID}.zip?namespace=x")
    assert missing_ns.status_code == 400


def test_zip_names_objects_missing_from_the_blob_store(filled: Archive, client: TestClient) -> None:
    ds = filled.datasets[0]
    record = filled.index.get_instance(Namespace.ORIGINAL, str(ds.SOPInstanceUID))
    assert record is not None
    filled.blobs.delete(Namespace.ORIGINAL, record.blob.key)
    response = client.get(f"/api/download/studies/{ds.StudyInstanceUID}.zip")
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert len(archive.namelist()) == 6  # 5 objects and MISSING.txt
        assert str(ds.SOPInstanceUID) in archive.read("MISSING.txt").decode()


def test_csv_export_has_the_rows_of_the_search(filled: Archive, client: TestClient) -> None:
    response = client.get("/api/export/search.csv", params={"patient_name": "ROE"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-total-count"] == "1"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1
    assert rows[0]["PatientName"] == "ROE^JANE1"
    assert rows[0]["ModalitiesInStudy"] == "CT\\MR"
    assert rows[0]["NumberOfStudyRelatedInstances"] == "6"
    series = client.get("/api/export/search.csv", params={"level": "series"})
    assert len(list(csv.DictReader(io.StringIO(series.text)))) == 4
    assert client.get("/api/export/search.csv", params={"q": "Nope:1"}).status_code == 400


def test_csv_cells_that_look_like_formulas_are_quoted_as_text() -> None:
    assert downloads._cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert downloads._cell(["CT", "MR"]) == "CT\\MR"
    assert downloads._cell(None) == ""


def test_json_export(filled: Archive, client: TestClient) -> None:
    response = client.get("/api/export/search.json", params={"q": "PatientName:DOE*"})
    body = response.json()
    assert body["total"] == 1 and body["query"] == "PatientName:DOE*"
    assert body["results"][0]["PatientID"] == "PID0000"


def test_export_is_bounded(
    filled: Archive, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "MAX_EXPORT_ROWS", 1)
    monkeypatch.setattr(downloads, "EXPORT_PAGE", 1)
    response = client.get("/api/export/search.csv")
    assert len(list(csv.DictReader(io.StringIO(response.text)))) == 1
    assert response.headers["x-truncated"] == "first 1 of 2 results"


# --- dashboard ------------------------------------------------------------------------------


def _wait_for(text: str, client: TestClient, url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        html = client.get(url).text
        if text in html or time.monotonic() > deadline:
            return html
        time.sleep(0.1)


def test_dashboard_shows_counts_rates_senders_and_processors(
    filled: Archive, client: TestClient
) -> None:
    page = client.get("/ui/dashboard")
    assert page.status_code == 200 and "every 2s" in page.text
    live = _wait_for('id="received-count">12 ', client, "/ui/fragments/dashboard/live")
    assert 'id="received-count">12 ' in live
    assert 'id="stored-count">12 ' in live
    assert 'id="indexed-count">12 ' in live
    assert "objects/s" in live and "Objects received per 10 s" in live
    for processor in ("storage", "metadata", "deidentify", "index"):
        assert f"<strong>{processor}</strong>" in live
    charts_html = client.get("/ui/fragments/dashboard/charts").text
    assert "Studies per study date" in charts_html and "<rect" in charts_html
    assert "MODALITY1" in charts_html  # top sending AE titles
    assert ">CT<" in charts_html and ">MR<" in charts_html


def test_follower_counts_received_and_stored_events() -> None:
    class FakeBus:
        topic_prefix = "dicomflow"

        def topic(self, name: str) -> str:
            return f"dicomflow.{name}"

    follower = EventLogFollower(FakeBus(), clock=lambda: 1000.0)  # type: ignore[arg-type]
    assert follower.figures({}).received == 0
    follower.account([Record("dicomflow.received", 0, 0, None, b"not json", 999.5)])
    figures = follower.figures({"dicomflow.received": 3})
    assert figures.records_read == 1 and figures.catching_up


def test_lag_tracker_tells_working_from_stalled() -> None:
    now = [0.0]
    tracker = LagTracker(clock=lambda: now[0])
    assert tracker.state("index", 0) == "up to date"
    assert tracker.state("index", 5) == "working"
    now[0] = 40.0
    assert tracker.state("index", 5) == "no progress for 40 s"
    assert tracker.state("index", 3) == "working"


def test_studies_per_day_counts_each_day(filled: Archive) -> None:
    days = studies_per_day(filled.index, Namespace.ORIGINAL, date(2024, 2, 10), days=3)
    assert days == [("2024-02-08", 0), ("2024-02-09", 0), ("2024-02-10", 1)]


def test_charts_geometry() -> None:
    assert [charts.nice_max(v) for v in (0, 1, 3, 7, 10, 11, 240)] == [1, 1, 5, 10, 10, 20, 500]
    chart = charts.columns("c", [("a", 1), ("b", 4)], width=100, height=100)
    assert chart.bars[1].height > chart.bars[0].height > 0
    assert [t.label for t in chart.ticks] == ["0", "5"]  # no half tick of an odd top
    assert [t.label for t in charts.columns("c", [("a", 10)]).ticks] == ["0", "5", "10"]
    bars = charts.bars("b", [("CT", 10), ("MR", 5)])
    assert bars.bars[0].width == pytest.approx(2 * bars.bars[1].width)
    assert charts.line("l", []).empty


# --- dead letters ---------------------------------------------------------------------------


def _dead_letter(archive: Archive) -> None:
    letter = DeadLetter(
        group="dicomflow.metadata",
        topic="dicomflow.stored",
        partition=0,
        offset=7,
        key="1.2.3",
        payload=b'{"type": "object.stored", "identity": {"sop_instance_uid": "1.2.3.4"}}',
        error_type="PoisonEvent",
        reason="the object cannot be read",
    )
    archive.bus.producer().publish(
        archive.bus.topic(Topic.DEAD_LETTER), "1.2.3", encode_event(letter)
    )


def test_dead_letters_are_listed_and_retried(archive: Archive, client: TestClient) -> None:
    _dead_letter(archive)
    html = client.get("/ui/fragments/deadletters").text
    assert "the object cannot be read" in html and "SOP 1.2.3.4" in html
    stored = archive.bus.topic(Topic.STORED)
    before = archive.bus.topic_sizes().get(stored, 0)
    retried = client.post("/ui/fragments/deadletters/0/retry", headers={"HX-Request": "true"})
    assert retried.status_code == 200 and "re-published to dicomflow.stored" in retried.text
    [listed] = client.get("/api/deadletters").json()
    assert listed["offset"] == 0 and listed["reason"] and listed["payload_bytes"] > 0
    api = client.post("/api/deadletters/0/retry")
    assert api.status_code == 202 and api.json()["topic"] == stored
    records = archive.bus.read(stored, before, 10)
    assert len(records) == 2
    assert records[0].key == "1.2.3"
    assert records[0].headers[deadletters.RETRY_HEADER] == "dicomflow.deadletter:0"
    assert records[0].value.startswith(b'{"type": "object.stored"')
    assert client.post("/api/deadletters/5/retry").status_code == 404
    plain = client.post("/ui/fragments/deadletters/0/retry", follow_redirects=False)
    assert plain.status_code == 303


def test_dead_letter_from_a_foreign_topic_is_not_retried(archive: Archive) -> None:
    letter = DeadLetter(
        group="g",
        topic="other.stored",
        partition=0,
        offset=0,
        key=None,
        payload=b"{}",
        error_type="E",
        reason="r",
    )
    archive.bus.producer().publish(archive.bus.topic(Topic.DEAD_LETTER), None, encode_event(letter))
    with pytest.raises(deadletters.DeadLetterNotRetryable):
        deadletters.retry(archive.bus, 0)


def test_payload_reference() -> None:
    assert deadletters.payload_reference(b"\xff") == ("undecodable", "1 bytes that are not JSON")
    kind, ref = deadletters.payload_reference(
        b'{"type": "object.received", "blob": {"namespace": "spool", "key": "a/b.dcm"}}'
    )
    assert (kind, ref) == ("object.received", "blob spool/a/b.dcm")


# --- admin ----------------------------------------------------------------------------------


def test_admin_adds_lists_and_removes_destinations(archive: Archive, client: TestClient) -> None:
    page = client.get("/ui/admin")
    assert page.status_code == 200 and "No destination yet." in page.text
    headers = {"HX-Request": "true"}
    form = {"ae_title": "PACS2", "host": "10.0.0.7", "port": "104"}
    added = client.post("/ui/fragments/destinations", data=form, headers=headers)
    assert added.status_code == 200 and "Added PACS2" in added.text
    listed = client.get("/api/admin/destinations").json()["destinations"]
    assert [d["ae_title"] for d in listed] == ["PACS2"]
    again = client.post("/ui/fragments/destinations", data=form, headers=headers)
    assert again.status_code == 422 and "exists" in again.text
    bad = client.post(
        "/ui/fragments/destinations", data={**form, "ae_title": "X", "port": "0"}, headers=headers
    )
    assert bad.status_code == 422 and "port" in bad.text
    removed = client.post("/ui/fragments/destinations/PACS2/delete", headers=headers)
    assert "Removed PACS2" in removed.text
    assert client.get("/api/admin/destinations").json()["destinations"] == []


def test_admin_lists_installed_processors(client: TestClient) -> None:
    html = client.get("/ui/fragments/processors").text
    assert "<strong>storage</strong>" in html and "dicomflow.storage" in html


def test_reindex_rebuilds_a_namespace_from_the_metadata_topic(
    filled: Archive, client: TestClient
) -> None:
    filled.index.clear(Namespace.ORIGINAL)
    assert filled.index.counts(Namespace.ORIGINAL)[Level.INSTANCE] == 0
    started = client.post("/api/admin/reindex", params={"namespace": "original"})
    assert started.status_code == 202 and started.json()["state"] == "running"
    deadline = time.monotonic() + 20
    progress = started.json()
    while progress["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        progress = client.get("/api/admin/reindex").json()
    assert progress["state"] == "done", progress
    assert progress["indexed"] == 12 and progress["percent"] == 100
    assert filled.index.counts(Namespace.ORIGINAL)[Level.INSTANCE] == 12
    fragment = client.get("/ui/fragments/reindex").text
    assert "done" in fragment and "12 objects indexed" in fragment
    assert client.post("/api/admin/reindex", params={"namespace": "spool"}).status_code == 400


def test_reindex_through_the_ui_form(filled: Archive, client: TestClient) -> None:
    response = client.post(
        "/ui/fragments/reindex", data={"target": "deidentified"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and "deidentified" in response.text
    services = client.app.state.dicomflow_services  # type: ignore[attr-defined]
    assert services.reindexer.wait(20).state.value == "done"


# --- static files and formatting ------------------------------------------------------------


def test_static_files_are_served_from_the_package(client: TestClient) -> None:
    htmx = client.get("/ui/static/vendor/htmx.min.js")
    assert htmx.status_code == 200 and "javascript" in htmx.headers["content-type"]
    assert htmx.text.startswith("var htmx=")
    for name in ("dicomflow.css", "dicomflow.js", "viewer.js", "vendor/NOTICE"):
        assert client.get(f"/ui/static/{name}").status_code == 200


def test_formatting() -> None:
    assert fmt.date("20240115") == "2024-01-15"
    assert fmt.time("093000.123") == "09:30:00"
    assert fmt.time("09") == "09:00"
    assert fmt.person("DOE^JOHN^A^DR") == "DOE, JOHN A"
    assert fmt.person("DOE") == "DOE"
    assert fmt.text(["CT", "MR"]) == "CT\\MR"
    assert fmt.size(1234567) == "1.2 MB"
    assert fmt.number(12345) == "12,345"
    assert fmt.integer(["3"]) == 3 and fmt.integer("x") is None
    with pytest.raises(ValueError):
        fmt.view_namespace("spool")
