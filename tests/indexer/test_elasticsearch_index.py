"""What is particular to the Elasticsearch index: templates and mappings, documents, failures,
refresh policies, and the same answers as the embedded index (the reference) on many queries.
"""

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from index_archive import JOHN, Archive, IndexFactory, event_of

pytest.importorskip("elasticsearch")

from dicomflow.indexer import open_index
from dicomflow.indexer.base import SearchRequest, StudyIndex, flatten
from dicomflow.indexer.elasticsearch import (
    ElasticsearchStudyIndex,
    fold_text,
    index_names,
)
from dicomflow.indexer.embedded import EmbeddedStudyIndex
from dicomflow.indexer.exceptions import IndexerError
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import parse_lucene, qido_to_query
from dicomflow.kernel.events import MetadataExtracted, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure
from dicomflow.kernel.settings import IndexBackend, Settings
from dicomflow.synthetic import PatientSpec, make_instance
from tests.conftest import free_port

ORIGINAL = Namespace.ORIGINAL
KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}


def keys(index: StudyIndex, query: str, level: Level, **options: Any) -> tuple[int, list[str]]:
    request = SearchRequest(
        namespace=ORIGINAL, level=level, query=parse_lucene(query), limit=1000, **options
    )
    result = index.search(request)
    return result.total, sorted(str(flatten(r)[KEYS[level]]) for r in result.results)


# --- without a server ----------------------------------------------------------------------------


def test_open_index_builds_it_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        index=IndexBackend.ELASTICSEARCH,
        elasticsearch_url="http://127.0.0.1:1",
        elasticsearch_prefix="archive-a",
    )
    index = open_index(settings)  # connects lazily: no server needed to build it
    assert isinstance(index, ElasticsearchStudyIndex)
    assert index.index_name(Namespace.DEIDENTIFIED, Level.STUDY) == "archive-a-deidentified-studies"
    index.close()


def test_index_names_and_prefix_validation() -> None:
    assert index_names("dicomflow", ORIGINAL) == {
        Level.PATIENT: "dicomflow-patients",
        Level.STUDY: "dicomflow-studies",
        Level.SERIES: "dicomflow-series",
        Level.INSTANCE: "dicomflow-instances",
    }
    with pytest.raises(IndexerError, match="prefix 'Bad Prefix' is not valid"):
        ElasticsearchStudyIndex("http://127.0.0.1:1", prefix="Bad Prefix")


def test_free_text_is_folded_like_fts5() -> None:
    assert fold_text("MÜLLER^Hans  PID-C 1.25") == "muller hans pid c 1 25"
    assert fold_text("^^^") == ""


