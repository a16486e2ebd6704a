"""The query front ends: Lucene (/api/search) and QIDO-RS / C-FIND matching keys."""

import pytest

from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import (
    MATCH_ALL,
    And,
    AnyOf,
    Match,
    Not,
    Or,
    Range,
    Text,
    Wildcard,
    fields_of,
    parse_lucene,
    qido_to_query,
)

# --- Lucene ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", MATCH_ALL),
        ("PatientName:DOE*", Wildcard("PatientName", "DOE*")),
        ("patientname:doe*", Wildcard("PatientName", "DOE*")),
        ("00100010:Doe^John", Match("PatientName", "DOE^JOHN")),
        ('PatientName:"Doe^John^^"', Match("PatientName", "DOE^JOHN")),
        ("Modality:CT", Match("Modality", "CT")),
        (
            "Modality:CT AND StudyDate:[20200101 TO 20201231]",
            And((Match("Modality", "CT"), Range("StudyDate", "2020-01-01", "2020-12-31"))),
        ),
        (
            "(Modality:CT OR Modality:MR)",
            Or((Match("Modality", "CT"), Match("Modality", "MR"))),
        ),
        ("Modality:(CT OR MR)", Or((Match("Modality", "CT"), Match("Modality", "MR")))),
        ("NOT Modality:SR", Not(Match("Modality", "SR"))),
        ("-Modality:SR", Not(Match("Modality", "SR"))),
        ("+Modality:SR", Match("Modality", "SR")),
        ("SeriesNumber:[1 TO 10]", Range("SeriesNumber", 1, 10)),
        ("SliceThickness:[0.5 TO 1.25]", Range("SliceThickness", 0.5, 1.25)),
        (
            "StudyDate:{2020-01-01 TO *]",
            Range("StudyDate", "2020-01-01", None, include_low=False),
        ),
        ("StudyDate:[* TO 20201231}", Range("StudyDate", None, "2020-12-31", include_high=False)),
        ("StudyDate:>=20200101", Range("StudyDate", "2020-01-01", None)),
        ("StudyDate:<20200101", Range("StudyDate", None, "2020-01-01", include_high=False)),
        ("StudyDate:20200131", Match("StudyDate", "2020-01-31")),
        ("StudyDate:2020-01-31", Match("StudyDate", "2020-01-31")),
        ("StudyDate:2020", Range("StudyDate", "2020-01-01", "2020-12-31")),
        ("StudyDate:[202002 TO 202002]", Range("StudyDate", "2020-02-01", "2020-02-29")),
        ("StudyTime:1030", Range("StudyTime", "10:30:00", "10:30:59.999999")),
        ("StudyDate:2020*", Wildcard("StudyDate", "2020*")),
        ("InstanceNumber:7", Match("InstanceNumber", 7)),
        ("StudyInstanceUID:1.2.3", Match("StudyInstanceUID", "1.2.3")),
        ("AccessionNumber:A\\*1", Match("AccessionNumber", "A*1")),
        ("AccessionNumber:A\\*1*", Wildcard("AccessionNumber", "A\\*1*")),
        ("StudyDescription:*", Wildcard("StudyDescription", "*")),
        ("chest", Text("chest")),
        ("DOE*", Text("DOE", prefix=True)),
        ('"ct chest"', Text("ct chest")),
        ("chest brain", And((Text("chest"), Text("brain")))),
        ("chest -brain", And((Text("chest"), Not(Text("brain"))))),
        (
            "Modality:CT AND (chest OR PatientID:P1)",
            And((Match("Modality", "CT"), Or((Text("chest"), Match("PatientID", "P1"))))),
        ),
    ],
)
def test_lucene_parses_to_the_ast(text: str, expected: object) -> None:
    assert parse_lucene(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PatientNam:DOE", "unknown attribute 'PatientNam'"),
        ("Modality:", "syntax error"),
        ("(Modality:CT", "syntax error"),
        ('"unclosed', "syntax error"),
        ("Modality:CT AND OR x", "syntax error"),
        ("StudyDate:[20200101 TO 2020-13-45]", "StudyDate: '2020-13-45' is not a date"),
        ("StudyDate:yesterday", "is not a date"),
        ("SeriesNumber:abc", "SeriesNumber: 'abc' is not an integer"),
        ("StudyInstanceUID:1.2.*", "wildcards (* and ?) are not allowed for UI"),
        ("StudyInstanceUID:abc", "is not a valid UID"),
        ("PatientName:DOE~2", "fuzzy queries"),
        ("PatientName:/DO./", "regex queries"),
        # Found by fuzzing: luqum raised decimal.InvalidOperation or ValueError (a 500).
        ("PatientName:DOE~.", "the degree after a ~ is not a number"),
        ("DOE~1.2.3", "the degree after a ~ is not a number"),
        ('"a b"~1.5', "the degree after a ~ is not a number"),
        ("Modality:(CT OR PatientID:1)", "inside the field group"),
        ("[1 TO 2]", "needs a field"),
        ("do?e", "only a trailing *"),
        ("RequestAttributesSequence:x", "sequence values, which cannot be matched"),
        ("PixelData:x", "binary values"),
        ("x" * 5000, "longer than"),
        ("(" * 40 + "CT" + ")" * 40, "nests deeper"),
        ("NOT " * 40 + "CT", "nests deeper"),
        (" OR ".join(["a"] * 300), "more than 256 terms"),
    ],
)
def test_lucene_errors_are_invalid_query_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=None) as caught:
        parse_lucene(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_fields_of_lists_every_field() -> None:
    query = parse_lucene("Modality:CT AND NOT (PatientID:1 OR chest) AND StudyDate:2020")
    assert list(fields_of(query)) == ["Modality", "PatientID", "StudyDate"]


# --- QIDO-RS / C-FIND ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, MATCH_ALL),
        ({"PatientName": ["DOE*"]}, Wildcard("PatientName", "DOE*")),
        ({"00100010": ["doe^john"]}, Match("PatientName", "DOE^JOHN")),
        ({"patientname": ["d?e*"]}, Wildcard("PatientName", "D?E*")),
        ({"PatientID": ["P1"]}, Match("PatientID", "P1")),
        ({"PatientID": [""]}, MATCH_ALL),
        ({"PatientID": ["*"]}, MATCH_ALL),
        ({"StudyDate": ["20200101-20201231"]}, Range("StudyDate", "2020-01-01", "2020-12-31")),
        ({"StudyDate": ["20200101-"]}, Range("StudyDate", "2020-01-01", None)),
        ({"StudyDate": ["-20201231"]}, Range("StudyDate", None, "2020-12-31")),
        ({"StudyDate": ["2020-01-31"]}, Match("StudyDate", "2020-01-31")),
        ({"StudyDate": ["20200131"]}, Match("StudyDate", "2020-01-31")),
        ({"StudyTime": ["080000-120000"]}, Range("StudyTime", "08:00:00", "12:00:00.999999")),
        ({"StudyTime": ["0800"]}, Range("StudyTime", "08:00:00", "08:00:59.999999")),
        (
            {"AcquisitionDateTime": ["20200101103000-20200102"]},
            Range("AcquisitionDateTime", "2020-01-01T10:30:00", "2020-01-02T23:59:59.999999"),
        ),
        (
            {"StudyInstanceUID": ["1.2.3,1.2.4"]},
            AnyOf("StudyInstanceUID", ("1.2.3", "1.2.4")),
        ),
        (
            {"StudyInstanceUID": ["1.2.3\\1.2.4\\1.2.5"]},
            AnyOf("StudyInstanceUID", ("1.2.3", "1.2.4", "1.2.5")),
        ),
        ({"ModalitiesInStudy": ["CT"]}, Match("ModalitiesInStudy", "CT")),
        ({"ModalitiesInStudy": ["CT\\MR"]}, AnyOf("ModalitiesInStudy", ("CT", "MR"))),
        ({"ModalitiesInStudy": ["CT,MR"]}, AnyOf("ModalitiesInStudy", ("CT", "MR"))),
        ({"Modality": ["CT", "MR"]}, AnyOf("Modality", ("CT", "MR"))),
        ({"StudyDescription": ["CHEST, ABDOMEN"]}, Match("StudyDescription", "CHEST, ABDOMEN")),
        ({"SeriesNumber": ["3"]}, Match("SeriesNumber", 3)),
        (
            {"limit": ["10"], "offset": ["5"], "includefield": ["all"], "FuzzyMatching": ["true"]},
            MATCH_ALL,
        ),
        (
            {"PatientName": ["DOE*"], "StudyDate": ["2020-"], "ModalitiesInStudy": ["CT"]},
            And(
                (
                    Wildcard("PatientName", "DOE*"),
                    Range("StudyDate", "2020-01-01", None),
                    Match("ModalitiesInStudy", "CT"),
                )
            ),
        ),
    ],
)
def test_qido_keys_to_the_ast(params: dict[str, list[str]], expected: object) -> None:
    assert qido_to_query(params, Level.STUDY) == expected


