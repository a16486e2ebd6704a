"""The header of an encoded DICOM data element (PS3.5 7.1): tag, VR and value length.

What the receiver writes in front of its file meta values, the C-FIND service in front of its
answers' values and the de-identification's writer in front of the attributes it copies.
"""

import struct

LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
"""The VRs whose explicit-VR header has two reserved bytes and a 32-bit length (PS3.5 7.1.2)."""

_HEADERS = {
    little: (
        struct.Struct(order + "HHI"),  # implicit VR
        struct.Struct(order + "HH2sH"),  # explicit VR, 16-bit length
        struct.Struct(order + "HH2s2xI"),  # explicit VR, reserved bytes, 32-bit length
    )
    for little, order in ((True, "<"), (False, ">"))
}


def element_header(
    tag: int, vr: str, length: int, *, implicit: bool, little_endian: bool = True
) -> bytes | None:
    """The header of an element of `length` value bytes; None when an explicit VR's 16-bit
    length field cannot hold `length` (pydicom then writes the element as UN)."""
    implicit_header, short, long = _HEADERS[little_endian]
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return implicit_header.pack(group, number, length)
    if vr in LONG_LENGTH_VRS:
        return long.pack(group, number, vr.encode("ascii"), length)
    if length > 0xFFFF:
        return None
    return short.pack(group, number, vr.encode("ascii"), length)
