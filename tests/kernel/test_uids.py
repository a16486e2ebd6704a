import pytest

from dicomflow.kernel.exceptions import InvalidUID
from dicomflow.kernel.uids import instance_key, is_valid_uid, validate_uid


@pytest.mark.parametrize("uid", ["1.2.3", "2.25.123456789", "1.2.840.10008.5.1.4.1.1.2", "0"])
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    "uid",
    ["", "../../x", "1.2.3/4", "1..2", "1.02", ".1", "1.", "1.2.a", "1" * 65, None, 12, "1.2\x00"],
)
def test_invalid_uids_are_refused(uid: object) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID, match="not a valid DICOM UID"):
        validate_uid(uid, "StudyInstanceUID")


def test_instance_key_is_built_from_uids_only() -> None:
    assert instance_key("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(InvalidUID):
        instance_key("1.2", "../../etc", "1.2.3.4")
