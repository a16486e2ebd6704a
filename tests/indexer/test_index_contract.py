"""The contract of a StudyIndex: every implementation passes these (see conftest's factories)."""

import threading
from pathlib import Path
from typing import Any

import pytest
from index_archive import HANS, JOHN, Archive, IndexFactory, event_of
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomflow.indexer.base import SearchRequest, SortKey, StudyIndex, flatten
from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import Query, parse_lucene, qido_to_query
from dicomflow.kernel.events import MetadataExtracted, Namespace
from dicomflow.synthetic import PatientSpec, make_instance

ORIGINAL = Namespace.ORIGINAL


def search(
    index: StudyIndex,
    query: Query | str = "",
    level: Level = Level.STUDY,
    namespace: Namespace = ORIGINAL,
    **options: Any,
) -> list[dict[str, Any]]:
    if isinstance(query, str):
        query = parse_lucene(query)
    request = SearchRequest(namespace=namespace, level=level, query=query, **options)
    return [flatten(result) for result in index.search(request).results]


def studies(index: StudyIndex, query: Query | str = "", **options: Any) -> set[str]:
    return {r["StudyInstanceUID"] for r in search(index, query, Level.STUDY, **options)}


def qido(index: StudyIndex, level: Level = Level.STUDY, **params: str) -> set[str]:
    query = qido_to_query(params, level)
    return {r["StudyInstanceUID"] for r in search(index, query, level)}


def names(archive: Archive, *keys: str) -> set[str]:
    return {archive.study[key] for key in keys}


# --- writing ---------------------------------------------------------------------------------


def test_counts_of_every_level(loaded: StudyIndex) -> None:
    assert loaded.counts(ORIGINAL) == {
        Level.PATIENT: 3,
        Level.STUDY: 4,
        Level.SERIES: 6,
        Level.INSTANCE: 10,
    }
    assert loaded.counts(Namespace.DEIDENTIFIED) == dict.fromkeys(Level, 0)


def test_redelivery_overwrites_and_never_double_counts(
    loaded: StudyIndex, archive: Archive, archive_events: list[MetadataExtracted]
) -> None:
    loaded.upsert(archive_events)
    loaded.upsert(archive_events[:3])
    loaded.upsert([archive_events[0], archive_events[0]])
    assert loaded.counts(ORIGINAL)[Level.INSTANCE] == 10
    (study,) = search(loaded, f"StudyInstanceUID:{archive.study['A']}")
    assert study["NumberOfStudyRelatedSeries"] == 2
    assert study["NumberOfStudyRelatedInstances"] == 5


def test_computed_attributes(loaded: StudyIndex, archive: Archive) -> None:
    by_uid = {
        r["StudyInstanceUID"]: r for r in search(loaded, include_fields=["SOPClassesInStudy"])
    }
    a, b = by_uid[archive.study["A"]], by_uid[archive.study["B"]]
    assert (a["NumberOfStudyRelatedSeries"], a["NumberOfStudyRelatedInstances"]) == (2, 5)
    assert a["ModalitiesInStudy"] == "CT"
    assert b["ModalitiesInStudy"] == ["MR", "OT"]
    assert b["SOPClassesInStudy"] == ["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"]
    assert b["InstanceAvailability"] == "ONLINE"
    series = search(loaded, level=Level.SERIES, study_uid=archive.study["A"])
    assert [s["NumberOfSeriesRelatedInstances"] for s in series] == [3, 2]
    (john,) = search(loaded, "PatientID:PID-A", level=Level.PATIENT)
    assert john["NumberOfPatientRelatedStudies"] == 2
    assert john["NumberOfPatientRelatedSeries"] == 3
    assert john["NumberOfPatientRelatedInstances"] == 6


