"""The fast reader of `read_metadata` against pydicom's path: the very same output, byte for byte.

`read_metadata` parses common Part 10 encodings itself and hands anything else to pydicom
(`_read_metadata_pydicom`, the path it replaces). Every case here compares the two: the DICOM
JSON and fields (with their key order, as serialised), or the PoisonEvent message.
"""

import json
import random
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from dicomflow.processors import metadata
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.metadata import _read_metadata_fast, _read_metadata_pydicom, read_metadata
from dicomflow.synthetic import PatientSpec, make_instance
from tests.processors.conftest import rich_instance

Outcome = tuple[str, ...]

TESTDATA = sorted(path for path in get_testdata_files() if Path(path).is_file())


def outcome(reader: Any, data: bytes) -> Outcome:
    try:
        dicom_json, fields = reader(data)
    except PoisonEvent as exc:
        return ("poison", str(exc))
    return ("read", json.dumps(dicom_json), json.dumps(fields))


def assert_same(data: bytes) -> None:
    """The fast reader returns what pydicom's path returns, or raises the same PoisonEvent."""
    expected = outcome(_read_metadata_pydicom, data)
    assert outcome(read_metadata, data) == expected
    if expected[0] == "read":  # == as well: json.dumps would not tell 1 from 1.0 apart
        assert read_metadata(data) == _read_metadata_pydicom(data)


def encode(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd values on purpose
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def item(**attributes: object) -> Dataset:
    result = Dataset()
    for keyword, value in attributes.items():
        setattr(result, keyword, value)
    return result


def set_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element as its bytes: pydicom would refuse some of these values as Python ones."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def odd_instance() -> Dataset:
    """Empty values of every VR, tags, odd numbers, an icon, sequences of every length kind."""
    ds = make_instance(PatientSpec(name="Müller^Jörg"), 0, 0, 3, rows=8, columns=8)
    for tag, vr in [
        (0x00080012, "DA"),
        (0x00080013, "TM"),
        (0x0008002A, "DT"),
        (0x00080050, "SH"),
        (0x00081010, "SH"),
        (0x00101010, "AS"),
        (0x00101020, "DS"),
        (0x00180086, "IS"),
        (0x00181020, "LO"),
        (0x00184000, "LT"),
        (0x00189073, "FD"),
        (0x00209165, "AT"),
        (0x00280034, "IS"),
        (0x00282000, "OB"),
        (0x00380500, "LO"),
        (0x00400244, "DA"),
        (0x0040A160, "UT"),
        (0x00700023, "CS"),
        (0x00720036, "UC"),
        (0x00081190, "UR"),
        (0x00180088, "DS"),
        (0x00181030, "LO"),
    ]:
        ds.add_new(tag, vr, None)
    ds.add_new(0x00280009, "AT", [0x00181063, 0x00209153])  # Frame Increment Pointer
    ds.add_new(0x00181063, "DS", "33.3")
    ds.add_new(0x00209153, "FD", [1.5, float("nan"), float("inf")])
    set_raw(ds, 0x00185050, "IS", b"1.5 ")
    ds.add_new(0x00189087, "FD", 1000.0)
    ds.add_new(0x00189218, "SS", -3)
    ds.add_new(0x0018A002, "DT", "20240115093000.5+0100")
    ds.add_new(0x00280101, "US", 12)
    set_raw(ds, 0x00281052, "DS", b"-1024.0\\1e3\\abc ")
    set_raw(ds, 0x00080020, "DA", b"2020-13-45")
    set_raw(ds, 0x00180050, "DS", b"NaN ")
    ds.add_new(0x00400260, "SQ", Sequence())
    ds.add_new(0x00091002, "OB", b"\x01\x02\x03")
    ds.add_new(0x00091003, "UN", b"\x00" * 2000)
    ds.add_new(0x00091004, "UL", [1, 2, 3])
    ds.add_new(0x00091005, "SV", [-(2**40)])
    ds.add_new(0x00091006, "OF", b"\x00\x00\x80\x3f")
    ds.add_new(0x00091007, "UT", "free text \\ with a backslash  ")
    ds.PatientComments = "  leading spaces kept, trailing dropped   "
    icon = item(Rows=4, Columns=4, BitsAllocated=8, SamplesPerPixel=1)
    icon.add_new(0x7FE00010, "OB", b"\x00" * 16)
    ds.IconImageSequence = Sequence([icon])
    undefined = Sequence([item(CodeValue="A", CodeMeaning="Ä"), item(CodeValue="B")])
    undefined.is_undefined_length = True
    for member in undefined:
        member.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = undefined
    ds.ReferencedSeriesSequence = Sequence(
        [item(SeriesInstanceUID="1.2.3", ReferencedInstanceSequence=Sequence([item()] * 2))]
    )
    return ds


def public_only(ds: Dataset) -> Dataset:
    """`ds` without private data elements, whose VR implicit VR leaves to pydicom's lookup."""
    ds.remove_private_tags()
    return ds


def encapsulated() -> Dataset:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 30 + b"\xff\xd9"])
    return ds