def test_an_unreachable_cluster_is_backend_unavailable() -> None:
    index = ElasticsearchStudyIndex(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(BackendUnavailable, match="cannot be reached"):
        index.counts(ORIGINAL)
    index.close()


class _Busy(http.server.BaseHTTPRequestHandler):
    """A cluster that answers everything with 429 Too Many Requests."""

    def _busy(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = b'{"error":{"type":"es_rejected_execution_exception","reason":"busy"},"status":429}'
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("x-elastic-product", "Elasticsearch")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _busy

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def busy_cluster() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_cluster_that_stays_busy_is_back_pressure(busy_cluster: str) -> None:
    index = ElasticsearchStudyIndex(busy_cluster, retries=1)
    with pytest.raises(BackPressure, match="busy") as raised:
        index.upsert([event_of(make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4))])
    assert raised.value.retry_after > 0
    index.close()


# --- on a real server -----------------------------------------------------------------------------


@pytest.fixture
def es(elasticsearch_factory: IndexFactory, tmp_path: Path) -> Iterator[ElasticsearchStudyIndex]:
    index = elasticsearch_factory(tmp_path / "es")
    assert isinstance(index, ElasticsearchStudyIndex)
    yield index
    index.close()


@pytest.fixture
def both(
    es: ElasticsearchStudyIndex, tmp_path: Path, archive: Archive
) -> Iterator[tuple[StudyIndex, StudyIndex]]:
    """The embedded (reference) and the Elasticsearch index with the same, varied events."""
    embedded = EmbeddedStudyIndex(tmp_path / "embedded")
    events = archive.events()
    extra = PatientSpec(name="ROE^RICHARD=ロー^リチャード", patient_id="PID-E", sex="O")
    events += [
        event_of(make_instance(extra, 0, s, i, modality="MR", rows=16, columns=8, frames=1 + i % 2))
        for s in range(2)
        for i in range(4)
    ]
    for index in (embedded, es):
        index.upsert(events[:7])
        index.upsert(events[7:])
    yield embedded, es
    embedded.close()


QUERIES = [
    "",
    "PatientName:DOE*",
    "PatientName:R*",
    "PatientID:PID-E",
    "PatientSex:O OR PatientSex:F",
    "NOT PatientSex:M",
    "Modality:MR AND NOT Modality:OT",
    "StudyDate:[2020 TO 2020]",
    "StudyDate:2020*",
    "StudyTime:[0900 TO 1000]",
    "SeriesNumber:2",
    "Rows:16 OR Columns:8",
    "NumberOfFrames:2",
    "InstanceNumber:4",
    "InstanceNumber:[3 TO *]",
    "SOPClassUID:1.2.840.10008.5.1.4.1.1.4",
    "ContentDate:[20200101 TO 20201231]",
    "NumberOfStudyRelatedInstances:[3 TO *]",
    "NumberOfSeriesRelatedInstances:4",
    "NumberOfPatientRelatedStudies:2",
    "ModalitiesInStudy:CT",
    "InstanceAvailability:ONLINE",
    "InstanceAvailability:OFF*",
    "richard",
    "rich*",
    "リチャード",
    '"chest with"',
    "wilson OR brain",
    "StudyDescription:*CHEST* AND NOT PatientName:DOE^JOHN",
    "AccessionNumber:ACC*",
    "SliceThickness:[1 TO 2}",
]


@pytest.mark.integration
@pytest.mark.parametrize("level", list(Level))
def test_same_answers_as_the_embedded_index(
    both: tuple[StudyIndex, StudyIndex], level: Level
) -> None:
    embedded, es = both
    for query in QUERIES:
        assert keys(es, query, level) == keys(embedded, query, level), (query, level)


@pytest.mark.integration
def test_same_answers_for_qido_and_scopes(
    both: tuple[StudyIndex, StudyIndex], archive: Archive
) -> None:
    embedded, es = both
    for level, params in (
        (Level.STUDY, {"PatientName": "doe^*", "StudyDate": "20191231-20200630"}),
        (Level.STUDY, {"ModalitiesInStudy": "MR\\OT", "PatientID": "PID-B"}),
        (Level.SERIES, {"Modality": "CT", "NumberOfStudyRelatedInstances": "5"}),
        (Level.INSTANCE, {"SOPInstanceUID": str(archive.datasets[3].SOPInstanceUID)}),
        (Level.STUDY, {"SOPInstanceUID": str(archive.datasets[3].SOPInstanceUID)}),
        (Level.INSTANCE, {"NumberOfSeriesRelatedInstances": "3"}),
    ):
        query = qido_to_query(params, level)
        for index in (embedded, es):
            request = SearchRequest(namespace=ORIGINAL, level=level, query=query)
            assert index.search(request).total == embedded.search(request).total, params
    scope = {"study_uid": archive.study["A"], "series_uid": archive.series["A"][1]}
    assert keys(es, "", Level.INSTANCE, **scope) == keys(embedded, "", Level.INSTANCE, **scope)


@pytest.mark.integration
def test_templates_and_mappings(es: ElasticsearchStudyIndex) -> None:
    es.upsert([event_of(make_instance(JOHN, 0, 0, 0, rows=4, columns=4))])
    client = es.client
    template = client.indices.get_index_template(name=es.prefix)["index_templates"][0]
    assert template["index_template"]["composed_of"] == [
        f"{es.prefix}-settings",
        f"{es.prefix}-mappings",
    ]
    name = es.index_name(ORIGINAL, Level.STUDY)
    mapping = client.indices.get_mapping(index=name)[name]["mappings"]
    props = mapping["properties"]
    assert mapping["dynamic"] == "strict"
    assert props["dicom"] == {"type": "object", "enabled": False}
    assert props["@timestamp"]["type"] == "date"
    assert props["study"]["properties"]["StudyInstanceUID"] == {"type": "keyword"}
    assert props["study"]["properties"]["StudyDate"]["type"] == "date"
    assert props["study"]["properties"]["StudyTime"] == {"type": "keyword"}
    assert props["patient"]["properties"]["PatientName"]["fields"]["text"]["type"] == "text"
    assert props["series"]["properties"]["SeriesNumber"]["type"] == "long"
    assert props["series"]["properties"]["SliceThickness"]["type"] == "double"  # dynamic
    assert props["series"]["properties"]["StationName"] == {"type": "keyword"}
    assert props["source"]["properties"]["calling_ae"] == {"type": "keyword"}


@pytest.mark.integration
def test_instance_documents_are_dashboard_ready(es: ElasticsearchStudyIndex) -> None:
    ds = make_instance(JOHN, 0, 0, 0, rows=4, columns=4)
    es.upsert([event_of(ds)])
    doc = es.client.get(index=es.index_name(ORIGINAL, Level.INSTANCE), id=str(ds.SOPInstanceUID))
    source = doc["_source"]
    assert source["@timestamp"].startswith("2024-01-15T09:30:00")
    assert source["source"]["calling_ae"] == "MODALITY1"
    assert (source["modality"], source["study_date"], source["bytes"]) == ("CT", "2024-01-15", 1234)
    assert source["namespace"] == "original"
    assert source["dicom"]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}


