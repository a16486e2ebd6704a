"""Applying the Basic Profile to one dataset, in memory, without touching the pixel data.

One recursive pass over the dataset and every sequence item decides each attribute's fate:

1. private attributes and (deprecated) group lengths are removed;
2. PatientID, PatientName and AccessionNumber become keyed-hash pseudonyms (so one patient
   keeps one pseudonym across studies);
3. every date (DA, DT), listed in the table or not, is kept (Full Dates option) or moved back
   by a per-patient keyed number of days (Modified Dates option); the birth date is emptied;
4. attributes listed in PS3.15 Table E.1-1: times are kept (a whole-day shift does not change
   them), attributes retained by an enabled option are kept, and otherwise X removes, Z
   empties, D puts a dummy value, U replaces a UID by its keyed hash;
5. UIDs the table does not list are hashed too unless they name a class, a transfer syntax or
   a coding scheme; the standard's own UIDs (1.2.840.10008.*) are never hashed; everything
   else is kept.

The conditional actions need to know an attribute's type in the IOD, which the table does not
say; without it: Z/D, X/D and X/Z/D keep an empty value empty and put a dummy otherwise, X/Z
empties, X/Z/U* keeps a sequence and hashes the UIDs inside. A sequence whose action is D or a
conditional D is kept with its items cleaned the same way, and the free text inside it
(LT, ST, UT, UC, PN) is replaced by a dummy.
"""

import copy
import io
import logging
from dataclasses import dataclass
from datetime import date, timedelta

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomflow.kernel.uids import is_valid_uid
from dicomflow.processors.deid.exceptions import DeidentificationError
from dicomflow.processors.deid.profile import (
    CODE_MEANINGS,
    NEVER_RETAINED_TEMPORAL_TAGS,
    Action,
    DeidentifyOptions,
    basic_profile_action,
)
from dicomflow.processors.deid.pseudonyms import (
    accession_pseudonym,
    date_shift_days,
    patient_pseudonym_id,
    patient_pseudonym_name,
    pseudonymous_uid,
)
from dicomflow.processors.deid.writer import encode_part10

logger = logging.getLogger(__name__)

DEIDENTIFICATION_METHOD = "dicomflow: PS3.15 E.1 Basic Profile, keyed-hash pseudonyms"
CODING_SCHEME = "DCM"
DUMMY_TEXT = "ANONYMIZED"
DUMMY_AGE = "000D"
DUMMY_URI = "urn:anonymized"
DUMMY_BYTES = b"\x00\x00"

PATIENT_ID = Tag("PatientID")
PATIENT_NAME = Tag("PatientName")
ACCESSION_NUMBER = Tag("AccessionNumber")
DEIDENTIFICATION_METHOD_TAG = Tag("DeidentificationMethod")
STANDARD_UID_PREFIX = "1.2.840.10008."
_PSEUDONYMISED = frozenset({PATIENT_ID, PATIENT_NAME, ACCESSION_NUMBER})

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "PN"})
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
_DATE_VRS = frozenset({"DA", "DT"})
# UIDs that name something public rather than identify an instance: never hashed.
_PUBLIC_UID_KEYWORDS = frozenset(
    {
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
    }
)
# (implicit VR, little endian) of a dataset read without file meta -> its transfer syntax.
_ENCODING_SYNTAX: dict[tuple[bool | None, bool | None], UID] = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
# File meta attributes that name the sending and receiving systems.
_FILE_META_REMOVED = tuple(
    Tag(keyword)
    for keyword in (
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "SourcePresentationAddress",
        "SendingPresentationAddress",
        "ReceivingPresentationAddress",
        "PrivateInformationCreatorUID",
        "PrivateInformation",
    )
)


@dataclass(frozen=True)
class DeidentifiedInstance:
    """The encoded de-identified object and the (pseudonymous) UIDs that key it."""

    data: bytes
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class _Run:
    """What one de-identification needs besides the dataset."""

    options: DeidentifyOptions
    retained: frozenset[BaseTag]
    shift: timedelta | None  # None: dates are kept (Full Dates option)


def deidentify(ds: Dataset, options: DeidentifyOptions) -> Dataset:
    """A de-identified copy of `ds`; `ds` itself is not changed. Pixel data is shared as is."""
    out = copy.deepcopy(ds)
    deidentify_in_place(out, options)
    return out


