"""The de-identification processor: PS3.15 Basic Profile, keyed pseudonyms, intact pixels."""

import io
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pluggy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomflow.kernel.blobs.base import sha256_of
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
from dicomflow.kernel.uids import instance_key, is_valid_uid
from dicomflow.processors import deidentify as deidentify_module
from dicomflow.processors import hookspecs
from dicomflow.processors.base import ProcessorContext
from dicomflow.processors.deid import (
    DeidentificationError,
    DeidentifyOptions,
    accession_pseudonym,
    basic_profile_action,
    date_shift_days,
    deidentify,
    deidentify_bytes,
    patient_pseudonym_id,
    pseudonymous_uid,
)
from dicomflow.processors.deid.profile import (
    BASIC_PROFILE,
    DEVICE_IDENTITY_TAGS,
    PATIENT_CHARACTERISTICS_TAGS,
    Action,
)
from dicomflow.processors.deidentify import DeidentifyProcessor
from dicomflow.processors.exceptions import PoisonEvent
from dicomflow.synthetic import PatientSpec
from tests.pagecache import require_droppable_pages, resident_pages

RichInstanceFactory = Callable[..., Dataset]  # the make_rich_instance fixture

SECRET = b"unit-test-secret"
OPTIONS = DeidentifyOptions(secret=SECRET)

# Attributes of PS3.15 Table E.1-1 (by keyword) whose original values must never survive.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "PatientComments",
    "IssuerOfPatientID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "PersonName",
    "TextValue",
    "AccessionNumber",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "PerformedProcedureStepID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "MediaStorageSOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
    "UID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AcquisitionDateTime",
    "InstanceCreationDate",
    "PerformedProcedureStepStartDate",
    "DateTime",
)
# Values of these must not show up even inside another attribute or anywhere in the bytes.
PERSONAL_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "OtherPatientIDs",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "ReferringPhysicianName",
        "OperatorsName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "PersonName",
        "AccessionNumber",
        "DeviceSerialNumber",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "ReferencedSOPInstanceUID",
        "UID",
    }
)
# Removed unless an option keeps them.
CHARACTERISTICS_KEYWORDS = ("PatientAge", "PatientSize", "PatientWeight", "EthnicGroup")

BUNDLED_FILES = (
    "CT_small.dcm",  # explicit VR little endian
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",  # encapsulated JPEG 2000
    "SC_rgb_jpeg_gdcm.dcm",  # encapsulated JPEG lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # encapsulated JPEG baseline
    "image_dfl.dcm",  # deflated explicit VR little endian
    "rtplan.dcm",  # nested references, no pixels
)


def walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element of a dataset, its file meta and all sequence items, depth first."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta
    yield from _walk_items(ds)


def _walk_items(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk_items(item)


def values_of(elem: DataElement) -> list[str]:
    if elem.VR == "SQ" or elem.is_empty:
        return []
    if isinstance(elem.value, MultiValue | list):
        return [str(v) for v in elem.value if str(v)]
    return [str(elem.value)]


def identifying_values(ds: Dataset) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for elem in walk(ds):
        if elem.keyword in IDENTIFYING_KEYWORDS + CHARACTERISTICS_KEYWORDS:
            found.setdefault(elem.keyword, set()).update(values_of(elem))
    return found


def assert_no_original_values(original: Dataset, output: Dataset, encoded: bytes) -> None:
    """No identifying value of `original` is in `output`: same attribute, any attribute, bytes."""
    before = identifying_values(original)
    leaked = [
        (elem.keyword, value)
        for elem in walk(output)
        for value in values_of(elem)
        if value in before.get(elem.keyword, set())
    ]
    assert leaked == []
    distinctive = {
        value
        for keyword, values in before.items()
        if keyword in PERSONAL_KEYWORDS
        for value in values
        if len(value) >= 6
    }
    every_value = [v for elem in walk(output) for v in values_of(elem)]
    assert [v for v in distinctive if any(v in text for text in every_value)] == []
    assert [v for v in distinctive if v.encode() in encoded] == []


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def run(ds: Dataset, options: DeidentifyOptions = OPTIONS) -> Dataset:
    """De-identify through bytes, the way the processor does."""
    return read(deidentify_bytes(encode(ds), options).data)


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)  # bundled with pydicom: no network
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(path).read_bytes()


