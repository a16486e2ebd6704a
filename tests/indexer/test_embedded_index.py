"""What is particular to the embedded (SQLite) index: its file, its statistics, its locks."""

import sqlite3
from pathlib import Path

import pytest
from index_archive import event_of

from dicomflow.indexer import open_index
from dicomflow.indexer.base import SearchRequest
from dicomflow.indexer.embedded import (
    INDEX_FILE,
    READER_CACHE_BYTES,
    WRITER_CACHE_BYTES,
    EmbeddedStudyIndex,
    _BatchWriter,
)
from dicomflow.indexer.exceptions import IndexerError, InvalidQuery
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import parse_lucene
from dicomflow.kernel.events import MetadataExtracted, Namespace
from dicomflow.kernel.exceptions import BackPressure
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, make_instance


def test_open_index_puts_one_wal_file_under_data_dir(tmp_path: Path) -> None:
    index = open_index(Settings(data_dir=tmp_path))
    assert isinstance(index, EmbeddedStudyIndex)
    assert index.path == tmp_path / "index" / INDEX_FILE
    with sqlite3.connect(index.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    index.close()
    with pytest.raises(IndexerError, match="closed"):
        index.counts(Namespace.ORIGINAL)


def test_no_connection_maps_the_index_and_page_caches_are_bounded(tmp_path: Path) -> None:
    """Mapped pages would make every process's RSS grow with the index."""
    settings = Settings(data_dir=tmp_path)
    writer, reader = open_index(settings, writer=True), open_index(settings)
    assert isinstance(writer, EmbeddedStudyIndex) and isinstance(reader, EmbeddedStudyIndex)
    for index, cache in ((writer, WRITER_CACHE_BYTES), (reader, READER_CACHE_BYTES)):
        conn = index._conn()
        assert conn.execute("PRAGMA mmap_size").fetchone() == (0,)
        assert conn.execute("PRAGMA cache_size").fetchone() == (-(cache >> 10),)
    writer.close()
    reader.close()


def test_statistics_are_refreshed_as_the_index_grows(
    tmp_path: Path, archive_events: list[MetadataExtracted]
) -> None:
    index = EmbeddedStudyIndex(tmp_path)
    index.upsert(archive_events)
    with sqlite3.connect(index.path) as conn:
        assert (
            conn.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchall()
            == []
        )
    index._analyze_at = len(archive_events)  # as if 1000 had been written
    index.upsert(archive_events)
    with sqlite3.connect(index.path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0
    query = parse_lucene("PatientID:PID-A")
    result = index.search(
        SearchRequest(namespace=Namespace.ORIGINAL, level=Level.STUDY, query=query)
    )
    assert result.total == 2
    index.close()


def test_a_locked_index_is_back_pressure_not_a_failure(
    tmp_path: Path, archive_events: list[MetadataExtracted]
) -> None:
    index = EmbeddedStudyIndex(tmp_path, busy_timeout=0.05)
    other = sqlite3.connect(index.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(BackPressure, match="busy"):
            index.upsert(archive_events[:1])
    finally:
        other.execute("ROLLBACK")
        other.close()
    index.upsert(archive_events[:1])
    assert index.counts(Namespace.ORIGINAL)[Level.INSTANCE] == 1
    index.close()


def test_a_reader_sees_the_last_committed_batch_while_one_is_written(tmp_path: Path) -> None:
    patient = PatientSpec(patient_id="SNAP")
    events = [event_of(make_instance(patient, 0, 0, i, rows=4, columns=4)) for i in range(50)]
    writer = EmbeddedStudyIndex(tmp_path)
    reader = EmbeddedStudyIndex(tmp_path)
    request = SearchRequest(namespace=Namespace.ORIGINAL, level=Level.STUDY)
    writer.upsert(events[:10])
    conn = writer._conn()
    conn.execute("BEGIN IMMEDIATE")
    batch = _BatchWriter(conn)
    batch.write(events[10:])
    batch.finish()
    (study,) = reader.search(request).results
    assert study["00201208"]["Value"] == [10]
    conn.execute("COMMIT")
    (study,) = reader.search(request).results
    assert study["00201208"]["Value"] == [50]
    writer.close()
    reader.close()


def test_numbers_beyond_64_bits_are_indexed_not_fatal(tmp_path: Path) -> None:
    """Found by fuzzing: an integer value SQLite cannot hold (an IS of 20 digits) made the
    batch fail to insert, and the same in a query was a 500."""
    ds = make_instance(PatientSpec(name="BIG^NUMBERS", patient_id="BIG"), 0, 0, 0, rows=4)
    ds.SeriesNumber = "99999999999999999999"
    ds.InstanceNumber = "1e30"
    ds.add_new(0x00181002, "US", 7)  # an ordinary number beside them
    index = EmbeddedStudyIndex(tmp_path)
    index.upsert([event_of(ds)])
    for level in (Level.SERIES, Level.INSTANCE):
        request = SearchRequest(
            namespace=Namespace.ORIGINAL, level=level, query=parse_lucene("PatientID:BIG")
        )
        assert index.search(request).total == 1
    with pytest.raises(InvalidQuery, match="at most 64 bits"):
        parse_lucene("SeriesNumber:99999999999999999999")
    index.close()


def _studies_of(index: EmbeddedStudyIndex, patient_id: str) -> list[dict[str, object]]:
    request = SearchRequest(
        namespace=Namespace.ORIGINAL,
        level=Level.STUDY,
        query=parse_lucene(f"PatientID:{patient_id}"),
        include_fields="all",
    )
    return index.search(request).results


def test_a_patients_new_values_reach_the_study_rows_of_all_their_studies(
    tmp_path: Path,
) -> None:
    # Each study row keeps a copy of its patient's attributes (one row read per study).
    patient = PatientSpec(name="OLD^NAME", patient_id="P1")
    first, second = (make_instance(patient, study, 0, 0) for study in (0, 1))
    index = EmbeddedStudyIndex(tmp_path)
    index.upsert([event_of(first), event_of(second)])
    corrected = first.copy()
    corrected.PatientName = "NEW^NAME"
    index.upsert([event_of(corrected)])  # an instance of the first study only
    results = _studies_of(index, "P1")
    assert len(results) == 2
    assert [r["00100010"] for r in results] == [
        {"vr": "PN", "Value": [{"Alphabetic": "NEW^NAME"}]}
    ] * 2
    index.close()


def test_a_version_1_index_gets_its_study_rows_documents_when_opened(tmp_path: Path) -> None:
    patients = [PatientSpec(name=f"P^{n}", patient_id=f"P{n}") for n in range(3)]
    index = EmbeddedStudyIndex(tmp_path)
    index.upsert([event_of(make_instance(p, s, 0, 0)) for p in patients for s in (0, 1)])
    before = [_studies_of(index, p.patient_id) for p in patients]
    index.close()
    with sqlite3.connect(tmp_path / INDEX_FILE) as conn:  # the layout of version 1
        conn.execute("ALTER TABLE studies DROP COLUMN doc")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    reopened = EmbeddedStudyIndex(tmp_path)
    assert [_studies_of(reopened, p.patient_id) for p in patients] == before
    with sqlite3.connect(tmp_path / INDEX_FILE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM studies WHERE doc IS NULL").fetchone() == (0,)
        conn.execute("UPDATE studies SET doc = NULL WHERE id = 1")  # not expected; still read
    conn.close()
    assert [_studies_of(reopened, p.patient_id) for p in patients] == before
    reopened.close()