def deidentify_in_place(ds: Dataset, options: DeidentifyOptions) -> None:
    """De-identify `ds` itself (what `deidentify` does to its copy)."""
    patient_key = patient_key_of(ds)
    shift: timedelta | None = None
    if not options.retain_longitudinal:
        shift_key = patient_key or str(ds.get("StudyInstanceUID", ""))
        shift = timedelta(days=date_shift_days(shift_key, options.secret))
    run = _Run(options=options, retained=options.retained_tags, shift=shift)
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        logger.warning(
            "SOP %s has burned-in annotation; pixel data is copied as is",
            ds.get("SOPInstanceUID", "?"),
        )
    _clean(ds, run, patient_key, scrub_free_text=False)
    if patient_key:
        ds.PatientID = patient_pseudonym_id(patient_key, options.secret)
        ds.PatientName = patient_pseudonym_name(patient_key, options.secret)
    else:
        ds.PatientID = ""
        ds.PatientName = ""
    _mark(ds, options)
    _clean_file_meta(ds)


def deidentify_bytes(data: bytes, options: DeidentifyOptions) -> DeidentifiedInstance:
    """Parse a DICOM object, de-identify it and encode it again with the same transfer syntax.

    Raises DeidentificationError when the bytes are not a readable dataset or lack one of the
    UIDs that key an instance.
    """
    ds = _read(data)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not is_valid_uid(str(ds.get(keyword, ""))):
            raise DeidentificationError(
                f"the object has no valid {keyword} ({str(ds.get(keyword, ''))[:80]!r}); it "
                "cannot be keyed, fix it at the source and send it again"
            )
    try:
        deidentify_in_place(ds, options)
        data = encode_part10(ds)
    except DeidentificationError:
        raise
    except Exception as exc:  # malformed content surfaces lazily, element by element
        raise DeidentificationError(
            f"the object could not be de-identified ({type(exc).__name__}: {exc})"
        ) from exc
    return DeidentifiedInstance(
        data=data,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
    )


def patient_key_of(ds: Dataset) -> str:
    """What identifies the patient for the pseudonyms: PatientID, else name and birth date.

    Empty when the dataset has neither an ID nor a name: the pseudonyms are then left empty
    rather than merging every anonymous patient into one.
    """
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if patient_id:
        return patient_id
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name\0{name}\0{str(ds.get('PatientBirthDate', '') or '').strip()}"
    return ""


def _read(data: bytes) -> Dataset:
    try:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            # A dataset stored without the Part 10 header (no preamble, no file meta): it is
            # written back with one, in the encoding it was read with.
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise DeidentificationError(
            f"the object is not a readable DICOM dataset ({type(exc).__name__}: {exc})"
        ) from exc
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        syntax = _ENCODING_SYNTAX.get(ds.original_encoding)
        if syntax is None:
            raise DeidentificationError("the object's transfer syntax cannot be determined")
        meta.TransferSyntaxUID = syntax
    return ds


def _clean(ds: Dataset, run: _Run, patient_key: str, *, scrub_free_text: bool) -> None:
    item_patient_id = str(ds.get("PatientID", "") or "").strip()
    if item_patient_id:
        patient_key = item_patient_id
    for tag in list(ds.keys()):
        if tag.is_private or (tag.element == 0 and tag.group != 0x0002):
            del ds[tag]
            continue
        if tag not in _PSEUDONYMISED:
            vr = _raw_vr(ds, tag)
            if vr is not None and _left_as_is(tag, vr, run, scrub_free_text=scrub_free_text):
                # Never decoded: the writer copies the element's bytes as they came. Most
                # attributes are kept, and decoding and encoding each of them was half of the
                # cost of a de-identification.
                continue
        elem = ds[tag]
        secret = run.options.secret
        if tag == PATIENT_ID:
            elem.value = patient_pseudonym_id(patient_key, secret) if patient_key else ""
            continue
        if tag == PATIENT_NAME:
            elem.value = patient_pseudonym_name(patient_key, secret) if patient_key else ""
            continue
        if tag == ACCESSION_NUMBER:
            accession_number = _text(elem)
            if accession_number:
                elem.value = accession_pseudonym(accession_number, secret)
            continue
        if elem.VR in _DATE_VRS and tag not in NEVER_RETAINED_TEMPORAL_TAGS:
            # Every date, listed or not: one unshifted date would undo the shift.
            if run.shift is not None:
                _shift_dates(elem, run.shift)
            continue
        action = basic_profile_action(tag)
        if action is None:
            _unlisted(ds, elem, run, patient_key, scrub_free_text=scrub_free_text)
        else:
            _apply(ds, elem, action, run, patient_key)