def small(ds: Dataset) -> Dataset:
    """`ds` with 4 x 4 pixels: the truncation and corruption cases walk its header."""
    ds.Rows = ds.Columns = 4
    ds.PixelData = b"\x00" * 32
    return ds


def nested(depth: int) -> Dataset:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    parent = ds
    for level in range(depth):
        child = item(CodeValue=f"L{level}")
        if level % 3 == 0:
            child.SpecificCharacterSet = "ISO_IR 192" if level % 2 else "ISO_IR 100"
        parent.ContentSequence = Sequence([child])
        parent = child
    return ds


def charset(terms: str | list[str], name: str) -> Dataset:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    ds.SpecificCharacterSet = terms
    ds.PatientName = name
    ds.StudyDescription = name.split("=")[0]
    return ds


SYNTHETIC: dict[str, Any] = {
    "ct 512": lambda: encode(make_instance(PatientSpec(), 0, 0, 1, rows=512, columns=512)),
    "10 KB": lambda: encode(make_instance(PatientSpec(), 0, 0, 1)),
    "tiny": lambda: encode(make_instance(PatientSpec(), 0, 0, 0, rows=1, columns=1)),
    "multi-frame": lambda: encode(
        make_instance(PatientSpec(), 1, 2, 3, modality="MR", rows=32, columns=32, frames=12)
    ),
    "rich": lambda: encode(small(rich_instance())),
    "odd": lambda: encode(odd_instance()),
    "nested 40": lambda: encode(nested(40)),
    "implicit": lambda: encode(make_instance(PatientSpec(), 0, 0, 0), ImplicitVRLittleEndian),
    "implicit public": lambda: encode(
        public_only(make_instance(PatientSpec(), 0, 0, 0)), ImplicitVRLittleEndian
    ),
    "implicit rich": lambda: encode(small(rich_instance()), ImplicitVRLittleEndian),
    "implicit odd": lambda: encode(odd_instance(), ImplicitVRLittleEndian),
    "big endian": lambda: encode(rich_instance(), ExplicitVRBigEndian),
    "deflated": lambda: encode(rich_instance(), DeflatedExplicitVRLittleEndian),
    "encapsulated": lambda: encode(encapsulated(), JPEGBaseline8Bit),
    "latin-1": lambda: encode(charset("ISO_IR 100", "Müller^Hans")),
    "utf-8": lambda: encode(charset("ISO_IR 192", "王^小东")),
    "cyrillic": lambda: encode(charset("ISO_IR 144", "Иванов^Иван")),
    "gb18030": lambda: encode(charset("GB18030", "王^小东")),
    "iso 2022": lambda: encode(
        charset(["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")
    ),
    "unknown charset": lambda: encode(charset("ISO_IR 999", "Müller")),
    "empty charset": lambda: encode(charset("", "Muller")),
}

# The common shapes of our traffic: if these fell back, the fast reader would be dead code.
FAST = ["ct 512", "10 KB", "tiny", "multi-frame", "rich", "odd", "nested 40", "implicit public"]
FAST += ["latin-1", "utf-8", "cyrillic", "gb18030", "encapsulated"]


@pytest.mark.parametrize("path", TESTDATA, ids=lambda path: Path(path).name)
def test_pydicom_test_files(path: str) -> None:
    assert_same(Path(path).read_bytes())


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_objects(name: str) -> None:
    data = SYNTHETIC[name]()
    assert_same(data)
    if name in FAST:
        assert _read_metadata_fast(data) is not None


def test_the_odd_object_keeps_its_odd_values() -> None:
    dicom_json, fields = read_metadata(SYNTHETIC["odd"]())
    assert dicom_json["00280009"] == {"vr": "AT", "Value": ["00181063", "00209153"]}
    assert dicom_json["00209153"] == {"vr": "FD", "Value": [1.5, "nan", "inf"]}
    assert dicom_json["00185050"] == {"vr": "IS", "Value": ["1.5"]}
    assert dicom_json["00101020"] == {"vr": "DS"}
    assert dicom_json["00091003"] == {"vr": "UN"}  # bulk data
    assert dicom_json["00880200"]["Value"][0]["7FE00010"] == {"vr": "OB"}
    assert [i["00080100"]["Value"] for i in dicom_json["00081032"]["Value"]] == [["A"], ["B"]]
    assert fields["PatientName"]["family"] == "Müller"


def test_sequences_deeper_than_the_limit_are_cut_the_same_way() -> None:
    dicom_json, _ = read_metadata(SYNTHETIC["nested 40"]())
    depth, node = 0, dicom_json
    while "Value" in node.get("0040A730", {}):
        node, depth = node["0040A730"]["Value"][0], depth + 1
    assert depth == metadata.MAX_SEQUENCE_DEPTH


@pytest.mark.parametrize("name", ["rich", "implicit rich", "odd"])
def test_every_truncation(name: str) -> None:
    data = SYNTHETIC[name]()
    for length in [*range(0, 160), *range(160, len(data), 11), len(data) - 1]:
        assert_same(data[:length])


@pytest.mark.parametrize("name", ["rich", "implicit rich"])
def test_random_corruption(name: str) -> None:
    data = SYNTHETIC[name]()
    header = len(data) - 4 * 4 * 2 - 12  # the pixel values are not worth flipping
    rng = random.Random(20240115)
    for _ in range(150):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(header)
            corrupt[position] = rng.choice([0, 0xFF, rng.randrange(256), corrupt[position] ^ 1])
        assert_same(bytes(corrupt))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM" + b"\x02\x00" * 3],
    ids=["empty", "short", "preamble only", "cut meta"],
)
def test_garbage(data: bytes) -> None:
    assert_same(data)


