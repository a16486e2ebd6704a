"""The DICOM information model levels and which attributes belong to which level.

Each attribute of an instance is kept once, at its level: patient attributes on the patient,
study attributes on the study (PS3.4 C.6.1.1, PS3.18 10.6), equipment and acquisition
attributes on the series, everything else on the instance only. A level keeps the values of
the latest instance indexed for it (last writer wins).

For an attribute that no list below names, the group decides: 0010 -> patient,
0032 -> study, 0008 and 0018 -> series (when not a sequence), others -> instance.
"""

from enum import StrEnum
from functools import lru_cache

from dicomflow.indexer.values import ValueKind, keyword_of_tag, kind_of_keyword, tag_of_keyword


class Level(StrEnum):
    """A query/retrieve level, from the top of the hierarchy down."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.INSTANCE: 3}

PATIENT_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "TypeOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "EthnicGroup",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientSpeciesCodeSequence",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "ResponsiblePerson",
        "ResponsiblePersonRole",
        "ResponsibleOrganization",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "QualityControlSubject",
    }
)

STUDY_KEYWORDS = frozenset(
    {
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "ReferringPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "ProcedureCodeSequence",
        "ReferencedStudySequence",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientSexNeutered",
        "Occupation",
        "AdditionalPatientHistory",
        "MedicalAlerts",
        "Allergies",
        "SmokingStatus",
        "PregnancyStatus",
        "AdmissionID",
        "ReasonForVisit",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    }
)

SERIES_KEYWORDS = frozenset(
    {
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "Laterality",
        "ProtocolName",
        "PatientPosition",
        "OperatorsName",
        "PerformingPhysicianName",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription",
        "RequestAttributesSequence",
        "ReferencedPerformedProcedureStepSequence",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "SoftwareVersions",
        "NumberOfSeriesRelatedInstances",
    }
)

# Attributes of the instance only: they vary from one instance of a series to the next.
INSTANCE_KEYWORDS = frozenset(
    {
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "InstanceCreatorUID",
        "ContentDate",
        "ContentTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "AcquisitionNumber",
        "ImageType",
        "ImageComments",
        "ReferencedImageSequence",
        "SourceImageSequence",
        "DerivationDescription",
        "DerivationCodeSequence",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "IrradiationEventUID",
        "AnatomicRegionSequence",
        "SliceLocation",
        "TriggerTime",
        "NominalCardiacTriggerDelayTime",
        "DataCollectionDiameter",
        "ReconstructionDiameter",
        "ExposureTime",
        "XRayTubeCurrent",
        "Exposure",
        "ExposureInuAs",
        "CTDIvol",
        "EchoNumbers",
        "TemporalPositionIdentifier",
        "NumberOfTemporalPositions",
        "InStackPositionNumber",
        "ImagesInAcquisition",
        "WindowCenter",
        "WindowWidth",
        "WindowCenterWidthExplanation",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "SpecificCharacterSet",
        "TimezoneOffsetFromUTC",
    }
)

# Present at every level's document (they tell how to read the other values).
ALL_LEVELS_KEYWORDS = frozenset({"SpecificCharacterSet", "TimezoneOffsetFromUTC"})

# Attributes the index computes; they are not taken from instances.
COMPUTED_KEYWORDS: dict[str, Level] = {
    "ModalitiesInStudy": Level.STUDY,
    "SOPClassesInStudy": Level.STUDY,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
    "NumberOfPatientRelatedStudies": Level.PATIENT,
    "NumberOfPatientRelatedSeries": Level.PATIENT,
    "NumberOfPatientRelatedInstances": Level.PATIENT,
    "InstanceAvailability": Level.INSTANCE,
}

# The unique key of each level, always returned (PS3.18 10.6.3, PS3.4 C.6.1.1).
UID_KEYWORDS: dict[Level, str] = {
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}

# Default QIDO-RS return attributes of each level (PS3.18 Tables 10.6.3-3 to 10.6.3-5) and,
# for the patient level (C-FIND only), the required keys of PS3.4 C.6.1.1.2.
DEFAULT_RETURN_KEYWORDS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    Level.STUDY: (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "SpecificCharacterSet",
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "InstanceAvailability",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    ),
    Level.INSTANCE: (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

# Default return attributes left out when an entity has no value for them (the others come
# back empty, as C-FIND return keys do).
OMIT_IF_ABSENT = frozenset(
    {
        "SpecificCharacterSet",
        "TimezoneOffsetFromUTC",
        "IssuerOfPatientID",
        "StudyDescription",
        "SeriesDescription",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "NumberOfFrames",
    }
)

_GROUP_DEFAULT = {0x0010: Level.PATIENT, 0x0032: Level.STUDY}
_SERIES_GROUPS = frozenset({0x0008, 0x0018})


@lru_cache(maxsize=8192)
def level_of_keyword(keyword: str) -> Level:
    """The level an attribute is kept at (see the module docstring for the rule)."""
    if keyword in INSTANCE_KEYWORDS:
        return Level.INSTANCE
    if keyword in COMPUTED_KEYWORDS:
        return COMPUTED_KEYWORDS[keyword]
    if keyword in PATIENT_KEYWORDS:
        return Level.PATIENT
    if keyword in STUDY_KEYWORDS:
        return Level.STUDY
    if keyword in SERIES_KEYWORDS:
        return Level.SERIES
    tag = tag_of_keyword(keyword)
    if tag is None:
        return Level.INSTANCE
    group = tag >> 16
    if group in _GROUP_DEFAULT:
        return _GROUP_DEFAULT[group]
    if group in _SERIES_GROUPS and kind_of_keyword(keyword) is not ValueKind.SEQUENCE:
        return Level.SERIES
    return Level.INSTANCE


@lru_cache(maxsize=8192)
def level_of_tag(tag: int) -> Level:
    """The level of a tag; private, unknown and group-length tags are instance-only."""
    keyword = keyword_of_tag(tag)
    if not keyword or tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
        return Level.INSTANCE
    return level_of_keyword(keyword)
