"""DICOMweb end to end with a third-party client: dicomweb-client (PyPI) stores through
STOW-RS into `dicomflow serve`, then searches and retrieves what it sent."""

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance
from tests.conftest import ADMIN_HEADERS, free_port
from tests.e2e.conftest import Server, server_env

pytestmark = pytest.mark.e2e


def _part10_copy(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


class Sent:
    """What the test stores: a small tree, a multi-frame image, an RLE-compressed image."""

    def __init__(self) -> None:
        self.tree = list(iter_study_tree(patients=2, series_per_study=2, instances_per_series=2))
        self.multiframe = make_instance(
            PatientSpec(name="FRAMES^MULTI", patient_id="MF1"),
            0,
            0,
            0,
            rows=16,
            columns=16,
            frames=3,
        )
        self.rle_original = make_instance(
            PatientSpec(name="RLE^COMPRESSED", patient_id="RLE1"), 0, 0, 0, rows=32, columns=32
        )
        self.rle = _part10_copy(self.rle_original)
        self.rle.compress(RLELossless, generate_instance_uid=False)

    def all(self) -> list[Dataset]:
        return [*self.tree, self.multiframe, self.rle]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DICOMwebClient]]:
    folder: Path = tmp_path_factory.mktemp("dicomweb-client")
    dicom_port, http_port = free_port(), free_port()
    env = server_env(folder / "data", dicom_port, http_port)
    server = Server(folder / "data", dicom_port, http_port, env, folder / "server.log")
    server.start()
    try:
        yield (
            server,
            DICOMwebClient(url=f"http://127.0.0.1:{http_port}/dicomweb", headers=ADMIN_HEADERS),
        )
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def sent(served: tuple[Server, DICOMwebClient]) -> Sent:
    server, client = served
    data = Sent()
    response = client.store_instances(data.all())
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in data.all()
    ]
    assert "FailedSOPSequence" not in response
    server.wait_idle()
    return data


@pytest.fixture(scope="module")
def client(served: tuple[Server, DICOMwebClient], sent: Sent) -> DICOMwebClient:
    return served[1]


def uids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def same(received: Dataset, sent: Dataset) -> None:
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert received.PatientName == sent.PatientName
    assert received.PixelData == sent.PixelData


def test_search_every_level(client: DICOMwebClient, sent: Sent) -> None:
    studies = client.search_for_studies(search_filters={"PatientID": "PID*"})
    assert len(studies) == 2
    [doe] = client.search_for_studies(search_filters={"PatientName": "doe*"}, fuzzymatching=True)
    study = Dataset.from_json(doe)
    assert study.PatientID == "PID0000" and study.NumberOfStudyRelatedInstances == 4
    series = client.search_for_series(study.StudyInstanceUID, fields=["SeriesDescription"])
    assert sorted(Dataset.from_json(s).Modality for s in series) == ["CT", "MR"]
    assert all("0008103E" in s for s in series)
    first = sent.tree[0]
    instances = client.search_for_instances(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {Dataset.from_json(i).SOPInstanceUID for i in instances} == {
        ds.SOPInstanceUID for ds in sent.tree if ds.SeriesInstanceUID == first.SeriesInstanceUID
    }
    page = client.search_for_instances(limit=3, offset=2)
    assert len(page) == 3
    everything = client.search_for_instances(limit=4, get_remaining=True)
    assert len(everything) == len(sent.all())
    with pytest.raises(requests.HTTPError) as error:
        client.search_for_studies(search_filters={"StudyDate": "2024-13-45"})
    assert error.value.response.status_code == 400
    assert "StudyDate" in error.value.response.json()["detail"]


def test_retrieve_study_series_instance(client: DICOMwebClient, sent: Sent) -> None:
    first = sent.tree[0]
    by_uid = {ds.SOPInstanceUID: ds for ds in sent.all()}
    study = client.retrieve_study(first.StudyInstanceUID)
    assert len(study) == 4
    for ds in study:
        same(ds, by_uid[ds.SOPInstanceUID])
    series = client.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert len(series) == 2
    same(client.retrieve_instance(*uids(first)), first)
    # Compressed: as stored by default, decoded on request.
    stored = client.retrieve_instance(*uids(sent.rle))
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    decoded = client.retrieve_instance(
        *uids(sent.rle), media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    same(decoded, sent.rle_original)


def test_metadata_and_bulk_data(client: DICOMwebClient, sent: Sent) -> None:
    metadata = client.retrieve_instance_metadata(*uids(sent.multiframe))
    described = Dataset.from_json(metadata)
    assert described.PatientName == sent.multiframe.PatientName
    assert described.NumberOfFrames == 3
    [pixels] = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert pixels == sent.multiframe.PixelData
    study = client.retrieve_study_metadata(sent.tree[0].StudyInstanceUID)
    assert len(study) == 4
    series = client.retrieve_series_metadata(
        sent.tree[0].StudyInstanceUID, sent.tree[0].SeriesInstanceUID
    )
    assert len(series) == 2


def test_frames(client: DICOMwebClient, sent: Sent) -> None:
    size = 16 * 16 * 2
    pixels = sent.multiframe.PixelData
    frames = client.retrieve_instance_frames(*uids(sent.multiframe), [1, 3])
    assert frames == [pixels[:size], pixels[2 * size :]]
    octets = client.retrieve_instance_frames(
        *uids(sent.multiframe), [2], media_types=("application/octet-stream",)
    )
    assert octets == [pixels[size : 2 * size]]
    decoded = client.retrieve_instance_frames(
        *uids(sent.rle), [1], media_types=("application/octet-stream",)
    )
    assert decoded == [sent.rle_original.PixelData]
    [rle] = client.retrieve_instance_frames(*uids(sent.rle), [1], media_types=("image/dicom-rle",))
    assert 0 < len(rle) < len(sent.rle_original.PixelData)


def test_rendered(client: DICOMwebClient, sent: Sent) -> None:
    jpeg = Image.open(BytesIO(client.retrieve_instance_rendered(*uids(sent.tree[0]))))
    assert jpeg.format == "JPEG" and jpeg.size == (64, 64)
    png = client.retrieve_instance_rendered(
        *uids(sent.tree[0]),
        media_types=("image/png",),
        params={"window": "40,400", "viewport": "32,32"},
    )
    image = Image.open(BytesIO(png))
    assert image.format == "PNG" and image.size == (32, 32)
    frame = client.retrieve_instance_frames_rendered(
        *uids(sent.multiframe), [2], media_types=("image/png",)
    )
    rendered = np.asarray(Image.open(BytesIO(frame)))
    assert rendered.shape == (16, 16) and rendered.std() > 0


def test_store_refusals_come_back_as_failed_sop_sequence(
    client: DICOMwebClient, sent: Sent
) -> None:
    other = make_instance(PatientSpec(patient_id="OTHER1"), 0, 0, 0, rows=8, columns=8)
    with pytest.raises(requests.HTTPError) as error:
        client.store_instances([other], study_instance_uid=sent.tree[0].StudyInstanceUID)
    assert error.value.response.status_code == 409
    [failed] = Dataset.from_json(error.value.response.json()).FailedSOPSequence
    assert failed.FailureReason == 0xA900
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
