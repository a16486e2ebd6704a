"""The metadata processor: DICOM JSON without bulk data and search fields, for every object."""

import json
import warnings
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomflow.kernel.blobs.filesystem import FilesystemBlobStore
from dicomflow.kernel.bus.base import Record
from dicomflow.kernel.bus.embedded import EmbeddedBus
from dicomflow.kernel.events import (
    InstanceIdentity,
    MetadataExtracted,
    Namespace,
    ObjectStored,
    Source,
    SourceKind,
    Topic,
    decode_event,
    encode_event,
)
from dicomflow.kernel.settings import Settings
from dicomflow.kernel.uids import instance_key
from dicomflow.processors import metadata
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.processors.metadata import MetadataProcessor, extract_metadata, read_metadata
from dicomflow.synthetic import PatientSpec, make_instance
from tests.pagecache import require_droppable_pages, resident_pages

# pydicom's bundled files with odd encodings: big endian, implicit VR, deflate, encapsulated
# pixel data, RT and SR objects, private and UN sequences, bad VRs, truncated files.
ODD_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "MR_truncated.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "rtplan.dcm",
    "rtplan_truncated.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "reportsi_with_empty_number_tags.dcm",
    "waveform_ecg.dcm",
    "badVR.dcm",
    "UN_sequence.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "empty_charset_LEI.dcm",
    "image_dfl.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "ExplVR_LitEndNoMeta.dcm",
    "examples_overlay.dcm",
    "SC_rgb_rle_2frame.dcm",
]


def encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tests write odd values on purpose
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


@pytest.mark.parametrize("name", ODD_FILES)
def test_odd_files_never_crash_and_round_trip_as_json(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    dicom_json, fields = read_metadata(Path(path).read_bytes())
    encoded = json.dumps({"dicom_json": dicom_json, "fields": fields}, allow_nan=False)
    assert encoded.encode("utf-8")
    for element in dicom_json.values():
        assert set(element) <= {"vr", "Value", "InlineBinary"}
        assert len(element.get("InlineBinary", "")) <= 4 * 1024 // 3 + 4  # no bulk data


def test_the_same_json_as_pydicom_for_a_well_formed_object() -> None:
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).to_json_dict()
    dicom_json, _ = read_metadata(data)
    assert dicom_json.pop("7FE00010") == {"vr": "OW"}
    assert dicom_json == reference


def test_pixel_data_and_other_bulk_data_are_left_out() -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=64, columns=64)
    ds.add_new(0x00091011, "OB", b"\x01" * 4000)
    ds.add_new(0x00091012, "OB", b"\x02" * 10)
    dicom_json, fields = read_metadata(encode(ds))
    assert dicom_json["7FE00010"] == {"vr": "OW"}
    assert dicom_json["00091011"] == {"vr": "OB"}
    assert dicom_json["00091012"] == {"vr": "OB", "InlineBinary": "AgICAgICAgICAg=="}
    assert "PixelData" not in fields
    in_memory, _ = extract_metadata(ds)
    assert in_memory["7FE00010"] == {"vr": "OW"}


