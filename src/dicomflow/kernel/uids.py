"""Validation of DICOM UIDs before they become keys, paths or query values."""

import re

from dicomflow.kernel.exceptions import InvalidUID

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit
# component, at most 64 characters. Anything else is refused before it reaches a path.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAX_LENGTH
        and _UID_RE.match(value) is not None
    )


def validate_uid(value: object, what: str = "UID") -> str:
    """Return `value` if it is a valid DICOM UID, else raise InvalidUID naming `what`."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(
            f"{what} {shown} is not a valid DICOM UID "
            "(digits and dots only, no leading zeros, at most 64 characters)"
        )
    assert isinstance(value, str)
    return value


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The blob key of one instance: built only from validated UIDs, never from raw input."""
    return (
        "/".join(
            (
                validate_uid(study_uid, "StudyInstanceUID"),
                validate_uid(series_uid, "SeriesInstanceUID"),
                validate_uid(sop_uid, "SOPInstanceUID"),
            )
        )
        + ".dcm"
    )