def test_qido_takes_pairs_and_plain_strings() -> None:
    expected = And((Match("PatientID", "P1"), Match("Modality", "CT")))
    assert qido_to_query([("PatientID", "P1"), ("Modality", "CT")], Level.SERIES) == expected
    assert qido_to_query({"PatientID": "P1", "Modality": "CT"}, Level.SERIES) == expected


def test_qido_universal_value_wins_over_values_of_the_same_key() -> None:
    assert qido_to_query([("Modality", "CT"), ("Modality", "")], Level.SERIES) == MATCH_ALL


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"StudyDate": ["2020-13-45"]}, "StudyDate: '2020-13-45' is not a valid value or range"),
        ({"StudyDate": ["20201301"]}, "is not a date"),
        ({"StudyDate": ["abc-def"]}, "is not a valid value or range"),
        ({"StudyTime": ["2500"]}, "is not a time"),
        ({"SeriesNumber": ["one"]}, "is not an integer"),
        ({"StudyInstanceUID": ["1.2.3,1.02.4"]}, "'1.02.4' is not a valid UID"),
        ({"StudyInstanceUID": ["1.2.*"]}, "wildcards"),
        ({"PatientNme": ["DOE"]}, "unknown attribute 'PatientNme'"),
        ({"99991234": ["x"]}, "unknown attribute '99991234'"),
        # Found by fuzzing: a repeating group's tag (Number Of Points, 50xx0010) was a 500.
        ({"50100010": ["doe^jot=*"]}, "unknown attribute '50100010'"),
        ({"60000010": ["1"]}, "unknown attribute '60000010'"),
        # Found by fuzzing (a C-FIND identifier): SQLite cannot bind it, the index failed.
        ({"InstanceNumber": ["2" * 40]}, "an integer of at most 64 bits"),
        ({"RequestAttributesSequence.AccessionNumber": ["A1"]}, "inside sequences"),
        ({"NumberOfSeriesRelatedInstances": ["3"]}, "attribute of the series level"),
        ({"StudyInstanceUID": [",".join(["1.2"] * 1001)]}, "at most 1000 values"),
    ],
)
def test_qido_errors_are_invalid_query(params: dict[str, list[str]], message: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        qido_to_query(params, Level.STUDY)
    assert message in str(caught.value)


def test_lucene_caret_is_a_name_separator_not_a_boost() -> None:
    assert parse_lucene("PatientName:DOE^JOHN*") == Wildcard("PatientName", "DOE^JOHN*")
    assert parse_lucene("DOE^JOHN") == Text("DOE^JOHN")
    assert parse_lucene('PatientName:"DOE^JOHN"') == Match("PatientName", "DOE^JOHN")
