"""Synthetic but realistic DICOM data, for the tests and the benchmark (nothing large committed)."""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "OT": SecondaryCaptureImageStorage}


def uid_for(*parts: object) -> str:
    """A deterministic, valid UID under 2.25 from arbitrary parts."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class PatientSpec:
    name: str = "DOE^JOHN"
    patient_id: str = "PID0001"
    birth_date: str = "19700101"
    sex: str = "M"


def make_instance(
    patient: PatientSpec,
    study_index: int,
    series_index: int,
    instance_index: int,
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    study_date: str = "20240115",
    seed: str = "dicomflow",
) -> Dataset:
    """One instance with patient, study, series and image attributes and 16-bit pixels."""
    study_uid = uid_for(seed, patient.patient_id, study_index)
    series_uid = uid_for(seed, patient.patient_id, study_index, series_index)
    sop_uid = uid_for(seed, patient.patient_id, study_index, series_index, instance_index)
    sop_class = UID(SOP_CLASSES.get(modality, SecondaryCaptureImageStorage))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid_for(seed, patient.patient_id, study_index, "for")
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = study_date
    ds.StudyTime = f"{9 + study_index % 10:02d}3000"
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.AccessionNumber = "ACC" + uid_for(seed, patient.patient_id, study_index)[-8:]
    ds.StudyID = str(study_index + 1)
    ds.StudyDescription = f"{modality} CHEST WITH CONTRAST"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.InstitutionName = "GENERAL HOSPITAL"
    ds.StationName = "STATION1"
    ds.Manufacturer = "DICOMFLOW SYNTHETIC"
    ds.OperatorsName = "OPERATOR^ONE"
    ds.Modality = modality
    ds.SeriesNumber = series_index + 1
    ds.SeriesDescription = f"SERIES {series_index + 1}"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.ImagePositionPatient = [0, 0, instance_index * 1.25]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = uid_for(seed, "ref", study_uid)
    ds.add_new(0x00091010, "LO", "PRIVATE SECRET " + patient.name)
    ds.add_new(0x00090010, "LO", "DICOMFLOW TEST")

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(instance_index)
    yy, xx = np.mgrid[0:rows, 0:columns]
    base = ((np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2) * 500).astype(np.uint16)
    pixels = np.stack(
        [base + rng.integers(0, 50, size=(rows, columns), dtype=np.uint16) for _ in range(frames)]
    )
    ds.PixelData = pixels.tobytes()
    return ds


def iter_study_tree(
    patients: int = 2,
    studies_per_patient: int = 1,
    series_per_study: int = 2,
    instances_per_series: int = 10,
    rows: int = 64,
    columns: int = 64,
    seed: str = "dicomflow",
) -> Iterator[Dataset]:
    modalities = ("CT", "MR")
    for p in range(patients):
        patient = PatientSpec(
            name=f"{['DOE', 'ROE', 'SMITH', 'MÜLLER'][p % 4]}^{['JOHN', 'JANE'][p % 2]}{p}",
            patient_id=f"PID{p:04d}",
            birth_date=f"19{50 + p % 50:02d}0{1 + p % 9}15",
            sex="MF"[p % 2],
        )
        for s in range(studies_per_patient):
            for se in range(series_per_study):
                for i in range(instances_per_series):
                    yield make_instance(
                        patient,
                        s,
                        se,
                        i,
                        modality=modalities[(p + se) % 2],
                        rows=rows,
                        columns=columns,
                        study_date=f"2024{1 + (p + s) % 12:02d}{10 + s % 18:02d}",
                        seed=seed,
                    )


def write_tree(datasets: Iterator[Dataset], folder: Path) -> list[Path]:
    """Write datasets as Part 10 files in a patient/study/series folder tree."""
    paths = []
    for ds in datasets:
        path = folder / str(ds.PatientID) / str(ds.StudyID) / str(ds.SeriesNumber)
        path.mkdir(parents=True, exist_ok=True)
        target = path / f"{ds.InstanceNumber:05d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths
