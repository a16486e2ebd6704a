"""Element headers: what pydicom writes in front of the same value, in every encoding."""

import pytest
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from dicomflow.kernel.elements import element_header


def _pydicom(tag: int, vr: str, value: bytes, implicit: bool, little: bool) -> bytes:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, little
    write_data_element(out, DataElement(tag, vr, value))
    return out.getvalue()


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize(
    ("tag", "vr", "value"),
    [(0x00100020, "LO", b"MRN-1234"), (0x7FE00010, "OB", b"\0\1" * 8), (0x00081030, "UT", b"")],
)
def test_the_header_is_pydicoms(
    tag: int, vr: str, value: bytes, implicit: bool, little: bool
) -> None:
    header = element_header(tag, vr, len(value), implicit=implicit, little_endian=little)
    assert header is not None
    assert header + value == _pydicom(tag, vr, value, implicit, little)


def test_a_short_vr_cannot_hold_more_than_64_kb() -> None:
    assert element_header(0x00100020, "LO", 0x10000, implicit=False) is None
    assert element_header(0x00100020, "LO", 0x10000, implicit=True) is not None
    assert element_header(0x00100020, "LO", 0xFFFF, implicit=False) is not None