def _raw_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """The VR of an element not decoded yet, when decoding would keep it (explicit VR, not
    UN: pydicom replaces UN by the dictionary's VR); else None (decode to know)."""
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR != "UN":
        return str(raw.VR)
    return None


def _left_as_is(tag: BaseTag, vr: str, run: _Run, *, scrub_free_text: bool) -> bool:
    """Whether `_clean` keeps the attribute unchanged, known from its tag and VR alone.

    The same decisions as the branches of `_clean`, `_unlisted` and `_apply` that change
    nothing; False wherever the value is needed to know (a sequence's items, an empty value).
    """
    if vr in _DATE_VRS and tag not in NEVER_RETAINED_TEMPORAL_TAGS:
        return run.shift is None
    if vr == "SQ":
        return False
    action = basic_profile_action(tag)
    if action is None:
        if vr == "UI":
            return _is_public_uid_attribute(tag)
        return not (scrub_free_text and vr in _FREE_TEXT_VRS)
    if tag in run.retained:
        return True
    if vr == "TM" and tag not in NEVER_RETAINED_TEMPORAL_TAGS:
        return True
    return action is Action.KEEP


def _unlisted(
    ds: Dataset, elem: DataElement, run: _Run, patient_key: str, *, scrub_free_text: bool
) -> None:
    """An attribute the table does not list: kept, but sequences are cleaned, UIDs hashed."""
    if elem.VR == "SQ":
        _clean_items(elem, run, patient_key, scrub_free_text=scrub_free_text)
    elif elem.VR == "UI":
        if not _is_public_uid_attribute(elem.tag):
            _hash_uids(elem, run)
    elif scrub_free_text and elem.VR in _FREE_TEXT_VRS and not elem.is_empty:
        elem.value = DUMMY_TEXT


def _apply(ds: Dataset, elem: DataElement, action: Action, run: _Run, patient_key: str) -> None:
    tag = elem.tag
    if tag in run.retained:
        if elem.VR == "SQ":
            _clean_items(elem, run, patient_key, scrub_free_text=False)
        return
    if elem.VR == "TM" and tag not in NEVER_RETAINED_TEMPORAL_TAGS:
        return  # a whole-day shift leaves the time of day as it was
    match action:
        case Action.KEEP:
            if elem.VR == "SQ":
                _clean_items(elem, run, patient_key, scrub_free_text=False)
        case Action.REMOVE:
            del ds[tag]
        case Action.EMPTY | Action.REMOVE_OR_EMPTY:
            _empty(elem)
        case Action.UID | Action.REMOVE_OR_EMPTY_OR_UID:
            if elem.VR == "SQ":
                _clean_items(elem, run, patient_key, scrub_free_text=False)
            elif elem.VR == "UI" or action is Action.UID:
                _hash_uids(elem, run)
            else:
                _empty(elem)
        case Action.DUMMY:
            _dummy(elem, run, patient_key)
        case Action.EMPTY_OR_DUMMY | Action.REMOVE_OR_DUMMY | Action.REMOVE_OR_EMPTY_OR_DUMMY:
            # A Type 1 attribute is never empty: an empty one may stay empty.
            if not elem.is_empty:
                _dummy(elem, run, patient_key)


def _clean_items(elem: DataElement, run: _Run, patient_key: str, *, scrub_free_text: bool) -> None:
    for item in elem.value or ():
        _clean(item, run, patient_key, scrub_free_text=scrub_free_text)


def _empty(elem: DataElement) -> None:
    elem.value = Sequence() if elem.VR == "SQ" else None


