"""Fixtures of the processor tests: identifying datasets to de-identify."""

from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomflow.synthetic import PatientSpec, make_instance, uid_for

RichInstanceFactory = Callable[..., Dataset]


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def rich_instance(
    patient: PatientSpec | None = None,
    study: int = 0,
    series: int = 0,
    instance: int = 0,
    referenced_sop_uid: str | None = None,
    study_date: str = "20240115",
) -> Dataset:
    """A CT instance carrying most kinds of identifying data Table E.1-1 deals with.

    Names, IDs, addresses, dates and times, device identity, UIDs at the top level and inside
    (nested) sequences, free text in an SR-style content tree, private elements at two levels
    and an overlay.
    """
    patient = patient or PatientSpec(name="DOE^JANE^Q", patient_id="MRN-123456")
    ds = make_instance(patient, study, series, instance, study_date=study_date)
    ds.file_meta.SourceApplicationEntityTitle = "CT_WEST_2"
    ds.AccessionNumber = f"ACC-{patient.patient_id}-{study}"
    ds.StudyID = f"S{study + 1}"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = f"AXIAL {series + 1}"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.InstitutionName = "SPRINGFIELD GENERAL HOSPITAL"
    ds.StationName = "CTWEST2"
    ds.OperatorsName = "OPERATOR^ONE"
    ds.Manufacturer = "ACME MEDICAL"
    ds.PatientBirthTime = "071500"
    ds.PatientAge = "054Y"
    ds.PatientSize = "1.72"
    ds.PatientWeight = "81.5"
    ds.EthnicGroup = "NORDIC"
    ds.PatientAddress = "12 ELM STREET, SPRINGFIELD"
    ds.PatientTelephoneNumbers = "555-0199"
    ds.PatientMotherBirthName = "SMITH^MARTHA"
    ds.PatientComments = "Patient Jane Doe prefers morning slots"
    ds.IssuerOfPatientID = "SPRINGFIELD GENERAL"
    ds.OtherPatientIDs = "OTHER-998877"
    ds.OtherPatientIDsSequence = Sequence(
        [_item(PatientID="OTHER-998877", IssuerOfPatientID="COUNTY CLINIC")]
    )
    ds.InstitutionAddress = "1 HOSPITAL ROAD, SPRINGFIELD"
    ds.InstitutionalDepartmentName = "RADIOLOGY WEST WING"
    ds.PerformingPhysicianName = "CUDDY^LISA"
    ds.NameOfPhysiciansReadingStudy = "WILSON^JAMES"
    ds.PhysiciansOfRecord = "FOREMAN^ERIC"
    ds.RequestingPhysician = "CHASE^ROBERT"
    ds.DeviceSerialNumber = "SN-44-XY-1234"
    ds.StudyTime = "093012"
    ds.AcquisitionDate = study_date
    ds.AcquisitionTime = "093500.250"
    ds.AcquisitionDateTime = f"{study_date}093500.250000+0100"
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "094000"
    ds.PerformedProcedureStepStartDate = study_date
    ds.PerformedProcedureStepID = "PPS-777"
    ds.ProtocolName = "CHEST ROUTINE DR HOUSE"
    ds.RequestAttributesSequence = Sequence(
        [
            _item(
                RequestedProcedureID="RP-5566",
                ScheduledProcedureStepID="SPS-3344",
                AccessionNumber=str(ds.AccessionNumber),
            )
        ]
    )
    ds.ProcedureCodeSequence = Sequence(
        [_item(CodeValue="CTCHEST", CodingSchemeDesignator="99LOCAL", CodeMeaning="CT chest")]
    )
    ref_uid = referenced_sop_uid or uid_for("ref-image", patient.patient_id, study, series)
    ds.ReferencedImageSequence = Sequence(
        [_item(ReferencedSOPClassUID=str(ds.SOPClassUID), ReferencedSOPInstanceUID=ref_uid)]
    )
    ds.SourceImageSequence = Sequence(
        [_item(ReferencedSOPClassUID=str(ds.SOPClassUID), ReferencedSOPInstanceUID=ref_uid)]
    )
    nested = _item(
        RelationshipType="CONTAINS",
        ValueType="PNAME",
        PersonName="HADLEY^REMY",
        ConceptNameCodeSequence=Sequence(
            [_item(CodeValue="121008", CodingSchemeDesignator="DCM", CodeMeaning="Person")]
        ),
    )
    nested.add_new(0x00111010, "LO", "NESTED PRIVATE DOE")
    nested.add_new(0x00110010, "LO", "NESTED CREATOR")
    ds.ContentSequence = Sequence(
        [
            _item(
                RelationshipType="CONTAINS",
                ValueType="TEXT",
                TextValue="Findings discussed with Jane Doe and Dr House",
                DateTime=f"{study_date}101500",
                UID=uid_for("content", patient.patient_id, study),
                ContentSequence=Sequence([nested]),
            )
        ]
    )
    ds.add_new(0x60000010, "US", 2)
    ds.add_new(0x60000011, "US", 2)
    ds.add_new(0x60003000, "OW", b"\x01\x00")
    ds.add_new(0x60004000, "LT", "overlay drawn by Dr House")
    return ds


@pytest.fixture
def make_rich_instance() -> RichInstanceFactory:
    return rich_instance
