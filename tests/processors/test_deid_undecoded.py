"""De-identification copies the attributes it keeps without decoding them: the result must be
what decoding every attribute first gives, on every file of pydicom's test data and on rich
synthetic objects, for each set of profile options."""

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from dicomflow.processors.deid import (
    DeidentificationError,
    DeidentifyOptions,
    deidentify_bytes,
    engine,
)
from dicomflow.synthetic import PatientSpec
from tests.processors.conftest import rich_instance

SECRET = b"unit-test-secret"
OPTIONS = {
    "modified dates": DeidentifyOptions(secret=SECRET),
    "every option": DeidentifyOptions(
        secret=SECRET,
        retain_longitudinal=True,
        retain_patient_characteristics=True,
        retain_device_identity=True,
    ),
}
TESTDATA = sorted(path for path in get_testdata_files() if Path(path).is_file())


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SYNTHETIC = [
    _encoded(rich_instance()),
    _encoded(rich_instance(PatientSpec(name="DOE^JANE", patient_id="P-77"), 1, 2, 3, "1.2.3.4")),
]


def _outcome(data: bytes, options: DeidentifyOptions) -> tuple[str, object]:
    try:
        result = deidentify_bytes(data, options)
    except DeidentificationError as exc:
        return "refused", str(exc)
    return "done", result


def _decoded(data: bytes) -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(data))
    for _ in ds.iterall():  # decode every element, nested ones too
        pass
    return ds


def _compare(data: bytes, options: DeidentifyOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    undecoded = _outcome(data, options)
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_raw_vr", lambda ds, tag: None)  # decode every attribute
        reference = _outcome(data, options)
    assert undecoded[0] == reference[0]
    if undecoded[0] == "refused":
        assert undecoded[1] == reference[1]
        return
    ours, theirs = undecoded[1], reference[1]
    assert isinstance(ours, engine.DeidentifiedInstance)
    assert isinstance(theirs, engine.DeidentifiedInstance)
    assert ours.sop_instance_uid == theirs.sop_instance_uid
    assert ours.study_instance_uid == theirs.study_instance_uid
    mine, expected = _decoded(ours.data), _decoded(theirs.data)
    assert mine.file_meta == expected.file_meta
    assert mine == expected


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("path", TESTDATA, ids=[Path(p).name for p in TESTDATA])
def test_pydicom_test_files_give_what_decoding_everything_gives(
    path: str, options: DeidentifyOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compare(Path(path).read_bytes(), options, monkeypatch)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("number", range(len(SYNTHETIC)))
def test_rich_objects_give_what_decoding_everything_gives(
    number: int, options: DeidentifyOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compare(SYNTHETIC[number], options, monkeypatch)


def test_kept_attributes_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = engine.Dataset.__getitem__

    def spy(ds: Dataset, key: object) -> object:
        element = real(ds, key)
        decoded.append(getattr(element, "keyword", ""))
        return element

    monkeypatch.setattr(engine.Dataset, "__getitem__", spy)
    deidentify_bytes(SYNTHETIC[0], OPTIONS["modified dates"])
    assert "PatientName" in decoded and "StudyDate" in decoded  # changed: decoded
    assert "Rows" not in decoded and "Modality" not in decoded  # kept: copied as they came