def read_any(data: bytes) -> Dataset:
    try:
        return read(data)
    except pydicom.errors.InvalidDicomError:
        return pydicom.dcmread(io.BytesIO(data), force=True)


# --- pseudonyms -----------------------------------------------------------------------------


def test_pseudonymous_uid_is_the_first_128_bits_of_the_hmac_under_2_25() -> None:
    import hashlib
    import hmac

    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    digest = hmac.new(SECRET, uid.encode(), hashlib.sha256).digest()
    expected = f"2.25.{int.from_bytes(digest[:16], 'big')}"
    assert pseudonymous_uid(uid, SECRET) == expected
    assert pseudonymous_uid(uid, SECRET.decode(), "2.25") == expected
    assert is_valid_uid(expected) and len(expected) <= 44


def test_pseudonymous_uid_depends_on_the_secret_and_the_input() -> None:
    uid = "1.2.3.4.5"
    assert pseudonymous_uid(uid, b"one") != pseudonymous_uid(uid, b"two")
    assert pseudonymous_uid(uid, SECRET) != pseudonymous_uid("1.2.3.4.6", SECRET)
    assert pseudonymous_uid(uid, SECRET) == pseudonymous_uid(uid + "\0", SECRET)


def test_pseudonymous_uid_under_a_long_root_still_fits_64_characters() -> None:
    root = "1.2.826.0.1.3680043.10.54321.99"
    for index in range(200):
        uid = pseudonymous_uid(f"1.2.3.{index}", SECRET, root)
        assert uid.startswith(root + ".")
        assert len(uid) <= 64 and is_valid_uid(uid), uid


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("2.25.", "not a valid DICOM UID"),
        ("01.2", "not a valid DICOM UID"),
        ("1.2.826.0.1.3680043.10.54321.99.1234567890", "leave room"),
    ],
)
def test_an_unusable_uid_root_is_refused_with_a_reason(root: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeidentifyOptions(secret=SECRET, uid_root=root)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="DICOMFLOW_DEID_SECRET"):
        DeidentifyOptions(secret=b"")


def test_options_come_from_settings_and_never_show_the_secret(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        deid_secret="from-settings",
        deid_uid_root="1.2.3",
        deid_retain_longitudinal=True,
        deid_retain_patient_characteristics=True,
        deid_retain_device_identity=True,
    )
    options = DeidentifyOptions.from_settings(settings)
    assert options.secret == b"from-settings"
    assert options.uid_root == "1.2.3"
    assert options.retain_longitudinal
    assert options.retain_patient_characteristics
    assert options.retain_device_identity
    assert "from-settings" not in repr(options)


# --- the profile table ----------------------------------------------------------------------


def test_the_table_has_the_basic_profile_actions_of_well_known_attributes() -> None:
    expected = {
        "PatientName": Action.EMPTY,
        "PatientBirthDate": Action.EMPTY,
        "StudyInstanceUID": Action.UID,
        "ReferencedSOPInstanceUID": Action.UID,
        "OtherPatientIDs": Action.REMOVE,
        "InstitutionName": Action.REMOVE_OR_EMPTY_OR_DUMMY,
        "ContentSequence": Action.DUMMY,
        "ReferencedImageSequence": Action.REMOVE_OR_EMPTY_OR_UID,
    }
    actual = {kw: basic_profile_action(pydicom.tag.Tag(kw)) for kw in expected}
    assert actual == expected
    assert basic_profile_action(pydicom.tag.Tag("SOPClassUID")) is None
    assert basic_profile_action(pydicom.tag.Tag(0x6002, 0x3000)) is Action.REMOVE
    assert len(BASIC_PROFILE) > 600