@pytest.mark.integration
def test_a_corrected_patient_reaches_every_document(es: ElasticsearchStudyIndex) -> None:
    first = [make_instance(JOHN, s, 0, i, rows=4, columns=4) for s in range(2) for i in range(3)]
    es.upsert([event_of(ds) for ds in first])
    corrected = make_instance(JOHN, 0, 0, 0, rows=4, columns=4)
    corrected.PatientBirthDate = "19710202"
    corrected.PatientName = "DOE^JONATHAN"
    es.upsert([event_of(corrected)])
    for level, count in ((Level.STUDY, 2), (Level.SERIES, 2), (Level.INSTANCE, 6)):
        assert keys(es, "PatientBirthDate:19710202", level)[0] == count, level
        assert keys(es, "PatientBirthDate:19700101", level)[0] == 0, level
        assert keys(es, "jonathan", level)[0] == count, level
    request = SearchRequest(namespace=ORIGINAL, level=Level.PATIENT)
    (patient,) = es.search(request).results
    assert flatten(patient)["PatientName"] == "DOE^JONATHAN"
    assert flatten(patient)["NumberOfPatientRelatedInstances"] == 6


@pytest.mark.integration
def test_deep_offsets_walk_with_search_after(
    es: ElasticsearchStudyIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[MetadataExtracted] = [
        event_of(make_instance(JOHN, 0, 0, i, rows=4, columns=4)) for i in range(12)
    ]
    es.upsert(events)
    full = es.search(SearchRequest(namespace=ORIGINAL, level=Level.INSTANCE, limit=12))
    monkeypatch.setattr("dicomflow.indexer.elasticsearch._RESULT_WINDOW", 4)
    page = es.search(SearchRequest(namespace=ORIGINAL, level=Level.INSTANCE, offset=7, limit=3))
    assert page.total == 12
    assert page.results == full.results[7:10]


@pytest.mark.integration
@pytest.mark.parametrize("refresh", ["wait_for", False])
def test_refresh_policies(
    elasticsearch_factory: IndexFactory, tmp_path: Path, refresh: str | bool
) -> None:
    opened = elasticsearch_factory(tmp_path / str(refresh))
    assert isinstance(opened, ElasticsearchStudyIndex)
    index = ElasticsearchStudyIndex(opened.url, prefix=opened.prefix, refresh=refresh)  # type: ignore[arg-type]
    index.upsert([event_of(make_instance(JOHN, 0, 0, i, rows=4, columns=4)) for i in range(3)])
    if refresh is False:
        index.client.indices.refresh(index=list(index_names(index.prefix, ORIGINAL).values()))
    assert index.counts(ORIGINAL) == {
        Level.PATIENT: 1,
        Level.STUDY: 1,
        Level.SERIES: 1,
        Level.INSTANCE: 3,
    }
    index.close()
    opened.close()
