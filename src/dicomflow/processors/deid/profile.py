"""The PS3.15 Annex E Basic Application Level Confidentiality Profile as data, and its options.

The per-attribute actions of Table E.1-1 come from the ``dicom-anonymizer`` package
(KitwareMedical), which ships the table of each DICOM release generated from the standard's
own DocBook source; `TABLE_EDITION` names the one used. That package is used for this table
only: the engine applying it is `dicomflow.processors.deid.engine`.

The table's option columns are not in that package; the attributes that the options retain
(the K entries of the columns) are listed below by keyword. Entries marked C (clean) in an
option column are *not* retained: cleaning free text is not something we can do reliably, so
they keep their Basic Profile action.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag, Tag

from dicomflow.kernel.secrets import deid_secret
from dicomflow.kernel.settings import Settings
from dicomflow.processors.deid.pseudonyms import (
    DEFAULT_UID_ROOT,
    secret_bytes,
    uid_digits_under,
)

TABLE_EDITION = "dicomfields_2026c"


class Action(StrEnum):
    """The action codes of PS3.15 Table E.1-1."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    EMPTY_OR_DUMMY = "Z/D"
    REMOVE_OR_EMPTY = "X/Z"
    REMOVE_OR_DUMMY = "X/D"
    REMOVE_OR_EMPTY_OR_DUMMY = "X/Z/D"
    REMOVE_OR_EMPTY_OR_UID = "X/Z/U*"


_CATEGORY_ACTIONS = {
    "D_TAGS": Action.DUMMY,
    "Z_TAGS": Action.EMPTY,
    "X_TAGS": Action.REMOVE,
    "U_TAGS": Action.UID,
    "Z_D_TAGS": Action.EMPTY_OR_DUMMY,
    "X_Z_TAGS": Action.REMOVE_OR_EMPTY,
    "X_D_TAGS": Action.REMOVE_OR_DUMMY,
    "X_Z_D_TAGS": Action.REMOVE_OR_EMPTY_OR_DUMMY,
    "X_Z_U_STAR_TAGS": Action.REMOVE_OR_EMPTY_OR_UID,
}


@dataclass(frozen=True)
class MaskedRule:
    """A repeating-group row of the table, such as (60xx,3000) Overlay Data."""

    group: int
    element: int
    group_mask: int
    element_mask: int
    action: Action

    def matches(self, tag: BaseTag) -> bool:
        return (
            tag.group & self.group_mask == self.group & self.group_mask
            and tag.element & self.element_mask == self.element & self.element_mask
        )


def _load_table() -> tuple[dict[BaseTag, Action], tuple[MaskedRule, ...]]:
    categories: dict[str, list[tuple[int, ...]]] = dicom_anonymization_database_selector(
        TABLE_EDITION
    )
    exact: dict[BaseTag, Action] = {}
    masked: list[MaskedRule] = []
    for category, action in _CATEGORY_ACTIONS.items():
        for entry in categories[category]:
            if len(entry) == 2:
                exact[Tag(entry[0], entry[1])] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append(MaskedRule(group, element, group_mask, element_mask, action))
    if len(exact) < 500:  # guards against a table edition that silently lost its rows
        raise RuntimeError(f"PS3.15 table {TABLE_EDITION} has only {len(exact)} rows")
    return exact, tuple(masked)


BASIC_PROFILE, BASIC_PROFILE_MASKED = _load_table()


def basic_profile_action(tag: BaseTag) -> Action | None:
    """The Basic Profile action of an attribute, or None if the table does not list it."""
    action = BASIC_PROFILE.get(tag)
    if action is None:
        for rule in BASIC_PROFILE_MASKED:
            if rule.matches(tag):
                return rule.action
    return action


def _tags(keywords: Iterable[str]) -> frozenset[BaseTag]:
    tags = set()
    for keyword in keywords:
        value = tag_for_keyword(keyword)
        if value is None:
            raise RuntimeError(f"unknown DICOM keyword {keyword!r} in an option table")
        tags.add(Tag(value))
    return frozenset(tags)


# K entries of the "Rtn. Pat. Chars. Opt." column.
PATIENT_CHARACTERISTICS_KEYWORDS = (
    "PatientAge",
    "PatientSex",
    "PatientSexNeutered",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "EthnicGroupCodeSequence",
    "PregnancyStatus",
    "SmokingStatus",
)