def _dummy(elem: DataElement, run: _Run, patient_key: str) -> None:
    vr = elem.VR
    if vr == "SQ":
        _clean_items(elem, run, patient_key, scrub_free_text=True)
    elif vr == "UI":
        _hash_uids(elem, run)
    elif vr in _TEXT_VRS:
        elem.value = DUMMY_TEXT
    elif vr == "AS":
        elem.value = DUMMY_AGE
    elif vr == "UR":
        elem.value = DUMMY_URI
    elif vr in _NUMBER_STRING_VRS:
        elem.value = "0"
    elif vr in _BINARY_NUMBER_VRS:
        elem.value = 0
    elif vr in ("DA", "DT", "TM", "AT"):
        elem.value = None
    else:  # OB, OW, OF, OD, OL, OV, UN
        elem.value = DUMMY_BYTES


def _is_public_uid_attribute(tag: BaseTag) -> bool:
    keyword = keyword_for_tag(tag)
    return keyword.endswith("ClassUID") or keyword in _PUBLIC_UID_KEYWORDS


def _hash_uids(elem: DataElement, run: _Run) -> None:
    """Replace each UID by its pseudonym, except the standard's own (well-known) UIDs."""

    def replace(value: object) -> object:
        text = str(value or "").strip().rstrip("\0")
        if not text or text.startswith(STANDARD_UID_PREFIX):
            return value
        return pseudonymous_uid(text, run.options.secret, run.options.uid_root)

    if isinstance(elem.value, MultiValue | list):
        elem.value = [replace(value) for value in elem.value]
    elif elem.VR == "UI":
        elem.value = replace(elem.value)
    else:  # a UI-listed attribute read with another VR (UN): no safe way to rewrite it
        elem.value = None


def _shift_dates(elem: DataElement, shift: timedelta) -> None:
    shifter = _shift_date if elem.VR == "DA" else _shift_datetime
    if isinstance(elem.value, MultiValue | list):
        elem.value = [shifter(str(value), shift) for value in elem.value]
    elif not elem.is_empty:
        elem.value = shifter(str(elem.value), shift)


def _shift_date(value: str, shift: timedelta) -> str:
    """A DA value moved back by `shift`; empty when it cannot be read as a date."""
    text = value.strip().replace(".", "")  # ACR-NEMA "YYYY.MM.DD"
    try:
        return (_parse_date(text) - shift).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def _shift_datetime(value: str, shift: timedelta) -> str:
    """A DT value moved back by `shift` days, keeping its precision, time and UTC offset."""
    text = value.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    date_digits = min(digits, 8)
    if date_digits not in (4, 6, 8):
        return ""
    padded = text[:date_digits] + "0101"[: 8 - date_digits] if date_digits < 8 else text[:8]
    try:
        shifted = (_parse_date(padded) - shift).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""
    return shifted[:date_digits] + text[date_digits:]


def _parse_date(text: str) -> date:
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a date: {text!r}")
    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _mark(ds: Dataset, options: DeidentifyOptions) -> None:
    """Record what was done: Patient Identity Removed, the method and its codes."""
    ds.PatientIdentityRemoved = "YES"
    methods = [str(value) for value in _values(ds.get(DEIDENTIFICATION_METHOD_TAG))]
    if DEIDENTIFICATION_METHOD not in methods:
        methods.append(DEIDENTIFICATION_METHOD)
    ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    present = {(item.get("CodingSchemeDesignator"), item.get("CodeValue")) for item in codes}
    for code in options.method_codes:
        if (CODING_SCHEME, str(code)) in present:
            continue
        item = Dataset()
        item.CodeValue = str(code)
        item.CodingSchemeDesignator = CODING_SCHEME
        item.CodeMeaning = CODE_MEANINGS[code]
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if options.retain_longitudinal else "MODIFIED"
    )


def _text(elem: DataElement) -> str:
    return "\\".join(str(value) for value in _values(elem)).strip()


def _values(elem: DataElement | None) -> list[object]:
    if elem is None or elem.is_empty:
        return []
    return list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]


def _clean_file_meta(ds: Dataset) -> None:
    # The 128-byte preamble is the application's (PS3.10 7.1): a dual-format file keeps a
    # TIFF header there, another writer anything at all. The copy gets zeros.
    ds.preamble = None
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in _FILE_META_REMOVED:
        if tag in meta:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