def test_fields_are_normalised_for_search() -> None:
    ds = make_instance(
        PatientSpec(name="Doe^John^^Dr", patient_id="P1", birth_date="19700101"),
        0,
        1,
        4,
        modality="MR",
        frames=2,
        study_date="20240131",
    )
    ds.AcquisitionDateTime = "20240131093500.25+0100"
    dicom_json, fields = extract_metadata(ds)
    assert dicom_json["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John^^Dr"}]}
    assert fields["PatientName"] == {
        "alphabetic": "Doe^John^^Dr",
        "family": "Doe",
        "given": "John",
        "prefix": "Dr",
    }
    assert fields["PatientBirthDate"] == "1970-01-01"
    assert fields["StudyDate"] == "2024-01-31"
    assert fields["StudyTime"] == "09:30:00"
    assert fields["AcquisitionDateTime"] == "2024-01-31T09:35:00.25+01:00"
    assert fields["Modality"] == "MR"
    assert fields["SeriesNumber"] == 2
    assert fields["InstanceNumber"] == 5
    assert fields["NumberOfFrames"] == 2
    assert fields["Rows"] == 64
    assert fields["SliceThickness"] == 1.25
    assert fields["PixelSpacing"] == [0.7, 0.7]
    assert fields["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert fields["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4"
    assert fields["InstitutionName"] == "GENERAL HOSPITAL"
    assert "ReferencedStudySequence" not in fields  # sequences stay in the JSON only
    assert dicom_json["00081110"]["vr"] == "SQ"


def test_invalid_values_stay_as_text_and_are_skipped_in_fields() -> None:
    ds = make_instance(PatientSpec(patient_id="ODD"), 0, 0, 0, rows=4, columns=4)
    ds[0x00080020] = raw(0x00080020, "DA", b"2020-13-45")
    ds[0x00280030] = raw(0x00280030, "DS", b"abc\\0.5 ")
    ds[0x00180050] = raw(0x00180050, "DS", b"NaN ")
    ds[0x00200013] = raw(0x00200013, "IS", b"1.5 ")
    ds[0x00080030] = raw(0x00080030, "TM", b"99")
    for data in (encode(ds), None):
        if data is None:
            dicom_json, fields = extract_metadata(ds)
        else:
            dicom_json, fields = read_metadata(data)
        assert dicom_json["00080020"] == {"vr": "DA", "Value": ["2020-13-45"]}
        assert dicom_json["00280030"]["Value"][0] == "abc"
        assert dicom_json["00180050"] == {"vr": "DS", "Value": ["NaN"]}
        assert "StudyDate" not in fields
        assert "StudyTime" not in fields
        assert "SliceThickness" not in fields
        assert "InstanceNumber" not in fields
        assert fields["PixelSpacing"] == 0.5
        json.dumps(dicom_json, allow_nan=False)


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        ("ISO_IR 100", "Müller^Hans", "Müller^Hans"),
        ("ISO_IR 192", "Müller^Hans", "Müller^Hans"),
        ("ISO_IR 144", "Иванов^Иван", "Иванов^Иван"),
        ("GB18030", "王^小东", "王^小东"),
        (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "Yamada^Tarou"),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞", "Hong^Gildong"),
    ],
)
def test_character_sets(charset: str | list[str], name: str, expected: str) -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = name.split("=")[0].replace("^", " ")
    dicom_json, fields = read_metadata(encode(ds))
    assert fields["PatientName"]["alphabetic"] == expected
    groups = name.split("=")
    if len(groups) > 1:
        assert dicom_json["00100010"]["Value"][0]["Ideographic"] == groups[1]
        assert fields["PatientName"]["ideographic"] == groups[1]
    assert fields["StudyDescription"] == expected.replace("^", " ")


def test_unknown_or_undecodable_character_sets_do_not_crash() -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    ds[0x00080005] = raw(0x00080005, "CS", b"ISO_IR 999")
    ds[0x00100010] = raw(0x00100010, "PN", b"M\xfcller^\xff\xfe")
    ds[0x00081030] = raw(0x00081030, "LO", b"caf\xe9 \xed\xa0\x80")
    dicom_json, fields = read_metadata(encode(ds))
    json.dumps(dicom_json, ensure_ascii=False).encode("utf-8")
    assert fields["PatientName"]["family"].startswith("M")


def test_strings_that_json_cannot_carry_are_repaired() -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    ds.StudyDescription = "bad \udc80 surrogate"  # what a surrogateescape decoder leaves
    dicom_json, fields = extract_metadata(ds)
    assert dicom_json["00081030"]["Value"] == ["bad ? surrogate"]
    assert fields["StudyDescription"] == "bad ? surrogate"


def test_deeply_nested_sequences_are_cut_not_fatal() -> None:
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    item = ds
    for _ in range(40):
        child = Dataset()
        child.CodeValue = "X"
        item.ContentSequence = [child]
        item = child
    dicom_json, _ = read_metadata(encode(ds))
    depth, node = 0, dicom_json
    while "0040A730" in node and node["0040A730"].get("Value"):
        node, depth = node["0040A730"]["Value"][0], depth + 1
    assert 0 < depth <= metadata.MAX_SEQUENCE_DEPTH + 1


def test_an_unreadable_object_is_a_poison_event() -> None:
    with pytest.raises(PoisonEvent, match="not a readable DICOM object"):
        read_metadata(b"\x00" * 10)
    with pytest.raises(PoisonEvent, match="not a readable DICOM object"):
        read_metadata(b"not dicom at all, really not")


# --- the processor --------------------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> ProcessorContext:
    return ProcessorContext(
        settings=Settings(data_dir=tmp_path),
        bus=EmbeddedBus(tmp_path / "events"),
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        spool=FilesystemBlobStore(tmp_path / "spool"),
    )


def stored(context: ProcessorContext, ds: Dataset, namespace: Namespace) -> ObjectStored:
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    blob = context.blobs.put(namespace, instance_key(study, series, sop), encode(ds))
    return ObjectStored(
        identity=InstanceIdentity(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        ),
        blob=blob,
        source=Source(kind=SourceKind.STOW, address="10.0.0.7"),
        received_at=datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
    )


