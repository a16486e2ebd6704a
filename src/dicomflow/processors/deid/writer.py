"""Encoding a de-identified dataset as a Part 10 object: the bytes `pydicom.dcmwrite` writes
(with ``enforce_file_format=True``), in about 60% of its time (1.1-1.7 ms against 1.6-2.7 ms
for a bench object, docs/performance.md change 35).

Most attributes of a de-identified object are kept as they came (`engine._left_as_is`) and are
still undecoded `RawDataElement`s. pydicom's writer handles each element through a fresh
buffer, a dozen property lookups and, for the file meta, a deep copy: for a 48-element bench
object that was 1.6-2.7 ms of the 3-4 ms a de-identification took. Here an undecoded element of
defined length goes out as its header and its value bytes, and a single ASCII-type string as
pydicom's `write_string` makes it; every other element (sequences, person names, numbers,
undefined lengths) goes through pydicom's own `write_data_element`. What
this does not handle exactly as pydicom would (big endian, deflate, private transfer
syntaxes, a changed character set or encoding, elements that do not belong in a dataset) is
written by `pydicom.dcmwrite` itself. Both give the same bytes: tests compare them on every
file of pydicom's test data.
"""

import io

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID
from pydicom.valuerep import VR

from dicomflow.kernel.elements import element_header

_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
# Written by pydicom's `write_string` (`write_UI`, and `write_DA`/`write_TM`/`write_DT` for a
# value that is a string): the text in the default encoding, padded to an even length.
_STRING_VRS = frozenset({VR.AE, VR.AS, VR.CS, VR.DA, VR.DT, VR.TM, VR.UI})


def encode_part10(ds: Dataset) -> bytes:
    """`ds` as a Part 10 object in its file meta's transfer syntax (as `dcmwrite` with
    ``enforce_file_format=True``). Updates the file meta's Media Storage UIDs as dcmwrite
    would in its copy."""
    syntax = _plain_syntax(ds)
    if syntax is None:
        return _by_pydicom(ds)
    meta = ds.file_meta
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        in_meta, in_ds = meta.get(meta_keyword), ds.get(keyword)
        if in_meta is None or (in_ds and in_ds != in_meta):
            setattr(meta, meta_keyword, in_ds)
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    implicit = syntax.is_implicit_VR
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, True
    out.write(ds.preamble or bytes(128))
    out.write(b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # validates it (dcmwrite: twice)
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    write = out.write
    for tag in sorted(ds.keys()):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:  # retired group lengths are not written
            continue
        element = ds.get_item(tag)
        value = _plain_value(element)
        header = None if value is None else _header(element, value, implicit)
        if value is None or header is None:
            write_data_element(out, element, encodings)
        else:
            write(header)
            write(value)
    return out.getvalue()


def _plain_value(element: DataElement | RawDataElement) -> bytes | None:
    """The encoded value of an element that needs none of pydicom's writers: an undecoded
    one of defined length (its bytes as they came), or a single ASCII-type string (what
    `write_string` makes of it); None for every other."""
    if isinstance(element, RawDataElement):
        if element.length == _UNDEFINED or element.tag == _PIXEL_DATA:
            return None
        raw = element.value
        return raw if isinstance(raw, bytes) else None
    value = element.value
    if element.VR not in _STRING_VRS or type(value) not in (str, UID):
        return None
    text = str(value)
    if len(text) % 2:
        text += "\0" if element.VR == VR.UI else " "
    return text.encode(default_encoding)


def _header(element: DataElement | RawDataElement, value: bytes, implicit: bool) -> bytes | None:
    """The tag, VR and length of an element whose value is `value`; None when pydicom's
    writer must handle it."""
    vr = element.VR
    if not implicit and (vr is None or len(vr) != 2):
        return None  # an ambiguous VR: pydicom's writer refuses it, with its own message
    return element_header(element.tag, vr or "", len(value), implicit=implicit)


def _plain_syntax(ds: Dataset) -> UID | None:
    """The transfer syntax when the fast path writes exactly what dcmwrite would, else None."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return None
    syntax = UID(syntax)
    if (
        not syntax.is_transfer_syntax
        or syntax.is_private
        or not syntax.is_little_endian
        or syntax.is_deflated
    ):
        return None
    if ds.original_encoding != (syntax.is_implicit_VR, True):
        return None
    if ds.original_character_set != ds._character_set:
        return None
    if any(tag >> 16 in (0, 2) for tag in ds._dict):
        return None  # dcmwrite refuses these, with its own message
    preamble = getattr(ds, "preamble", None)
    if preamble and len(preamble) != 128:
        return None
    return syntax


def _by_pydicom(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
