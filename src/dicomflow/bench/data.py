"""Benchmark data: `dicomflow.synthetic` instances as templates, stamped with fresh identities.

Building every object with pydicom would make generating 100,000 (or 1,000,000) files slower
than the figures being measured. So one template per case is built with
`dicomflow.synthetic.make_instance` and encoded once; every object is a copy of those bytes with
fixed-width placeholder values (UIDs, patient ID and name, accession number, study date)
replaced in place. Same lengths, so the encoding stays valid; each placeholder's number of
occurrences is checked when the template is built.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

from pydicom.uid import UID

from dicomflow.synthetic import PatientSpec, make_instance


@dataclass(frozen=True)
class Case:
    """One kind of object of the ingest figures."""

    name: str
    label: str
    rows: int
    columns: int
    frames: int = 1


CASES: dict[str, Case] = {
    "ct": Case("ct", "CT 512x512 16-bit (0.5 MB)", 512, 512),
    "tiny": Case("tiny", "64x64 16-bit (10 KB)", 64, 64),
    "mf": Case("mf", "multi-frame 8x512x512 (4 MB)", 512, 512, 8),
}

# Fixed-width placeholders; the values replacing them have the same lengths.
_STUDY, _SERIES, _SOP = (f"2.25.{kind}{0:020d}" for kind in (7, 8, 9))
_PATIENT_ID = "BPID00000000"
_PATIENT_NAME = "PATZZZZZ^BENCH"
_ACCESSION = "BACC00000000"
_STUDY_DATE = "19000101"
_FIRST_DATE = date(2023, 1, 1)


def bench_uid(kind: int, run: int, number: int) -> str:
    """A valid 26-character UID under 2.25: kind 1-6, run tag < 10**8, number < 10**12."""
    if not 1 <= kind <= 6 or not 0 <= run < 10**8 or not 0 <= number < 10**12:
        raise ValueError(f"bench_uid({kind}, {run}, {number}) is out of range")
    return f"2.25.{kind}{run:08d}{number:012d}"


def patient_name(number: int) -> str:
    """``PAT`` + five letters + ``^BENCH`` (14 characters).

    The letters are `number` in base 26, least significant first, so that a prefix such as
    ``PATAB*`` matches one patient in 676 whatever the size of the archive.
    """
    letters = []
    for _ in range(5):
        number, digit = divmod(number, 26)
        letters.append(chr(ord("A") + digit))
    return "PAT" + "".join(letters) + "^BENCH"


def study_date(study: int) -> str:
    """Dates spread over two years (730 days)."""
    return (_FIRST_DATE + timedelta(days=(study * 37) % 730)).strftime("%Y%m%d")


@dataclass(frozen=True)
class Identity:
    study: int
    series: int
    instance: int
    patient: int


class Template:
    """The encoded bytes of one synthetic instance and where its identity goes."""

    def __init__(self, case: Case) -> None:
        ds = make_instance(
            PatientSpec(name=_PATIENT_NAME, patient_id=_PATIENT_ID),
            0,
            0,
            0,
            modality="CT",
            rows=case.rows,
            columns=case.columns,
            frames=case.frames,
            study_date=_STUDY_DATE,
            seed="dicomflow-bench",
        )
        ds.StudyInstanceUID = UID(_STUDY)
        ds.SeriesInstanceUID = UID(_SERIES)
        ds.SOPInstanceUID = UID(_SOP)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(_SOP)
        ds.AccessionNumber = _ACCESSION
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        self.case = case
        self.data = buffer.getvalue()
        # Every placeholder is in the header: stamping leaves the pixel data alone.
        split = self.data.rfind(b"\xe0\x7f\x10\x00")
        self._header, self._pixels = self.data[:split], self.data[split:]
        self.counts = {
            p: self._header.count(p.encode())
            for p in (
                _STUDY,
                _SERIES,
                _SOP,
                _PATIENT_ID,
                _PATIENT_NAME,
                _ACCESSION,
                _STUDY_DATE,
            )
        }
        missing = [p for p, n in self.counts.items() if n == 0]
        if missing:
            raise ValueError(f"template of {case.name} lacks placeholders {missing}")

    @property
    def size(self) -> int:
        return len(self.data)

    def render(self, run: int, ident: Identity) -> bytes:
        values = {
            _STUDY: bench_uid(1, run, ident.study),
            _SERIES: bench_uid(2, run, ident.series),
            _SOP: bench_uid(3, run, ident.instance),
            _PATIENT_ID: f"BPID{ident.patient:08d}",
            _PATIENT_NAME: patient_name(ident.patient),
            _ACCESSION: f"BACC{ident.study % 10**8:08d}",
            _STUDY_DATE: study_date(ident.study),
        }
        header = self._header
        for placeholder, value in values.items():
            old, new = placeholder.encode(), value.encode()
            if len(old) != len(new):
                raise ValueError(f"{value!r} does not have the length of {placeholder!r}")
            header = header.replace(old, new)
        return header + self._pixels


def flat_identities(
    count: int, first: int = 0, per_series: int = 50, series_per_study: int = 2
) -> Iterator[Identity]:
    """Identities for ingest runs: studies of `series_per_study` series of `per_series`."""
    for n in range(first, first + count):
        series = n // per_series
        study = series // series_per_study
        yield Identity(study=study, series=series, instance=n, patient=study)


def tree_identities(
    first_study: int, studies: int, series_per_study: int = 2, per_series: int = 10
) -> Iterator[Identity]:
    """Identities of an archive: one study per patient, numbered on from `first_study`."""
    for study in range(first_study, first_study + studies):
        for s in range(series_per_study):
            series = study * series_per_study + s
            for i in range(per_series):
                yield Identity(
                    study=study,
                    series=series,
                    instance=series * per_series + i,
                    patient=study,
                )


def write_flat(
    template: Template, run: int, folders: list[Path], identities: Iterator[Identity]
) -> int:
    """Write objects round robin into `folders` (one per association); returns bytes written."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for n, ident in enumerate(identities):
        data = template.render(run, ident)
        (folders[n % len(folders)] / f"{ident.instance:012d}.dcm").write_bytes(data)
        total += len(data)
    return total


def write_tree(
    template: Template, run: int, root: Path, identities: Iterator[Identity], groups: int = 4
) -> int:
    """Write objects in a patient/study/series folder tree; returns the number of files.

    The patients are spread over `groups` top folders (``g0``...), one per association of a
    client that sends the same tree.
    """
    count = 0
    made: set[Path] = set()
    for ident in identities:
        folder = (
            root
            / f"g{ident.study % groups}"
            / f"P{ident.patient:08d}"
            / f"S{ident.study:08d}"
            / f"R{ident.series:09d}"
        )
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        (folder / f"{ident.instance:012d}.dcm").write_bytes(template.render(run, ident))
        count += 1
    return count


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            total += os.path.getsize(os.path.join(dirpath, name))
    return total