def test_every_option_attribute_is_one_the_basic_profile_would_change() -> None:
    for tag in PATIENT_CHARACTERISTICS_TAGS | DEVICE_IDENTITY_TAGS:
        assert tag in BASIC_PROFILE, pydicom.datadict.keyword_for_tag(tag)


# --- the Basic Profile on realistic datasets ------------------------------------------------


def test_no_identifying_value_survives_anywhere(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    data = deidentify_bytes(encode(original), OPTIONS).data
    output = read(data)
    assert_no_original_values(original, output, data)
    for keyword in CHARACTERISTICS_KEYWORDS:
        assert keyword not in output
    assert "DOE" not in data.decode("latin-1")


def test_private_elements_are_removed_at_every_level(
    make_rich_instance: RichInstanceFactory,
) -> None:
    output = run(make_rich_instance())
    assert [elem.tag for elem in walk(output) if elem.tag.is_private] == []


def test_patient_pseudonyms_and_the_deidentification_record(
    make_rich_instance: RichInstanceFactory,
) -> None:
    output = run(make_rich_instance())
    pid = patient_pseudonym_id("MRN-123456", SECRET)
    assert re.fullmatch(r"[0-9A-F]{16}", pid)
    assert output.PatientID == pid
    assert str(output.PatientName) == f"ANON^{pid}"
    assert output.PatientBirthDate == ""
    assert "PatientBirthTime" not in output
    assert output.PatientIdentityRemoved == "YES"
    assert "Basic Profile" in output.DeidentificationMethod
    codes = [item.CodeValue for item in output.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert {item.CodingSchemeDesignator for item in output.DeidentificationMethodCodeSequence} == {
        "DCM"
    }
    assert output.LongitudinalTemporalInformationModified == "MODIFIED"


def test_identifiers_get_keyed_or_dummy_values(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    output = run(original)
    assert output.AccessionNumber == accession_pseudonym(str(original.AccessionNumber), SECRET)
    assert output.StudyID == ""
    assert output.ReferringPhysicianName == ""
    assert output.InstitutionName == "ANONYMIZED"
    assert output.StationName == "ANONYMIZED"
    assert output.OperatorsName == "ANONYMIZED"
    for keyword in (
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "PatientAddress",
        "PerformingPhysicianName",
        "RequestAttributesSequence",
        "InstitutionAddress",
        "StudyDescription",
    ):
        assert keyword not in output, keyword
    assert 0x60003000 not in output and 0x60004000 not in output  # overlay data and comments
    assert output.Manufacturer == "ACME MEDICAL"  # not in the table: kept
    assert output.ProcedureCodeSequence[0].CodeValue == "CTCHEST"


def test_uids_are_replaced_everywhere_with_their_keyed_pseudonyms(
    make_rich_instance: RichInstanceFactory,
) -> None:
    original = make_rich_instance()
    output = run(original)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert output[keyword].value == pseudonymous_uid(original[keyword].value, SECRET)
    assert output.FrameOfReferenceUID == pseudonymous_uid(original.FrameOfReferenceUID, SECRET)
    assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in output.file_meta
    referenced = original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    expected = pseudonymous_uid(referenced, SECRET)
    assert output.ReferencedImageSequence[0].ReferencedSOPInstanceUID == expected
    assert output.SourceImageSequence[0].ReferencedSOPInstanceUID == expected
    assert (
        pseudonymous_uid(original.ContentSequence[0].UID, SECRET) == output.ContentSequence[0].UID
    )
    assert output.SOPClassUID == original.SOPClassUID
    assert output.ReferencedImageSequence[0].ReferencedSOPClassUID == original.SOPClassUID
    assert output.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_uids_the_table_does_not_list_are_hashed_unless_they_are_public(
    make_rich_instance: RichInstanceFactory,
) -> None:
    ds = rich_dataset_with(
        make_rich_instance,
        ReferencedPerformedProcedureStepSequence=None,
        IrradiationEventUID="1.2.3.999.1",
    )
    ds.ReferencedSeriesSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.777"
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = Sequence([Dataset()])
    item = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.777.1"
    ds.ReferencedSeriesSequence[0].add_new(0x00081199, "SQ", Sequence())
    ds.add_new(0x00189321, "SQ", Sequence([Dataset()]))  # CT Exposure Sequence, unlisted
    ds[0x00189321].value[0].add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")
    ds.ConceptNameCodeSequence = Sequence([Dataset()])
    ds.ConceptNameCodeSequence[0].CodingSchemeUID = "2.16.840.1.113883.6.96"
    output = run(ds)
    series = output.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == pseudonymous_uid("1.2.3.777", SECRET)
    ref = series.ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == pseudonymous_uid("1.2.3.777.1", SECRET)
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert output.IrradiationEventUID == pseudonymous_uid("1.2.3.999.1", SECRET)
    assert output.ConceptNameCodeSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.96"


def rich_dataset_with(factory: RichInstanceFactory, **attributes: object) -> Dataset:
    ds = factory()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_free_text_inside_a_dummy_sequence_is_replaced_but_its_codes_are_kept(
    make_rich_instance: RichInstanceFactory,
) -> None:
    output = run(make_rich_instance())
    item = output.ContentSequence[0]
    assert item.TextValue == "ANONYMIZED"
    assert item.RelationshipType == "CONTAINS"
    nested = item.ContentSequence[0]
    assert nested.PersonName == "ANONYMIZED"
    assert nested.ConceptNameCodeSequence[0].CodeMeaning == "Person"


def test_the_input_dataset_is_not_changed(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    before = encode(original)
    output = deidentify(original, OPTIONS)
    assert encode(original) == before
    assert output.PatientID != original.PatientID
    assert output.PixelData == original.PixelData


def test_the_same_input_gives_the_same_bytes(make_rich_instance: RichInstanceFactory) -> None:
    data = encode(make_rich_instance())
    assert deidentify_bytes(data, OPTIONS).data == deidentify_bytes(data, OPTIONS).data


# --- consistency across instances, studies, runs and secrets --------------------------------


def test_instances_of_one_study_keep_their_study_and_series_structure(
    make_rich_instance: RichInstanceFactory,
) -> None:
    first = make_rich_instance(series=0, instance=0)
    second = make_rich_instance(series=0, instance=1, referenced_sop_uid=first.SOPInstanceUID)
    other_series = make_rich_instance(series=1, instance=0)
    a, b, c = run(first), run(second), run(other_series)
    assert a.StudyInstanceUID == b.StudyInstanceUID == c.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != c.SeriesInstanceUID
    assert len({a.SOPInstanceUID, b.SOPInstanceUID, c.SOPInstanceUID}) == 3
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.AccessionNumber == b.AccessionNumber


def test_two_studies_of_one_patient_share_the_patient_pseudonym_and_date_shift(
    make_rich_instance: RichInstanceFactory,
) -> None:
    first = run(make_rich_instance(study=0, study_date="20240115"))
    second = run(make_rich_instance(study=1, study_date="20240301"))
    assert first.PatientID == second.PatientID
    assert first.PatientName == second.PatientName
    assert first.StudyInstanceUID != second.StudyInstanceUID
    interval = day(second.StudyDate) - day(first.StudyDate)
    assert interval.days == (date(2024, 3, 1) - date(2024, 1, 15)).days
    other = run(make_rich_instance(patient=PatientSpec(name="ROE^RICHARD", patient_id="MRN-9")))
    assert other.PatientID != first.PatientID


def test_a_different_secret_gives_different_pseudonyms(
    make_rich_instance: RichInstanceFactory,
) -> None:
    original = make_rich_instance()
    one = run(original)
    two = run(original, DeidentifyOptions(secret=b"another-secret"))
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID"):
        assert one[keyword].value != two[keyword].value, keyword
    assert one.SOPInstanceUID != two.SOPInstanceUID


def test_a_patient_without_id_is_keyed_by_name_and_birth_date(
    make_rich_instance: RichInstanceFactory,
) -> None:
    ds = rich_dataset_with(make_rich_instance, PatientID="")
    same = rich_dataset_with(make_rich_instance, PatientID="", StudyInstanceUID="1.2.3.4")
    assert run(ds).PatientID == run(same).PatientID != ""
    ds_anonymous = rich_dataset_with(make_rich_instance, PatientID="", PatientName="")
    output = run(ds_anonymous)
    assert output.PatientID == "" and output.PatientName == ""


# --- dates and the options ------------------------------------------------------------------


def day(value: str) -> date:
    return datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC).date()


def test_dates_are_shifted_by_the_patient_offset_and_times_kept(
    make_rich_instance: RichInstanceFactory,
) -> None:
    output = run(make_rich_instance(study_date="20240115"))
    shift = date_shift_days("MRN-123456", SECRET)
    assert 365 <= shift <= 3650
    expected = (date(2024, 1, 15) - date.resolution * shift).strftime("%Y%m%d")
    for keyword in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"):
        assert output[keyword].value == expected, keyword
    assert output.AcquisitionDateTime == f"{expected}093500.250000+0100"
    assert output.ContentSequence[0].DateTime == f"{expected}101500"
    assert output.StudyTime == "093012"
    assert output.AcquisitionTime == "093500.250"


def test_dates_the_table_does_not_list_are_shifted_too(
    make_rich_instance: RichInstanceFactory,
) -> None:
    ds = make_rich_instance(study_date="20240115")
    ds.StudyUpdateDateTime = "20240116080000"
    ds.ProcedureCodeSequence[0].ProcedureCreationDate = "20240110"
    assert basic_profile_action(pydicom.tag.Tag("StudyUpdateDateTime")) is None
    output = run(ds)
    shift = date.resolution * date_shift_days("MRN-123456", SECRET)
    assert output.StudyUpdateDateTime == (date(2024, 1, 16) - shift).strftime("%Y%m%d080000")
    created = output.ProcedureCodeSequence[0].ProcedureCreationDate
    assert created == (date(2024, 1, 10) - shift).strftime("%Y%m%d")


def test_well_known_uids_of_the_standard_are_not_hashed(
    make_rich_instance: RichInstanceFactory,
) -> None:
    talairach = "1.2.840.10008.1.4.1.1"  # a well-known Frame of Reference UID
    output = run(rich_dataset_with(make_rich_instance, FrameOfReferenceUID=talairach))
    assert output.FrameOfReferenceUID == talairach


def test_retain_longitudinal_keeps_full_dates(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance(study_date="20240115")
    options = DeidentifyOptions(secret=SECRET, retain_longitudinal=True)
    output = run(original, options)
    assert output.StudyDate == output.AcquisitionDate == "20240115"
    assert output.AcquisitionDateTime == original.AcquisitionDateTime
    assert output.PatientBirthDate == ""  # the birth date is never a longitudinal date
    assert output.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [item.CodeValue for item in output.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", "2023"),  # a year-only DT keeps its precision
        ("202401", "202301"),
        ("20240115120000", "20230115120000"),
        ("20240115120000.5-0500", "20230115120000.5-0500"),
        ("2024011", ""),  # unreadable: emptied rather than kept
    ],
)
def test_datetimes_keep_their_precision_and_offset(value: str, expected: str) -> None:
    from dicomflow.processors.deid.engine import _shift_datetime

    assert _shift_datetime(value, date.resolution * 365) == expected


def test_retain_patient_characteristics(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    options = DeidentifyOptions(secret=SECRET, retain_patient_characteristics=True)
    output = run(original, options)
    for keyword in ("PatientSex", *CHARACTERISTICS_KEYWORDS):
        assert output[keyword].value == original[keyword].value, keyword
    assert "PatientComments" not in output  # C in the option column: not kept
    assert "113108" in [item.CodeValue for item in output.DeidentificationMethodCodeSequence]
    without = run(original)
    assert without.PatientSex == ""
    assert all(keyword not in without for keyword in CHARACTERISTICS_KEYWORDS)


def test_retain_device_identity(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    options = DeidentifyOptions(secret=SECRET, retain_device_identity=True)
    output = run(original, options)
    assert output.StationName == original.StationName
    assert output.DeviceSerialNumber == original.DeviceSerialNumber
    assert output.InstitutionName == "ANONYMIZED"  # institution identity is another option
    assert "113109" in [item.CodeValue for item in output.DeidentificationMethodCodeSequence]


def test_repeating_the_deidentification_does_not_repeat_the_record(
    make_rich_instance: RichInstanceFactory,
) -> None:
    twice = run(run(make_rich_instance()))
    codes = [item.CodeValue for item in twice.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert twice.DeidentificationMethod.count("dicomflow") == 1


# --- pydicom's bundled files: odd encodings, compressed pixels ------------------------------


@pytest.mark.parametrize("name", BUNDLED_FILES)
def test_bundled_files_keep_pixels_and_transfer_syntax(name: str) -> None:
    data = bundled(name)
    original = read(data)
    result = deidentify_bytes(data, OPTIONS)
    output = read(result.data)
    assert output.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert result.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
    assert output.SOPClassUID == original.SOPClassUID
    assert output.SOPInstanceUID == pseudonymous_uid(original.SOPInstanceUID, SECRET)
    assert result.sop_instance_uid == output.SOPInstanceUID
    assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
    if "PixelData" in original:
        assert output.PixelData == original.PixelData
    assert_no_original_values(original, output, result.data)
    assert [elem.tag for elem in walk(output) if elem.tag.is_private] == []
    assert output.PatientIdentityRemoved == "YES"


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_compressed_pixels_still_decode_to_the_same_image(name: str) -> None:
    pytest.importorskip("PIL")
    data = bundled(name)
    original, output = read(data), read(deidentify_bytes(data, OPTIONS).data)
    try:
        expected = original.pixel_array
    except Exception as exc:  # no decoder plugin for this syntax installed
        pytest.skip(f"cannot decode the original: {exc}")
    assert (output.pixel_array == expected).all()


def test_rtplan_references_keep_pointing_at_the_same_pseudonyms() -> None:
    data = bundled("rtplan.dcm")
    original, output = read(data), read(deidentify_bytes(data, OPTIONS).data)
    before = original.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    after = output.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    assert after == pseudonymous_uid(before, SECRET)
    beam = output.BeamSequence[0]  # identifying attributes nested in the beams
    assert original.BeamSequence[0].DeviceSerialNumber == "9999"
    assert beam.DeviceSerialNumber == "ANONYMIZED"
    assert beam.InstitutionName == "ANONYMIZED"
    assert "InstitutionalDepartmentName" not in beam


def test_a_dataset_without_file_meta_is_written_back_with_one() -> None:
    data = bundled("rtstruct.dcm")  # no preamble, no file meta, implicit VR
    original = read_any(data)
    result = deidentify_bytes(data, OPTIONS)
    output = read(result.data)
    assert output.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert output.SOPInstanceUID == pseudonymous_uid(original.SOPInstanceUID, SECRET)
    assert_no_original_values(original, output, result.data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no valid"),
        (b"not dicom at all" * 10, "no valid|not a readable"),
    ],
)
def test_unusable_bytes_raise_a_deidentification_error(data: bytes, message: str) -> None:
    with pytest.raises(DeidentificationError, match=message):
        deidentify_bytes(data, OPTIONS)


def test_an_object_without_sop_instance_uid_cannot_be_keyed(
    make_rich_instance: RichInstanceFactory,
) -> None:
    ds = make_rich_instance()
    del ds.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)  # not enforcing the file format: no SOP UID needed
    with pytest.raises(DeidentificationError, match="SOPInstanceUID"):
        deidentify_bytes(buffer.getvalue(), OPTIONS)


# --- the processor, end to end --------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> ProcessorContext:
    return ProcessorContext(
        settings=Settings(data_dir=tmp_path, deid_secret=SECRET.decode()),
        bus=EmbeddedBus(tmp_path / "events"),
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        spool=FilesystemBlobStore(tmp_path / "spool"),
    )


def stored_original(context: ProcessorContext, ds: Dataset) -> ObjectStored:
    data = encode(ds)
    identity = InstanceIdentity(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
    )
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    blob = context.blobs.put(Namespace.ORIGINAL, key, data)
    return ObjectStored(
        identity=identity,
        blob=blob,
        source=Source(kind=SourceKind.DIMSE, calling_ae="MODALITY1", address="127.0.0.1"),
        received_at=datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
    )


def record_of(event: ObjectStored, offset: int = 0) -> Record:
    return Record(
        topic="dicomflow.stored",
        partition=0,
        offset=offset,
        key=event.identity.study_instance_uid,
        value=encode_event(event),
        timestamp=0.0,
    )


def test_processor_stores_and_announces_the_deidentified_copy(
    context: ProcessorContext, make_rich_instance: RichInstanceFactory
) -> None:
    original = make_rich_instance()
    event = stored_original(context, original)
    processor = DeidentifyProcessor(context)
    [out, metadata_out] = processor.handle(record_of(event))

    new_study = pseudonymous_uid(original.StudyInstanceUID, SECRET)
    new_series = pseudonymous_uid(original.SeriesInstanceUID, SECRET)
    new_sop = pseudonymous_uid(original.SOPInstanceUID, SECRET)
    assert out.topic == context.topic(Topic.DEIDENTIFIED) == "dicomflow.deidentified"
    assert out.key == new_study
    announced = decode_event(out.value, ObjectStored)
    assert announced.identity == InstanceIdentity(
        study_instance_uid=new_study,
        series_instance_uid=new_series,
        sop_instance_uid=new_sop,
        sop_class_uid=original.SOPClassUID,
        transfer_syntax_uid=original.file_meta.TransferSyntaxUID,
    )
    assert announced.blob.namespace == Namespace.DEIDENTIFIED
    assert announced.blob.key == instance_key(new_study, new_series, new_sop)
    assert announced.source == event.source
    assert announced.received_at == event.received_at
    assert announced.original_sop_instance_uid == original.SOPInstanceUID

    data = context.blobs.get_verified(announced.blob)
    assert announced.blob.sha256 == sha256_of(data)
    output = read(data)
    assert output.SOPInstanceUID == new_sop
    assert output.PixelData == original.PixelData
    assert_no_original_values(original, output, data)

    # The copy's metadata, for the index: the copy's identity and values, none of the original's.
    assert metadata_out.topic == context.topic(Topic.METADATA) and metadata_out.key == new_study
    extracted = decode_event(metadata_out.value, MetadataExtracted)
    assert extracted.namespace == Namespace.DEIDENTIFIED and extracted.blob == announced.blob
    assert extracted.identity == announced.identity
    assert extracted.dicom_json["0020000D"]["Value"] == [new_study]
    assert original.SOPInstanceUID not in metadata_out.value.decode()
    assert str(original.PatientName) not in metadata_out.value.decode()

    producer = context.bus.producer()  # the record is publishable as is
    producer.publish_many([out])
    [published] = context.bus.read(context.topic(Topic.DEIDENTIFIED))
    assert published.key == new_study and published.value == out.value
    producer.close()
    context.bus.close()


def test_processor_drops_what_it_read_and_wrote_from_the_page_cache(
    context: ProcessorContext, make_rich_instance: RichInstanceFactory, tmp_path: Path
) -> None:
    require_droppable_pages(tmp_path)
    event = stored_original(context, make_rich_instance())
    original = context.blobs.local_path(event.blob.namespace, event.blob.key)
    assert original is not None
    context.blobs.get(event.blob.namespace, event.blob.key)
    assert resident_pages(original) > 0
    processor = DeidentifyProcessor(context)
    record = record_of(event)
    with context.blobs.batch():  # as the runtime runs a batch
        [out, _] = processor.handle(record)
    copy = decode_event(out.value, ObjectStored).blob
    written = context.blobs.local_path(copy.namespace, copy.key)
    assert written is not None and resident_pages(written) > 0
    processor.after_commit([record])  # the copy is durable and announced
    assert resident_pages(original) == 0 and resident_pages(written) == 0
    side_file = written.with_name(written.name + ".sha256")  # where attributes are missing
    assert not side_file.exists() or resident_pages(side_file) == 0  # the batch's end
    assert context.blobs.get_verified(copy)  # still there, read from disk


def test_processor_is_idempotent(
    context: ProcessorContext, make_rich_instance: RichInstanceFactory
) -> None:
    event = stored_original(context, make_rich_instance())
    processor = DeidentifyProcessor(context)
    first, _ = processor.handle(record_of(event))
    second, _ = processor.handle(record_of(event, offset=1))
    one, two = decode_event(first.value, ObjectStored), decode_event(second.value, ObjectStored)
    assert one.blob == two.blob
    assert list(context.blobs.keys(Namespace.DEIDENTIFIED)) == [one.blob.key]


def test_processor_ignores_objects_that_are_not_originals(
    context: ProcessorContext, make_rich_instance: RichInstanceFactory
) -> None:
    event = stored_original(context, make_rich_instance())
    copy_event = event.model_copy(
        update={"blob": event.blob.model_copy(update={"namespace": Namespace.DEIDENTIFIED})}
    )
    assert DeidentifyProcessor(context).handle(record_of(copy_event)) == []
    assert list(context.blobs.keys(Namespace.DEIDENTIFIED)) == []


def test_processor_turns_unreadable_objects_into_poison(context: ProcessorContext) -> None:
    blob = context.blobs.put(Namespace.ORIGINAL, "1.2/1.2.3/1.2.3.4.dcm", b"garbage" * 50)
    event = ObjectStored(
        identity=InstanceIdentity(
            study_instance_uid="1.2",
            series_instance_uid="1.2.3",
            sop_instance_uid="1.2.3.4",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        ),
        blob=blob,
        source=Source(kind=SourceKind.IMPORT, path="/import/x.dcm"),
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(PoisonEvent, match=r"original/1\.2/1\.2\.3/1\.2\.3\.4\.dcm"):
        DeidentifyProcessor(context).handle(record_of(event))


def test_processor_turns_a_malformed_event_into_poison(context: ProcessorContext) -> None:
    record = Record("dicomflow.stored", 0, 7, "k", b'{"type": "object.received"}', 0.0)
    with pytest.raises(PoisonEvent, match=r"not an object\.stored event"):
        DeidentifyProcessor(context).handle(record)


def test_processor_is_registered_through_the_plugin_hook() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(deidentify_module)
    registered = [cls for classes in manager.hook.register_processors() for cls in classes]
    assert registered == [DeidentifyProcessor]
    assert DeidentifyProcessor.name == "deidentify"
    assert DeidentifyProcessor.topics == (Topic.STORED,)


def test_the_original_preamble_is_not_copied(make_rich_instance: RichInstanceFactory) -> None:
    original = make_rich_instance()
    original.preamble = b"II*\x00" + b"DOE^JANE MRN-123456".ljust(124, b"\x00")
    buffer = io.BytesIO()
    original.save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue()[:4] == b"II*\x00"
    result = deidentify_bytes(buffer.getvalue(), OPTIONS)
    assert result.data[:132] == bytes(128) + b"DICM"