# The reader keeps the JSON of short values it has decoded (`metadata._ELEMENTS`): most of an
# object's values are those of the objects before it. What it returns must not depend on it.


def test_what_is_read_does_not_depend_on_what_was_read_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = [SYNTHETIC[name]() for name in SYNTHETIC] + [
        Path(path).read_bytes() for path in TESTDATA
    ]
    monkeypatch.setattr(metadata, "_ELEMENTS", {})
    alone = []
    for data in objects:
        metadata._ELEMENTS.clear()
        alone.append(outcome(read_metadata, data))
    after_the_others = [outcome(read_metadata, data) for data in objects]
    assert len(metadata._ELEMENTS) > 100, "the cache is not exercised"
    assert after_the_others == alone
    twice = [outcome(read_metadata, data) for data in objects]
    assert twice == alone


def test_the_same_bytes_in_two_character_sets_are_decoded_in_each() -> None:
    latin = charset("ISO_IR 100", "Müller^Hans")
    utf8 = charset("ISO_IR 192", "Müller^Hans")
    set_raw(utf8, 0x00100010, "PN", "Müller^Hans".encode("latin-1"))  # latin-1 bytes, in UTF-8
    set_raw(latin, 0x00100010, "PN", "Müller^Hans".encode("latin-1"))
    first, _ = read_metadata(encode(latin))
    second, _ = read_metadata(encode(utf8))
    assert first["00100010"]["Value"] == [{"Alphabetic": "Müller^Hans"}]
    assert second["00100010"]["Value"] == [{"Alphabetic": "M\ufffdller^Hans"}]
    assert_same(encode(utf8))


def test_the_cache_of_values_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "_ELEMENTS", {})
    monkeypatch.setattr(metadata, "_CACHED_ELEMENTS", 100)
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=1, columns=1)
    for number in range(300):
        ds.StudyDescription = f"study {number}"
        ds.SeriesDescription = f"series {number}"
        _, fields = read_metadata(encode(ds))
        assert fields["StudyDescription"] == f"study {number}"
        assert len(metadata._ELEMENTS) <= 100
    long_value = "x" * (metadata._CACHED_VALUE_BYTES + 2)
    ds.StudyDescription = long_value
    read_metadata(encode(ds))
    assert all(len(key[2]) <= metadata._CACHED_VALUE_BYTES for key in metadata._ELEMENTS)


def test_a_value_first_met_in_a_sequence_item_still_makes_a_field_at_the_top(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metadata, "_ELEMENTS", {})
    nested = make_instance(PatientSpec(), 0, 0, 0, rows=1, columns=1)
    del nested.StudyDescription
    nested.ProcedureCodeSequence = Sequence([item(StudyDescription="shared text")])
    top = make_instance(PatientSpec(), 0, 0, 1, rows=1, columns=1)
    top.StudyDescription = "shared text"
    _, nested_fields = read_metadata(encode(nested))
    assert "StudyDescription" not in nested_fields
    _, fields = read_metadata(encode(top))  # the value's JSON comes from the table
    assert fields["StudyDescription"] == "shared text"
    assert_same(encode(top))