# K entries of the "Rtn. Dev. Id. Opt." column.
DEVICE_IDENTITY_KEYWORDS = (
    "StationName",
    "StationAETitle",
    "DeviceSerialNumber",
    "DeviceUID",
    "DeviceLabel",
    "DeviceDescription",
    "LongDeviceDescription",
    "DeviceAlternateIdentifier",
    "ManufacturerDeviceIdentifier",
    "ManufacturerDeviceClassUID",
    "UDISequence",
    "UniqueDeviceIdentifier",
    "DetectorID",
    "XRayDetectorID",
    "XRayDetectorLabel",
    "GantryID",
    "GeneratorID",
    "PlateID",
    "CassetteID",
    "SourceSerialNumber",
    "LensSerialNumber",
    "SecondaryCaptureDeviceID",
    "HardcopyCreationDeviceID",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedStationNameCodeSequence",
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledStationNameCodeSequence",
)

# Temporal attributes outside the DA/DT/TM VRs that the Full Dates option keeps.
LONGITUDINAL_EXTRA_KEYWORDS = ("TimezoneOffsetFromUTC",)

# Never retained by a temporal option: the birth date identifies the patient (Patient's Age is
# what the Patient Characteristics option keeps instead).
NEVER_RETAINED_TEMPORAL_KEYWORDS = ("PatientBirthDate", "PatientBirthTime")

PATIENT_CHARACTERISTICS_TAGS = _tags(PATIENT_CHARACTERISTICS_KEYWORDS)
DEVICE_IDENTITY_TAGS = _tags(DEVICE_IDENTITY_KEYWORDS)
LONGITUDINAL_EXTRA_TAGS = _tags(LONGITUDINAL_EXTRA_KEYWORDS)
NEVER_RETAINED_TEMPORAL_TAGS = _tags(NEVER_RETAINED_TEMPORAL_KEYWORDS)


class DeidentificationMethodCode(StrEnum):
    """CID 7050 De-identification Method codes (scheme DCM) of the profile and its options."""

    BASIC_PROFILE = "113100"
    RETAIN_LONGITUDINAL_FULL_DATES = "113106"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "113107"
    RETAIN_PATIENT_CHARACTERISTICS = "113108"
    RETAIN_DEVICE_IDENTITY = "113109"


CODE_MEANINGS = {
    DeidentificationMethodCode.BASIC_PROFILE: "Basic Application Confidentiality Profile",
    DeidentificationMethodCode.RETAIN_LONGITUDINAL_FULL_DATES: (
        "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    DeidentificationMethodCode.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    DeidentificationMethodCode.RETAIN_PATIENT_CHARACTERISTICS: (
        "Retain Patient Characteristics Option"
    ),
    DeidentificationMethodCode.RETAIN_DEVICE_IDENTITY: "Retain Device Identity Option",
}


@dataclass(frozen=True, kw_only=True)
class DeidentifyOptions:
    """How to de-identify: the pseudonym key and root, and which profile options apply.

    `retain_longitudinal` keeps dates and times as they are (Full Dates option, 113106);
    without it, dates are shifted back by a per-patient keyed number of days and times are
    kept (Modified Dates option, 113107).
    """

    secret: bytes = field(repr=False)
    uid_root: str = DEFAULT_UID_ROOT
    retain_longitudinal: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False

    def __post_init__(self) -> None:
        secret_bytes(self.secret)
        uid_digits_under(self.uid_root)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            secret=deid_secret(settings),
            uid_root=settings.deid_uid_root,
            retain_longitudinal=settings.deid_retain_longitudinal,
            retain_patient_characteristics=settings.deid_retain_patient_characteristics,
            retain_device_identity=settings.deid_retain_device_identity,
        )

    @property
    def retained_tags(self) -> frozenset[BaseTag]:
        """Attributes kept as they are because of the options (besides dates and times)."""
        tags: set[BaseTag] = set()
        if self.retain_patient_characteristics:
            tags |= PATIENT_CHARACTERISTICS_TAGS
        if self.retain_device_identity:
            tags |= DEVICE_IDENTITY_TAGS
        if self.retain_longitudinal:
            tags |= LONGITUDINAL_EXTRA_TAGS
        return frozenset(tags)

    @property
    def method_codes(self) -> tuple[DeidentificationMethodCode, ...]:
        """The profile and option codes that describe what these options do."""
        codes = [DeidentificationMethodCode.BASIC_PROFILE]
        codes.append(
            DeidentificationMethodCode.RETAIN_LONGITUDINAL_FULL_DATES
            if self.retain_longitudinal
            else DeidentificationMethodCode.RETAIN_LONGITUDINAL_MODIFIED_DATES
        )
        if self.retain_patient_characteristics:
            codes.append(DeidentificationMethodCode.RETAIN_PATIENT_CHARACTERISTICS)
        if self.retain_device_identity:
            codes.append(DeidentificationMethodCode.RETAIN_DEVICE_IDENTITY)
        return tuple(codes)
