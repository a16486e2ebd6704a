"""A small but varied archive of metadata events, and the index implementations under test."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset

from dicomflow.indexer.base import StudyIndex
from dicomflow.indexer.embedded import EmbeddedStudyIndex
from dicomflow.kernel.events import (
    BlobRef,
    InstanceIdentity,
    MetadataExtracted,
    Namespace,
    Source,
    SourceKind,
)
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.metadata import extract_metadata
from dicomflow.synthetic import PatientSpec, make_instance


def event_of(ds: Dataset, namespace: Namespace = Namespace.ORIGINAL) -> MetadataExtracted:
    """The MetadataExtracted event the metadata processor publishes for `ds`."""
    dicom_json, fields = extract_metadata(ds)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    return MetadataExtracted(
        identity=InstanceIdentity(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        ),
        namespace=namespace,
        blob=BlobRef(
            namespace=namespace, key=instance_key(study, series, sop), size=1234, sha256="ab" * 32
        ),
        source=Source(kind=SourceKind.DIMSE, calling_ae="MODALITY1", address="127.0.0.1"),
        received_at=datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
        dicom_json=dicom_json,
        fields=fields,
    )


@dataclass
class Archive:
    """Four studies of three patients; `study[name]` is the Study Instance UID of each."""

    datasets: list[Dataset] = field(default_factory=list)
    study: dict[str, str] = field(default_factory=dict)
    series: dict[str, list[str]] = field(default_factory=dict)

    def events(self, namespace: Namespace = Namespace.ORIGINAL) -> list[MetadataExtracted]:
        return [event_of(ds, namespace) for ds in self.datasets]

    def add(
        self,
        name: str,
        patient: PatientSpec,
        study_index: int,
        series: list[tuple[str, int]],
        study_date: str,
        **attributes: object,
    ) -> None:
        for series_index, (modality, count) in enumerate(series):
            for instance_index in range(count):
                ds = make_instance(
                    patient,
                    study_index,
                    series_index,
                    instance_index,
                    modality=modality,
                    rows=8,
                    columns=8,
                    study_date=study_date,
                )
                for keyword, value in attributes.items():
                    setattr(ds, keyword, value)
                self.datasets.append(ds)
                self.study[name] = str(ds.StudyInstanceUID)
                uids = self.series.setdefault(name, [])
                if str(ds.SeriesInstanceUID) not in uids:
                    uids.append(str(ds.SeriesInstanceUID))


JOHN = PatientSpec(name="DOE^JOHN", patient_id="PID-A", birth_date="19700101", sex="M")
JANE = PatientSpec(name="Doe^Jane", patient_id="PID-B", birth_date="19800202", sex="F")
HANS = PatientSpec(name="MÜLLER^HANS", patient_id="PID-C", birth_date="19601224", sex="M")


def build_archive() -> Archive:
    archive = Archive()
    archive.add("A", JOHN, 0, [("CT", 3), ("CT", 2)], "20200115")
    archive.add(
        "B",
        JANE,
        0,
        [("MR", 2), ("OT", 1)],
        "20200630",
        StudyDescription="MRI BRAIN",
        InstitutionName="ST MARY CLINIC",
    )
    archive.add(
        "C",
        HANS,
        0,
        [("CT", 1)],
        "20210301",
        StudyDescription="ABDOMEN",
        BodyPartExamined="ABDOMEN",
        AccessionNumber="ACC[1]*",
    )
    archive.add(
        "D",
        JOHN,
        1,
        [("MR", 1)],
        "20191231",
        StudyDescription="MR KNEE",
        ReferringPhysicianName="WILSON^JAMES",
    )
    return archive


IndexFactory = Callable[[Path], StudyIndex]
INDEX_FACTORIES: dict[str, IndexFactory] = {"embedded": EmbeddedStudyIndex}
"""Every StudyIndex implementation that the contract suite runs against."""
