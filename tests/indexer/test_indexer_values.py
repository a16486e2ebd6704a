"""Normalised search values: the one form that stored fields and query values share."""

import pytest

from dicomflow.indexer.levels import Level, level_of_keyword, level_of_tag
from dicomflow.indexer.values import (
    normalise_fields,
    normalise_name,
    parse_date,
    parse_datetime,
    parse_partial_date,
    parse_time,
    resolve_keyword,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200131", "2020-01-31"),
        ("2020-01-31", "2020-01-31"),
        ("2020.01.31", "2020-01-31"),
        (" 20200229 ", "2020-02-29"),
        ("20210229", None),
        ("2020-13-45", None),
        ("20200132", None),
        ("2020", None),
        ("", None),
    ],
)
def test_parse_date(text: str, expected: str | None) -> None:
    assert parse_date(text) == expected


def test_parse_partial_date_widens_years_and_months() -> None:
    assert parse_partial_date("2020") == "2020-01-01"
    assert parse_partial_date("2020", upper=True) == "2020-12-31"
    assert parse_partial_date("202402", upper=True) == "2024-02-29"
    assert parse_partial_date("2020-13") is None


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("10", "10:00:00", "10:59:59.999999"),
        ("1030", "10:30:00", "10:30:59.999999"),
        ("103000", "10:30:00", "10:30:00.999999"),
        ("103000.25", "10:30:00.25", "10:30:00.25"),
        ("10:30:00", "10:30:00", "10:30:00.999999"),
        ("2500", None, None),
        ("10:61", None, None),
        ("abc", None, None),
    ],
)
def test_parse_time(text: str, low: str | None, high: str | None) -> None:
    assert parse_time(text) == low
    assert parse_time(text, upper=True) == high


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200131103000.5+0100", "2020-01-31T10:30:00.5+01:00"),
        ("20200131103000", "2020-01-31T10:30:00"),
        ("2020-01-31T10:30:00Z", "2020-01-31T10:30:00+00:00"),
        ("202001", "2020-01-01T00:00:00"),
        ("20201301", None),
        ("20200131256000", None),
    ],
)
def test_parse_datetime(text: str, expected: str | None) -> None:
    assert parse_datetime(text) == expected


def test_normalise_name_is_case_and_padding_insensitive() -> None:
    assert normalise_name("Doe^John^^^") == "DOE^JOHN"
    assert normalise_name(" doe^john = ") == "DOE^JOHN"
    assert (
        normalise_name("Yamada^Tarou=山田^太郎=やまだ^たろう")
        == "YAMADA^TAROU=山田^太郎=やまだ^たろう"
    )


def test_resolve_keyword_accepts_keywords_tags_and_any_case() -> None:
    assert resolve_keyword("PatientName") == "PatientName"
    assert resolve_keyword("patientname") == "PatientName"
    assert resolve_keyword("00100010") == "PatientName"
    assert resolve_keyword("0010001a") is None
    assert resolve_keyword("NoSuchKeyword") is None


def test_normalise_fields_by_kind_and_skips_what_does_not_parse() -> None:
    dicom_json = {
        "00080020": {"vr": "DA", "Value": ["20200131"]},
        "00080021": {"vr": "DA", "Value": ["2020-13-45"]},
        "00080030": {"vr": "TM", "Value": ["101500.5"]},
        "0008002A": {"vr": "DT", "Value": ["20200131101500+0100"]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", None]},
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Doe^John^^Dr", "Ideographic": "ド^ジョン"}],
        },
        "00080090": {"vr": "PN"},
        "00200013": {"vr": "IS", "Value": [7]},
        "00280030": {"vr": "DS", "Value": ["abc", 0.5]},
        "00181050": {"vr": "DS", "Value": ["NaN"]},
        "00280010": {"vr": "US", "Value": [512]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00081140": {"vr": "SQ", "Value": [{}]},
        "7FE00010": {"vr": "OW"},
        "00091010": {"vr": "LO", "Value": ["private"]},
        "00280000": {"vr": "UL", "Value": [10]},
    }
    assert normalise_fields(dicom_json) == {
        "StudyDate": "2020-01-31",
        "StudyTime": "10:15:00.5",
        "AcquisitionDateTime": "2020-01-31T10:15:00+01:00",
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "PatientName": {
            "alphabetic": "Doe^John^^Dr",
            "family": "Doe",
            "given": "John",
            "prefix": "Dr",
            "ideographic": "ド^ジョン",
        },
        "InstanceNumber": 7,
        "PixelSpacing": 0.5,
        "Rows": 512,
        "StudyInstanceUID": "1.2.3",
    }


@pytest.mark.parametrize(
    ("keyword", "level"),
    [
        ("PatientName", Level.PATIENT),
        ("PatientSpeciesDescription", Level.PATIENT),
        ("StudyDate", Level.STUDY),
        ("PatientAge", Level.STUDY),
        ("RequestedProcedureDescription", Level.STUDY),
        ("Modality", Level.SERIES),
        ("InstitutionName", Level.SERIES),
        ("SliceThickness", Level.SERIES),
        ("SOPInstanceUID", Level.INSTANCE),
        ("ImagePositionPatient", Level.INSTANCE),
        ("Rows", Level.INSTANCE),
        ("ModalitiesInStudy", Level.STUDY),
        ("NumberOfSeriesRelatedInstances", Level.SERIES),
    ],
)
def test_every_attribute_has_a_level(keyword: str, level: Level) -> None:
    assert level_of_keyword(keyword) is level


def test_private_and_group_length_tags_are_instance_only() -> None:
    assert level_of_tag(0x00091010) is Level.INSTANCE
    assert level_of_tag(0x00100000) is Level.INSTANCE
    assert level_of_tag(0x00100010) is Level.PATIENT
