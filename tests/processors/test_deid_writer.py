"""The de-identification's Part 10 writer gives the bytes `pydicom.dcmwrite` gives, on every
file of pydicom's test data and on rich synthetic objects, for each set of profile options."""

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomflow.processors.deid import DeidentifyOptions, engine
from dicomflow.processors.deid.writer import encode_part10
from tests.processors.test_deid_undecoded import OPTIONS, SYNTHETIC, TESTDATA


def _deidentified(data: bytes, options: DeidentifyOptions) -> Dataset | None:
    """What `deidentify_bytes` encodes for `data` (None where it refuses before encoding)."""
    try:
        ds = engine._read(data)
        engine.deidentify_in_place(ds, options)
    except Exception:  # refused (DeidentificationError) or malformed: nothing is written
        return None
    return ds


def _written(write: object, ds: Dataset) -> tuple[str, bytes | str]:
    try:
        if write is pydicom.dcmwrite:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            return "written", buffer.getvalue()
        return "written", encode_part10(ds)
    except Exception as exc:
        return "failed", type(exc).__name__


def _compare(data: bytes, options: DeidentifyOptions) -> None:
    ours, reference = _deidentified(data, options), _deidentified(data, options)
    if ours is None or reference is None:
        return
    assert _written(encode_part10, ours) == _written(pydicom.dcmwrite, reference)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("path", TESTDATA, ids=[Path(p).name for p in TESTDATA])
def test_pydicom_test_files_are_written_as_dcmwrite_writes_them(
    path: str, options: DeidentifyOptions
) -> None:
    _compare(Path(path).read_bytes(), options)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("number", range(len(SYNTHETIC)))
def test_rich_objects_are_written_as_dcmwrite_writes_them(
    number: int, options: DeidentifyOptions
) -> None:
    _compare(SYNTHETIC[number], options)


def test_undecoded_and_plain_string_elements_skip_pydicoms_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[str] = []
    real = engine.encode_part10.__globals__["write_data_element"]

    def spy(fp: object, element: object, encodings: object = None) -> None:
        written.append(getattr(element, "keyword", "") or str(getattr(element, "tag", "")))
        real(fp, element, encodings)

    monkeypatch.setitem(engine.encode_part10.__globals__, "write_data_element", spy)
    ds = _deidentified(SYNTHETIC[0], OPTIONS["modified dates"])
    assert ds is not None
    encode_part10(ds)
    assert "PixelData" in written and "PatientName" in written  # PN: pydicom's writer
    for kept_or_plain in ("Rows", "StudyInstanceUID", "StudyDate"):
        assert kept_or_plain not in written