def record_of(value: bytes, topic: str = "dicomflow.stored") -> Record:
    return Record(topic=topic, partition=0, offset=0, key="k", value=value, timestamp=0.0)


@pytest.mark.parametrize("namespace", [Namespace.ORIGINAL, Namespace.DEIDENTIFIED])
def test_processor_publishes_metadata_keyed_by_study(
    context: ProcessorContext, namespace: Namespace
) -> None:
    ds = make_instance(PatientSpec(name="DOE^JANE"), 0, 0, 0)
    event = stored(context, ds, namespace)
    [out] = MetadataProcessor(context).handle(record_of(encode_event(event)))
    assert out.topic == context.topic(Topic.METADATA) == "dicomflow.metadata"
    assert out.key == ds.StudyInstanceUID
    extracted = decode_event(out.value, MetadataExtracted)
    assert extracted.namespace == namespace
    assert extracted.identity == event.identity
    assert extracted.blob == event.blob
    assert extracted.source == event.source
    assert extracted.received_at == event.received_at
    assert extracted.fields["PatientName"]["alphabetic"] == "DOE^JANE"
    assert extracted.dicom_json["7FE00010"] == {"vr": "OW"}
    assert extracted.dicom_json["0020000D"] == {"vr": "UI", "Value": [ds.StudyInstanceUID]}


def test_processor_drops_the_objects_it_read_from_the_page_cache(
    context: ProcessorContext, tmp_path: Path
) -> None:
    # Write-once object data must not push the index out of memory during a bulk import;
    # dropped once the batch is published (a batch at a time: one drain of the CPUs' lists).
    require_droppable_pages(tmp_path)
    patient = PatientSpec(name="DOE^JANE")
    events = [stored(context, make_instance(patient, 0, 0, i), Namespace.ORIGINAL) for i in (0, 1)]
    paths = [context.blobs.local_path(e.blob.namespace, e.blob.key) for e in events]
    for event in events:
        context.blobs.get(event.blob.namespace, event.blob.key)
    assert all(path is not None and resident_pages(path) > 0 for path in paths)
    processor = MetadataProcessor(context)
    records = [record_of(encode_event(event)) for event in events]
    for record in records:
        processor.handle(record)
    assert all(path is not None and resident_pages(path) > 0 for path in paths)
    processor.after_commit(records)
    assert [resident_pages(path) for path in paths if path is not None] == [0, 0]
    processor.after_commit([])  # nothing read since: nothing to do


def test_processor_poison_events(context: ProcessorContext) -> None:
    processor = MetadataProcessor(context)
    with pytest.raises(PoisonEvent, match="not an ObjectStored event"):
        processor.handle(record_of(b"{not json"))
    ds = make_instance(PatientSpec(), 0, 0, 0, rows=4, columns=4)
    event = stored(context, ds, Namespace.ORIGINAL)
    context.blobs.put(Namespace.ORIGINAL, event.blob.key, b"tampered")
    with pytest.raises(PoisonEvent, match="cannot be read"):
        processor.handle(record_of(encode_event(event)))
    context.blobs.delete(Namespace.ORIGINAL, event.blob.key)
    with pytest.raises(PoisonEvent, match="cannot be read"):
        processor.handle(record_of(encode_event(event)))
    garbage = context.blobs.put(Namespace.ORIGINAL, event.blob.key, b"garbage" * 50)
    with pytest.raises(PoisonEvent, match="not a readable DICOM object"):
        processor.handle(record_of(encode_event(event.model_copy(update={"blob": garbage}))))


def test_processor_is_registered_through_the_hook() -> None:
    assert metadata.register_processors() == [MetadataProcessor]
    # Copies get their metadata from the de-identification processor (test_deidentify.py).
    assert MetadataProcessor.topics == (Topic.STORED,)


def test_a_string_json_cannot_carry_is_repaired_when_the_event_is_made(
    context: ProcessorContext,
) -> None:
    # The fast reader does not check what it decodes (its codecs leave no lone surrogate):
    # should one appear all the same, the event is written with it repaired, not refused.
    ds = make_instance(PatientSpec(name="DOE^JANE"), 0, 0, 0, rows=4, columns=4)
    event = stored(context, ds, Namespace.ORIGINAL)
    dicom_json = {"00081030": {"vr": "LO", "Value": ["bad \udc80 surrogate"]}}
    fields = {"StudyDescription": "bad \udc80 surrogate"}
    out = metadata._record(context, event, dicom_json, fields)
    extracted = decode_event(out.value, MetadataExtracted)
    assert extracted.dicom_json["00081030"]["Value"] == ["bad ? surrogate"]
    assert extracted.fields["StudyDescription"] == "bad ? surrogate"