def test_a_batch_of_500_instances_in_one_call(index: StudyIndex) -> None:
    patient = PatientSpec(name="BATCH^BIG", patient_id="BATCH")
    events = [
        event_of(make_instance(patient, 0, i // 100, i % 100, rows=4, columns=4))
        for i in range(500)
    ]
    index.upsert(events)
    (study,) = search(index)
    assert study["NumberOfStudyRelatedSeries"] == 5
    assert study["NumberOfStudyRelatedInstances"] == 500


def test_an_instance_that_moves_to_another_series_leaves_no_trace(
    loaded: StudyIndex, archive: Archive
) -> None:
    moved = archive.datasets[0].copy()  # study A, first series
    moved.SeriesInstanceUID = archive.series["A"][1]
    loaded.upsert([event_of(moved)])
    series = search(loaded, level=Level.SERIES, study_uid=archive.study["A"])
    assert [s["NumberOfSeriesRelatedInstances"] for s in series] == [2, 3]
    assert loaded.counts(ORIGINAL)[Level.INSTANCE] == 10
    record = loaded.get_instance(ORIGINAL, str(moved.SOPInstanceUID))
    assert record is not None
    assert record.series_uid == archive.series["A"][1]


def test_a_series_that_moves_to_another_study_takes_its_values_along(
    loaded: StudyIndex, archive: Archive
) -> None:
    (ot_instance,) = [ds for ds in archive.datasets if ds.Modality == "OT"]  # study B
    moved = ot_instance.copy()
    moved.StudyInstanceUID = archive.study["C"]
    loaded.upsert([event_of(moved)])
    assert studies(loaded, "Modality:OT") == names(archive, "C")
    assert qido(loaded, ModalitiesInStudy="OT") == names(archive, "C")
    by_uid = {r["StudyInstanceUID"]: r for r in search(loaded)}
    assert by_uid[archive.study["B"]]["ModalitiesInStudy"] == "MR"
    assert by_uid[archive.study["B"]]["NumberOfStudyRelatedSeries"] == 1
    assert by_uid[archive.study["C"]]["ModalitiesInStudy"] == ["CT", "OT"]
    assert by_uid[archive.study["C"]]["NumberOfStudyRelatedInstances"] == 2
    assert loaded.counts(ORIGINAL)[Level.SERIES] == 6


def test_a_study_that_changes_patient_moves_and_the_empty_patient_goes(
    loaded: StudyIndex, archive: Archive
) -> None:
    (hans_instance,) = [ds for ds in archive.datasets if ds.PatientID == HANS.patient_id]
    changed = hans_instance.copy()
    changed.PatientID = JOHN.patient_id
    changed.PatientName = JOHN.name
    loaded.upsert([event_of(changed)])
    assert loaded.counts(ORIGINAL)[Level.PATIENT] == 2
    (john,) = search(loaded, "PatientID:PID-A", level=Level.PATIENT)
    assert john["NumberOfPatientRelatedStudies"] == 3
    assert studies(loaded, "PatientName:MÜLLER*") == set()


def test_latest_event_wins_for_study_attributes(loaded: StudyIndex, archive: Archive) -> None:
    corrected = archive.datasets[0].copy()
    corrected.StudyDescription = "CT THORAX"
    loaded.upsert([event_of(corrected)])
    assert studies(loaded, 'StudyDescription:"CT THORAX"') == names(archive, "A")
    assert studies(loaded, 'StudyDescription:"CT CHEST WITH CONTRAST"') == set()
    assert studies(loaded, "thorax") == names(archive, "A")


def test_namespaces_are_isolated(loaded: StudyIndex, archive: Archive) -> None:
    copy = archive.datasets[0].copy()
    copy.PatientName = "ANON^1"
    copy.PatientID = "ANON1"
    loaded.upsert([event_of(copy, Namespace.DEIDENTIFIED)])
    deid = Namespace.DEIDENTIFIED
    assert loaded.counts(deid) == dict.fromkeys(Level, 1)
    assert studies(loaded, "PatientName:ANON*") == set()
    assert studies(loaded, "PatientName:ANON*", namespace=deid) == names(archive, "A")
    assert studies(loaded, "PatientName:DOE*", namespace=deid) == set()
    assert studies(loaded, "anon", namespace=deid) == names(archive, "A")
    original = loaded.get_instance(ORIGINAL, str(copy.SOPInstanceUID))
    deidentified = loaded.get_instance(deid, str(copy.SOPInstanceUID))
    assert original is not None and deidentified is not None
    assert flatten(deidentified.dicom_json)["PatientName"] == "ANON^1"
    assert flatten(original.dicom_json)["PatientName"] == "DOE^JOHN"


def test_clear_forgets_one_namespace_only(loaded: StudyIndex, archive: Archive) -> None:
    loaded.upsert([event_of(archive.datasets[0], Namespace.DEIDENTIFIED)])
    loaded.clear(ORIGINAL)
    assert loaded.counts(ORIGINAL) == dict.fromkeys(Level, 0)
    assert search(loaded, "doe") == []
    assert loaded.counts(Namespace.DEIDENTIFIED)[Level.INSTANCE] == 1
    loaded.upsert(archive.events())
    assert loaded.counts(ORIGINAL)[Level.INSTANCE] == 10


# --- matching --------------------------------------------------------------------------------


def test_exact_and_wildcard_matching(loaded: StudyIndex, archive: Archive) -> None:
    assert studies(loaded, "PatientID:PID-A") == names(archive, "A", "D")
    assert qido(loaded, PatientID="PID-B") == names(archive, "B")
    assert qido(loaded, PatientName="DOE*") == names(archive, "A", "B", "D")
    assert qido(loaded, PatientName="D?E^J*N") == names(archive, "A", "D")
    assert qido(loaded, PatientName="*JANE") == names(archive, "B")
    assert qido(loaded, PatientName="DOE") == set()  # single value matching is exact
    assert qido(loaded, AccessionNumber="ACC[1]*") == names(archive, "C")  # no GLOB classes
    assert qido(loaded, AccessionNumber="ACC[*") == names(archive, "C")
    assert studies(loaded, "AccessionNumber:ACC\\[1\\]\\*") == names(archive, "C")
    assert studies(loaded, "StudyDescription:*BRAIN") == names(archive, "B")


def test_person_names_match_case_insensitively(loaded: StudyIndex, archive: Archive) -> None:
    assert qido(loaded, PatientName="doe^jane") == names(archive, "B")
    assert qido(loaded, PatientName="DOE^JANE") == names(archive, "B")
    assert qido(loaded, PatientName="müller*") == names(archive, "C")
    assert studies(loaded, "PatientName:doe*") == names(archive, "A", "B", "D")
    assert qido(loaded, ReferringPhysicianName="wilson^james") == names(archive, "D")
    assert studies(loaded, "StudyDescription:mri*") == set()  # other text: exact case


def test_date_time_and_number_ranges(loaded: StudyIndex, archive: Archive) -> None:
    assert qido(loaded, StudyDate="20200101-20201231") == names(archive, "A", "B")
    assert qido(loaded, StudyDate="20200630-") == names(archive, "B", "C")
    assert qido(loaded, StudyDate="-20191231") == names(archive, "D")
    assert qido(loaded, StudyDate="20200115") == names(archive, "A")
    assert studies(loaded, "StudyDate:[2020-01-16 TO 2021-03-01]") == names(archive, "B", "C")
    assert studies(loaded, "StudyDate:{20200115 TO 20210301}") == names(archive, "B")
    assert studies(loaded, "StudyDate:2019") == names(archive, "D")
    assert qido(loaded, StudyTime="100000-110000") == names(archive, "D")
    assert qido(loaded, StudyTime="0930") == names(archive, "A", "B", "C")
    assert studies(loaded, "PatientBirthDate:[19650101 TO 19751231]") == names(archive, "A", "D")
    assert studies(loaded, "SeriesNumber:[2 TO 9]") == names(archive, "A", "B")
    assert studies(loaded, "SliceThickness:1.25") == names(archive, *"ABCD")
    assert studies(loaded, "SliceThickness:[2 TO *]") == set()
    assert studies(loaded, "NumberOfStudyRelatedInstances:[3 TO *]") == names(archive, "A", "B")


def test_lists_and_uid_lists(loaded: StudyIndex, archive: Archive) -> None:
    a, c = archive.study["A"], archive.study["C"]
    assert qido(loaded, StudyInstanceUID=f"{a},{c}") == names(archive, "A", "C")
    assert qido(loaded, StudyInstanceUID=f"{a}\\{c}") == names(archive, "A", "C")
    assert qido(loaded, StudyInstanceUID="1.2.3") == set()
    assert qido(loaded, ModalitiesInStudy="CT") == names(archive, "A", "C")
    assert qido(loaded, ModalitiesInStudy="MR") == names(archive, "B", "D")
    assert qido(loaded, ModalitiesInStudy="CT\\OT") == names(archive, "A", "B", "C")
    assert studies(loaded, "Modality:(OT OR CT)") == names(archive, "A", "B", "C")
    assert studies(loaded, "PatientID:(PID-A OR PID-C) AND NOT Modality:MR") == names(
        archive, "A", "C"
    )


def test_boolean_queries_across_levels(loaded: StudyIndex, archive: Archive) -> None:
    assert studies(loaded, "NOT Modality:CT") == names(archive, "B", "D")
    assert studies(loaded, "Modality:CT AND Modality:MR") == set()
    assert studies(loaded, "Modality:MR AND Modality:OT") == names(archive, "B")
    assert studies(loaded, 'InstitutionName:"ST MARY CLINIC"') == names(archive, "B")
    assert studies(loaded, "SOPClassUID:1.2.840.10008.5.1.4.1.1.7") == names(archive, "B")
    assert studies(loaded, "InstanceNumber:3") == names(archive, "A")
    assert studies(loaded, "Rows:8 AND PatientSex:F") == names(archive, "B")


def test_free_text(loaded: StudyIndex, archive: Archive) -> None:
    assert studies(loaded, "brain") == names(archive, "B")
    assert studies(loaded, "BRAIN") == names(archive, "B")
    assert studies(loaded, "muller") == names(archive, "C")  # diacritics folded
    assert studies(loaded, "Müller") == names(archive, "C")
    assert studies(loaded, '"mri brain"') == names(archive, "B")
    assert studies(loaded, '"brain mri"') == set()
    assert studies(loaded, "doe jo*") == names(archive, "A", "D")
    assert studies(loaded, "DOE^JOHN") == names(archive, "A", "D")
    assert studies(loaded, "knee wilson") == names(archive, "D")
    assert studies(loaded, "abdomen OR knee") == names(archive, "C", "D")
    assert studies(loaded, "PID-C") == names(archive, "C")
    assert studies(loaded, "^^^") == set()


def test_free_text_with_nul_characters(loaded: StudyIndex, archive: Archive) -> None:
    # Found by fuzzing: a NUL in free text (/api/search?q=%00) broke the SQLite FTS query.
    assert studies(loaded, '"mri\0brain"') == names(archive, "B")
    assert studies(loaded, "brain\0 -knee") == names(archive, "B")
    assert studies(loaded, "\0\0") == set()  # no word, as "^^^"


def test_series_level(loaded: StudyIndex, archive: Archive) -> None:
    series = search(loaded, "Modality:MR", level=Level.SERIES)
    assert {s["StudyInstanceUID"] for s in series} == names(archive, "B", "D")
    assert all(s["Modality"] == "MR" for s in series)
    scoped = search(loaded, level=Level.SERIES, study_uid=archive.study["B"])
    assert [s["SeriesInstanceUID"] for s in scoped] == archive.series["B"]
    assert [s["SeriesNumber"] for s in scoped] == [1, 2]
    assert set(scoped[0]) >= {
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "InstanceAvailability",
    }
    by_patient = search(loaded, "PatientName:DOE^JOHN", level=Level.SERIES)
    assert {s["StudyInstanceUID"] for s in by_patient} == names(archive, "A", "D")
    assert len(by_patient) == 3
    assert len(search(loaded, "abdomen", level=Level.SERIES, study_uid=archive.study["C"])) == 1
    assert search(loaded, "abdomen", level=Level.SERIES, study_uid=archive.study["A"]) == []


def test_instance_level(loaded: StudyIndex, archive: Archive) -> None:
    study, series = archive.study["A"], archive.series["A"][0]
    instances = search(loaded, level=Level.INSTANCE, study_uid=study, series_uid=series)
    assert [i["InstanceNumber"] for i in instances] == [1, 2, 3]
    assert set(instances[0]) >= {
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "InstanceAvailability",
    }
    assert "NumberOfFrames" not in instances[0]  # optional, absent in the data
    ranged = search(loaded, "InstanceNumber:[2 TO 3]", level=Level.INSTANCE, study_uid=study)
    assert sorted(i["InstanceNumber"] for i in ranged) == [2, 2, 3]
    sr = search(loaded, "SOPClassUID:1.2.840.10008.5.1.4.1.1.7", level=Level.INSTANCE)
    assert [i["StudyInstanceUID"] for i in sr] == [archive.study["B"]]
    assert len(search(loaded, "brain", level=Level.INSTANCE)) == 3
    everything = search(loaded, level=Level.INSTANCE, include_fields="all", limit=1)
    assert everything[0]["PatientName"] and everything[0]["ImagePositionPatient"]


def test_patient_level(loaded: StudyIndex) -> None:
    patients = search(loaded, "PatientName:DOE*", level=Level.PATIENT)
    assert [p["PatientName"] for p in patients] == ["Doe^Jane", "DOE^JOHN"]
    assert set(patients[0]) >= {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}
    assert [p["PatientID"] for p in search(loaded, "Modality:OT", level=Level.PATIENT)] == ["PID-B"]
    assert [p["PatientID"] for p in search(loaded, "knee", level=Level.PATIENT)] == ["PID-A"]


def test_unsearchable_attributes_say_so(loaded: StudyIndex) -> None:
    with pytest.raises(InvalidQuery, match="ImagePositionPatient cannot be searched"):
        search(loaded, "ImagePositionPatient:1")


# --- results ---------------------------------------------------------------------------------


def test_default_study_attributes_in_dicom_json(loaded: StudyIndex, archive: Archive) -> None:
    request = SearchRequest(
        namespace=ORIGINAL, level=Level.STUDY, query=parse_lucene("PatientID:PID-C")
    )
    (result,) = loaded.search(request).results
    assert result["0020000D"] == {"vr": "UI", "Value": [archive.study["C"]]}
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^HANS"}]}
    assert result["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert result["00201208"] == {"vr": "IS", "Value": [1]}
    assert list(result) == sorted(result)
    for keyword in (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ):
        assert keyword in flatten(result)
    assert "Manufacturer" not in flatten(result)


def test_include_fields(loaded: StudyIndex, archive: Archive) -> None:
    (study,) = search(loaded, "PatientID:PID-B", include_fields=["InstitutionName", "00100021"])
    assert study["InstitutionName"] == "ST MARY CLINIC"  # from its series
    assert study["IssuerOfPatientID"] is None  # asked for: returned, empty
    (everything,) = search(loaded, "PatientID:PID-B", include_fields="all")
    assert everything["StudyDescription"] == "MRI BRAIN"
    assert "ImagePositionPatient" not in everything
    (matched,) = search(loaded, "PatientID:PID-B AND BodyPartExamined:CHEST")
    assert matched["BodyPartExamined"] == "CHEST"  # matching keys are returned
    with pytest.raises(InvalidQuery, match="unknown include field"):
        search(loaded, include_fields=["NoSuchThing"])


def test_limit_offset_total_and_order(loaded: StudyIndex, archive: Archive) -> None:
    request = SearchRequest(namespace=ORIGINAL, level=Level.STUDY, limit=2, offset=1)
    result = loaded.search(request)
    assert result.total == 4
    order = [archive.study[k] for k in ("C", "B", "A", "D")]  # most recent first
    assert [flatten(r)["StudyInstanceUID"] for r in result.results] == order[1:3]
    past = loaded.search(SearchRequest(namespace=ORIGINAL, level=Level.STUDY, offset=10))
    assert (past.total, past.results) == (4, [])
    counted = loaded.search(SearchRequest(namespace=ORIGINAL, level=Level.STUDY, limit=0))
    assert (counted.total, counted.results) == (4, [])
    by_name = search(loaded, sort=[SortKey("PatientName"), SortKey("StudyDate", True)])
    assert [r["StudyInstanceUID"] for r in by_name] == [archive.study[k] for k in "BADC"]
    by_accession = search(loaded, sort=[SortKey("AccessionNumber", descending=True)])
    assert len(by_accession) == 4
    with pytest.raises(InvalidQuery, match="cannot be sorted by 'Rows'"):
        search(loaded, sort=[SortKey("Rows")])


@pytest.mark.parametrize(
    "options",
    [
        {"limit": -1},
        {"limit": 10_001},
        {"offset": -1},
        {"study_uid": "1.02"},
        {"series_uid": "1.2", "level": Level.SERIES},
        {"study_uid": "1.2", "level": Level.PATIENT},
    ],
)
def test_bad_requests_are_invalid_queries(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidQuery):
        SearchRequest(namespace=ORIGINAL, **{"level": Level.STUDY, **options})


# --- retrieval -------------------------------------------------------------------------------


def test_get_instance_and_instances(loaded: StudyIndex, archive: Archive) -> None:
    ds = archive.datasets[1]
    record = loaded.get_instance(ORIGINAL, str(ds.SOPInstanceUID))
    assert record is not None
    assert (record.study_uid, record.series_uid, record.sop_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert record.sop_class_uid == ds.SOPClassUID
    assert record.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert record.blob.key.endswith(f"{ds.SOPInstanceUID}.dcm")
    assert record.instance_number == 2
    assert flatten(record.dicom_json)["PatientName"] == "DOE^JOHN"
    assert record.dicom_json["7FE00010"] == {"vr": "OW"}  # bulk data noted, not kept
    assert record.dicom_json["00280010"] == {"vr": "US", "Value": [8]}
    assert loaded.get_instance(ORIGINAL, "1.2.3") is None
    assert loaded.get_instance(Namespace.DEIDENTIFIED, str(ds.SOPInstanceUID)) is None

    whole = loaded.instances(ORIGINAL, archive.study["A"])
    assert [(r.series_uid, r.instance_number) for r in whole] == [
        (archive.series["A"][0], 1),
        (archive.series["A"][0], 2),
        (archive.series["A"][0], 3),
        (archive.series["A"][1], 1),
        (archive.series["A"][1], 2),
    ]
    one = loaded.instances(ORIGINAL, archive.study["A"], archive.series["A"][1], with_json=False)
    assert [r.instance_number for r in one] == [1, 2]
    assert one[0].dicom_json == {}
    assert loaded.instances(ORIGINAL, "1.2.3") == []


def test_odd_values_are_indexed_not_fatal(index: StudyIndex) -> None:
    ds = make_instance(PatientSpec(name="ODD^VALUES", patient_id="ODD"), 0, 0, 0, rows=4)
    ds[0x00080020] = RawDataElement(Tag(0x00080020), "DA", 10, b"2020-13-45", 0, False, True)
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 4, b"abc ", 0, False, True)
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"x1", 0, False, True)
    index.upsert([event_of(ds)])
    (study,) = search(index, "PatientID:ODD")
    assert study["StudyDate"] == "2020-13-45"  # kept as text
    assert search(index, "StudyDate:[1900 TO 2100]") == []
    assert search(index, "StudyDate:[* TO 2100]") == []  # no date is no match, not a low one
    (series,) = search(index, level=Level.SERIES)
    assert series["SeriesNumber"] == "x1"


# --- several readers, one writer -------------------------------------------------------------


def test_a_second_handle_on_the_same_files_sees_the_writes(
    index_factory: IndexFactory, tmp_path: Path, archive_events: list[MetadataExtracted]
) -> None:
    writer = index_factory(tmp_path / "shared")
    reader = index_factory(tmp_path / "shared")
    try:
        assert reader.counts(ORIGINAL)[Level.INSTANCE] == 0
        writer.upsert(archive_events)
        assert reader.counts(ORIGINAL)[Level.INSTANCE] == 10
        failures: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(20):
                    assert len(search(reader, "doe*")) == 3
            except BaseException as exc:  # surfaced below
                failures.append(exc)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(5):
            writer.upsert(archive_events)
        for thread in threads:
            thread.join()
        assert failures == []
    finally:
        writer.close()
        reader.close()
