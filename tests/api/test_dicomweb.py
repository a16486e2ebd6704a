"""DICOMweb over HTTP: QIDO-RS, WADO-RS (objects, metadata, bulk data, frames, rendered,
thumbnails, transfer syntax negotiation) and STOW-RS responses, on an archive filled directly."""

import json
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from pydantic import SecretStr
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from dicomflow.api.app import create_app
from dicomflow.api.routes.dicomweb import DicomJSONResponse
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance
from tests.api.conftest import Archive, open_archive, part10
from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, free_port

OCTET = "application/octet-stream"


def _variant(patient_id: str, frames: int = 1, rows: int = 32, columns: int = 32) -> Dataset:
    return make_instance(
        PatientSpec(name=f"VARIANT^{patient_id}", patient_id=patient_id),
        0,
        0,
        0,
        rows=rows,
        columns=columns,
        frames=frames,
    )


def _eight_bit(ds: Dataset, samples: int = 1) -> Dataset:
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = samples
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    return ds


def _gradient(rows: int, columns: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, columns, dtype=np.uint8), (rows, 1))


def jpeg_instance() -> Dataset:
    ds = _eight_bit(_variant("JPEG1"))
    buffer = BytesIO()
    Image.fromarray(_gradient(32, 32)).save(buffer, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    return ds


def undecodable_instance() -> Dataset:
    ds = _variant("JLS1")
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return ds


def rle_instance() -> tuple[Dataset, Dataset]:
    """(the uncompressed original, its RLE Lossless copy with the same UIDs)."""
    original = _variant("RLE1", frames=2)
    compressed = pydicom.dcmread(BytesIO(part10(original)))
    compressed.compress(RLELossless, generate_instance_uid=False)
    return original, compressed


def rgb_instance() -> Dataset:
    ds = _eight_bit(_variant("RGB1"), samples=3)
    red = _gradient(32, 32)
    ds.PixelData = np.stack([red, np.zeros_like(red), 255 - red], axis=-1).tobytes()
    return ds


def monochrome1_instance() -> Dataset:
    ds = _variant("MONO1")
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


def no_pixels_instance() -> Dataset:
    ds = _variant("SR1")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    for keyword in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelRepresentation",
    ):
        delattr(ds, keyword)
    ds.Modality = "SR"
    return ds


def bulk_instance() -> Dataset:
    ds = _variant("BULK1")
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 8)  # EncapsulatedDocument, 2 KB
    return ds


class Data:
    def __init__(self) -> None:
        self.tree = list(iter_study_tree(patients=2, series_per_study=2, instances_per_series=3))
        self.multiframe = _variant("MF1", frames=3, rows=16, columns=16)
        self.rle_original, self.rle = rle_instance()
        self.jpeg = jpeg_instance()
        self.undecodable = undecodable_instance()
        self.rgb = rgb_instance()
        self.monochrome1 = monochrome1_instance()
        self.monochrome2 = _variant("MONO1")  # the same pixels, other patient: MONOCHROME2
        self.monochrome2.PatientID = "MONO2"
        self.monochrome2.SOPInstanceUID = self.monochrome2.SOPInstanceUID + ".2"
        self.monochrome2.file_meta.MediaStorageSOPInstanceUID = self.monochrome2.SOPInstanceUID
        self.no_pixels = no_pixels_instance()
        self.bulk = bulk_instance()

    def all(self) -> list[Dataset]:
        return [
            *self.tree,
            self.multiframe,
            self.rle,
            self.jpeg,
            self.undecodable,
            self.rgb,
            self.monochrome1,
            self.monochrome2,
            self.no_pixels,
            self.bulk,
        ]


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Iterator[Archive]:
    folder: Path = tmp_path_factory.mktemp("dicomweb")
    settings = Settings(
        data_dir=folder / "data",
        dicom_port=free_port(),
        http_port=free_port(),
        admin_token=SecretStr(ADMIN_TOKEN),
    )
    with open_archive(settings) as opened:
        opened.add(data.all())
        yield opened


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings), headers=ADMIN_HEADERS) as test_client:
        yield test_client


def url(ds: Dataset, suffix: str = "", root: str = "/dicomweb") -> str:
    return (
        f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def parts(response: Response) -> list[tuple[str, bytes]]:
    """(content type, payload) of each part of a multipart/related response."""
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match
    result = []
    for chunk in response.content.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().split("\r\n") if ": " in line
        )
        result.append((headers["Content-Type"], body.removesuffix(b"\r\n")))
    return result


def multipart(media_type: str, transfer_syntax: str | None = None) -> dict[str, str]:
    accept = f'multipart/related; type="{media_type}"'
    if transfer_syntax is not None:
        accept += f"; transfer-syntax={transfer_syntax}"
    return {"Accept": accept}


# --- QIDO-RS --------------------------------------------------------------------------------


def test_qido_every_level_and_nested_path(client: TestClient, data: Data) -> None:
    first = data.tree[0]
    studies = client.get("/dicomweb/studies", params={"PatientID": "PID*"})
    assert studies.status_code == 200
    assert studies.headers["content-type"] == "application/dicom+json"
    assert len(studies.json()) == 2
    series = client.get(f"/dicomweb/studies/{first.StudyInstanceUID}/series").json()
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "MR"]
    instances = client.get(
        f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances"
    ).json()
    assert len(instances) == 3
    assert len(client.get(f"/dicomweb/studies/{first.StudyInstanceUID}/instances").json()) == 6
    assert len(client.get("/dicomweb/series", params={"PatientID": "PID*"}).json()) == 4
    found = client.get("/dicomweb/instances", params={"SOPInstanceUID": first.SOPInstanceUID})
    assert [i["00080018"]["Value"][0] for i in found.json()] == [first.SOPInstanceUID]


def test_qido_matching_includefield_limit_offset(client: TestClient, data: Data) -> None:
    by_name = client.get("/dicomweb/studies", params={"PatientName": "doe*"}).json()
    assert [s["00100020"]["Value"][0] for s in by_name] == ["PID0000"]
    described = client.get(
        "/dicomweb/studies",
        params={"PatientID": "PID0000", "includefield": "StudyDescription,00081030"},
    ).json()
    assert described[0]["00081030"]["Value"][0].endswith("CHEST WITH CONTRAST")
    everything = client.get(
        "/dicomweb/studies", params={"PatientID": "PID0000", "includefield": "all"}
    ).json()
    assert "00080090" in everything[0]  # ReferringPhysicianName
    page = client.get("/dicomweb/instances", params={"PatientID": "PID*", "limit": 5, "offset": 4})
    assert len(page.json()) == 5 and page.headers["x-total-count"] == "12"
    fuzzy = client.get("/dicomweb/studies", params={"PatientName": "doe", "fuzzymatching": "true"})
    assert fuzzy.status_code == 200 and "fuzzymatching" in fuzzy.headers["warning"]
    dates = client.get("/dicomweb/studies", params={"StudyDate": "20240201-", "PatientID": "PID*"})
    assert [s["00100020"]["Value"][0] for s in dates.json()] == ["PID0001"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"StudyDate": "2024-13-45"}, "StudyDate"),
        ({"StudyDate": "20240101-garbage"}, "StudyDate"),
        ({"NoSuchAttribute": "1"}, "unknown attribute"),
        ({"limit": "99999999"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "x"}, "offset"),
        ({"includefield": "NotAnAttribute"}, "include field"),
        ({"StudyInstanceUID": "1.2.*"}, "wildcards"),
        ({"StudyInstanceUID": "1.2.3' OR '1'='1"}, "UID"),
        ({"PixelData": "x"}, "cannot be matched"),
    ],
)
def test_qido_bad_queries_are_400_with_a_reason(
    client: TestClient, params: dict[str, str], reason: str
) -> None:
    response = client.get("/dicomweb/studies", params=params)
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_qido_injection_attempts_are_values(client: TestClient) -> None:
    for value in ("x' OR '1'='1", '"; DROP TABLE studies; --', "%", "[a-z]*", "_"):
        response = client.get("/dicomweb/studies", params={"PatientName": value})
        assert response.status_code == 200 and response.json() == [], value
    assert len(client.get("/dicomweb/studies", params={"PatientID": "PID*"}).json()) == 2


def test_qido_media_types(client: TestClient) -> None:
    ok = client.get("/dicomweb/studies", headers={"Accept": "application/json"})
    assert ok.status_code == 200
    refused = client.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"})
    assert refused.status_code == 406
    assert client.get("/dicomweb/studies/not-a-uid/series").status_code == 400


# --- WADO-RS: objects and transfer syntaxes -------------------------------------------------


def test_retrieve_as_stored_by_default_and_with_any_syntax(
    client: TestClient, archive: Archive, data: Data
) -> None:
    ds = data.tree[0]
    stored = archive.stored[ds.SOPInstanceUID]
    for headers in ({}, multipart("application/dicom"), multipart("application/dicom", "*")):
        [(content_type, body)] = parts(client.get(url(ds), headers=headers))
        assert content_type == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        assert body == stored
    single = client.get(url(ds), headers={"Accept": "application/dicom"})
    assert single.headers["content-type"] == "application/dicom" and single.content == stored


def test_retrieve_transcodes_to_uncompressed_on_request(
    client: TestClient, archive: Archive, data: Data
) -> None:
    ds = data.tree[0]
    [(content_type, body)] = parts(
        client.get(url(ds), headers=multipart("application/dicom", ImplicitVRLittleEndian))
    )
    assert content_type.endswith(ImplicitVRLittleEndian)
    implicit = pydicom.dcmread(BytesIO(body))
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert implicit.SOPInstanceUID == ds.SOPInstanceUID and implicit.PixelData == ds.PixelData

    [(content_type, body)] = parts(
        client.get(url(data.rle), headers=multipart("application/dicom", ExplicitVRLittleEndian))
    )
    decoded = pydicom.dcmread(BytesIO(body))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.SOPInstanceUID == data.rle.SOPInstanceUID
    assert decoded.PixelData == data.rle_original.PixelData
    [(content_type, body)] = parts(client.get(url(data.rle)))
    assert content_type.endswith(RLELossless) and body == archive.stored[data.rle.SOPInstanceUID]


def test_retrieve_what_cannot_be_decoded_is_406_with_a_reason(
    client: TestClient, data: Data
) -> None:
    refused = client.get(
        url(data.undecodable), headers=multipart("application/dicom", ExplicitVRLittleEndian)
    )
    assert refused.status_code == 406 and JPEGLSLossless in refused.json()["detail"]
    assert client.get(url(data.undecodable)).status_code == 200  # as stored is always possible
    assert client.get(url(data.tree[0]), headers={"Accept": "image/jpeg"}).status_code == 406
    other = multipart("application/dicom", "1.2.840.10008.1.2.4.50")
    assert client.get(url(data.tree[0]), headers=other).status_code == 406


def test_retrieve_study_and_series(client: TestClient, data: Data) -> None:
    first = data.tree[0]
    study = parts(client.get(f"/dicomweb/studies/{first.StudyInstanceUID}"))
    assert len(study) == 6
    sent = {ds.SOPInstanceUID for ds in data.tree if ds.StudyInstanceUID == first.StudyInstanceUID}
    assert {pydicom.dcmread(BytesIO(body)).SOPInstanceUID for _, body in study} == sent
    series = parts(
        client.get(f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}")
    )
    assert len(series) == 3
    single = client.get(
        f"/dicomweb/studies/{first.StudyInstanceUID}", headers={"Accept": "application/dicom"}
    )
    assert single.status_code == 406
    assert client.get("/dicomweb/studies/1.2.3.4").status_code == 404


# --- WADO-RS: metadata and bulk data --------------------------------------------------------


def test_metadata_points_to_bulk_data(client: TestClient, data: Data) -> None:
    [metadata] = client.get(url(data.bulk, "/metadata")).json()
    assert metadata["00100020"]["Value"] == ["BULK1"]
    document_uri = metadata["00420011"]["BulkDataURI"]
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    assert document_uri.endswith(url(data.bulk, "/bulkdata/00420011"))
    [(content_type, body)] = parts(client.get(document_uri))
    assert content_type == OCTET and body == data.bulk.EncapsulatedDocument
    [(content_type, body)] = parts(client.get(pixel_uri))
    assert content_type.startswith(OCTET) and body == data.bulk.PixelData
    series = client.get(
        f"/dicomweb/studies/{data.tree[0].StudyInstanceUID}/series/"
        f"{data.tree[0].SeriesInstanceUID}/metadata"
    ).json()
    assert len(series) == 3 and all("BulkDataURI" in m["7FE00010"] for m in series)
    assert len(client.get(f"/dicomweb/studies/{data.tree[0].StudyInstanceUID}/metadata").json())
    assert client.get(url(data.bulk, "/bulkdata/00100010")).status_code == 404
    assert client.get(url(data.bulk, "/bulkdata/xyz")).status_code == 400


# --- WADO-RS: frames ------------------------------------------------------------------------


def test_frames_of_uncompressed_data(client: TestClient, data: Data) -> None:
    ds = data.multiframe
    size = 16 * 16 * 2
    for headers in ({}, multipart(OCTET), multipart(OCTET, ExplicitVRLittleEndian)):
        frames = parts(client.get(url(ds, "/frames/1,3"), headers=headers))
        assert [body for _, body in frames] == [ds.PixelData[:size], ds.PixelData[2 * size :]]
        assert frames[0][0] == f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}"
    assert client.get(url(ds, "/frames/4")).status_code == 404
    assert client.get(url(ds, "/frames/0")).status_code == 400
    assert client.get(url(ds, "/frames/1,x")).status_code == 400
    assert client.get(url(data.no_pixels, "/frames/1")).status_code == 404
    assert client.get(url(ds, "/frames/1"), headers=multipart("image/jpeg")).status_code == 406


def test_frames_of_compressed_data_as_stored_or_decoded(client: TestClient, data: Data) -> None:
    size = 32 * 32 * 2
    decoded = parts(client.get(url(data.rle, "/frames/2"), headers=multipart(OCTET)))
    assert decoded == [
        (f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}", data.rle_original.PixelData[size:])
    ]
    [(content_type, frame)] = parts(client.get(url(data.rle, "/frames/2")))
    assert content_type == f"image/dicom-rle; transfer-syntax={RLELossless}"
    assert len(frame) < size
    [(content_type, frame)] = parts(
        client.get(url(data.rle, "/frames/2"), headers=multipart(OCTET, "*"))
    )
    assert content_type == f"{OCTET}; transfer-syntax={RLELossless}"
    [(content_type, jpeg)] = parts(
        client.get(url(data.jpeg, "/frames/1"), headers=multipart("image/jpeg"))
    )
    assert content_type == f"image/jpeg; transfer-syntax={JPEGBaseline8Bit}"
    assert jpeg.startswith(b"\xff\xd8") and Image.open(BytesIO(jpeg)).size == (32, 32)
    refused = client.get(url(data.undecodable, "/frames/1"), headers=multipart(OCTET))
    assert refused.status_code == 406 and "image/jls" in refused.json()["detail"]
    [(content_type, _)] = parts(client.get(url(data.undecodable, "/frames/1")))
    assert content_type.startswith("image/jls")


# --- WADO-RS: rendered and thumbnails -------------------------------------------------------


def image_of(response: Response, media_type: str = "image/jpeg") -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    return Image.open(BytesIO(response.content))


def test_rendered_instance_and_frame(client: TestClient, data: Data) -> None:
    ct = data.tree[0]
    jpeg = image_of(client.get(url(ct, "/rendered")))
    assert jpeg.format == "JPEG" and jpeg.size == (64, 64) and jpeg.mode == "L"
    png = image_of(client.get(url(ct, "/rendered"), headers={"Accept": "image/png"}), "image/png")
    assert png.format == "PNG"
    by_param = client.get(url(ct, "/rendered"), params={"accept": "image/png"})
    assert by_param.headers["content-type"] == "image/png"
    # Browsers may keep a rendering for a while, never in a shared cache (it is PHI).
    assert by_param.headers["cache-control"] == "private, max-age=300"
    assert by_param.headers["vary"] == "Accept"
    small = image_of(client.get(url(ct, "/rendered"), params={"viewport": "32,16"}))
    assert small.size == (16, 16)
    frame = image_of(client.get(url(data.multiframe, "/frames/3/rendered")))
    assert frame.size == (16, 16)
    colour = image_of(
        client.get(url(data.rgb, "/rendered"), headers={"Accept": "image/png"}), "image/png"
    )
    assert colour.mode == "RGB" and colour.getpixel((31, 0)) == (255, 0, 0)
    assert image_of(client.get(url(data.jpeg, "/rendered"))).size == (32, 32)


def test_rendering_applies_window_and_monochrome1(client: TestClient, data: Data) -> None:
    def pixels(ds: Dataset, **params: str) -> np.ndarray:
        response = client.get(url(ds, "/rendered"), params={"accept": "image/png", **params})
        return np.asarray(image_of(response, "image/png"), dtype=np.int32)

    ct = data.monochrome2
    narrow, wide = pixels(ct, window="40,400"), pixels(ct, window="0,4000,linear-exact")
    assert not np.array_equal(narrow, wide)
    assert pixels(ct, window="-2000,10").min() == 255  # everything above the window
    assert pixels(ct, window="5000,10,sigmoid").max() == 0  # everything below it
    inverted = pixels(data.monochrome1, window="40,400")
    assert np.array_equal(inverted, 255 - narrow)
    assert np.array_equal(pixels(ct), narrow)  # the dataset's own window is 40/400


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"window": "40"}, "center,width"),
        ({"window": "a,b"}, "not a number"),
        ({"window": "40,0"}, "width"),
        ({"window": "40,400,cubic"}, "function"),
        ({"viewport": "0,10"}, "viewport"),
        ({"viewport": "100000,10"}, "limited"),
        ({"viewport": "1,2,3"}, "vw,vh"),
        ({"quality": "0"}, "quality"),
        ({"quality": "101"}, "quality"),
    ],
)
def test_bad_rendering_parameters_are_400(
    client: TestClient, data: Data, params: dict[str, str], reason: str
) -> None:
    response = client.get(url(data.tree[0], "/rendered"), params=params)
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_rendering_refusals(client: TestClient, data: Data) -> None:
    assert (
        client.get(url(data.tree[0], "/rendered"), headers={"Accept": "text/html"}).status_code
        == 406
    )
    no_pixels = client.get(url(data.no_pixels, "/rendered"))
    assert no_pixels.status_code == 406 and "pixel data" in no_pixels.json()["detail"]
    undecodable = client.get(url(data.undecodable, "/rendered"))
    assert undecodable.status_code == 406 and "decoder" in undecodable.json()["detail"]
    assert client.get(url(data.multiframe, "/frames/1,2/rendered")).status_code == 400


def test_thumbnails(client: TestClient, data: Data) -> None:
    first = data.tree[0]
    study = f"/dicomweb/studies/{first.StudyInstanceUID}"
    for path in (
        f"{study}/thumbnail",
        f"{study}/series/{first.SeriesInstanceUID}/thumbnail",
        url(first, "/thumbnail"),
        url(data.multiframe, "/frames/2/thumbnail"),
    ):
        thumbnail = image_of(client.get(path))
        assert max(thumbnail.size) <= 128, path
    sized = image_of(client.get(url(first, "/thumbnail"), params={"viewport": "40,40"}))
    assert sized.size == (40, 40)
    assert client.get(url(data.no_pixels, "/thumbnail")).status_code == 404


def test_the_deidentified_root_serves_its_own_namespace(client: TestClient, data: Data) -> None:
    assert client.get("/dicomweb/deidentified/studies").json() == []
    assert client.get(url(data.tree[0], root="/dicomweb/deidentified")).status_code == 404


# --- STOW-RS --------------------------------------------------------------------------------


def stow(client: TestClient, payloads: list[bytes], path: str = "/dicomweb/studies") -> Response:
    boundary = "dicomflow-test-boundary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in payloads
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return client.post(
        path,
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )


def test_stow_answers_with_referenced_and_failed_sop_sequences(client: TestClient) -> None:
    new = [_variant("STOW1"), make_instance(PatientSpec(patient_id="STOW1"), 0, 0, 1)]
    stored = stow(client, [part10(ds) for ds in new])
    assert stored.status_code == 200 and stored.headers["content-type"] == "application/dicom+json"
    response = Dataset.from_json(stored.json())
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{new[0].StudyInstanceUID}")
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in new
    ]
    assert response.ReferencedSOPSequence[0].RetrieveURL.endswith(url(new[0]))
    assert "FailedSOPSequence" not in response

    mixed = stow(client, [part10(new[0]), b"not DICOM at all"])
    assert mixed.status_code == 202
    failed = Dataset.from_json(mixed.json()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [0xC000]

    other_study = f"/dicomweb/studies/{new[0].StudyInstanceUID}9"
    mismatch = stow(client, [part10(new[0])], other_study)
    assert mismatch.status_code == 409
    [item] = Dataset.from_json(mismatch.json()).FailedSOPSequence
    assert item.FailureReason == 0xA900
    assert item.ReferencedSOPInstanceUID == new[0].SOPInstanceUID

    assert stow(client, []).status_code == 400
    wrong_type = client.post(
        "/dicomweb/studies",
        content=b"{}",
        headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'},
    )
    assert wrong_type.status_code == 415


def test_dicom_json_bodies_are_the_json_of_their_content() -> None:
    content = [
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg=山田^太郎"}]},
            "00280030": {"vr": "DS", "Value": [0.1, 1e16, 2.5e-7]},
            "00200013": {"vr": "IS", "Value": [3]},
            "00081030": {"vr": "LO"},
            "00081140": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2"]}}]},
        }
    ]
    response = DicomJSONResponse(content)
    assert response.media_type == "application/dicom+json"
    assert json.loads(response.body) == content
    assert "Müller".encode() in response.body  # UTF-8, as the standard's encoder wrote it
    # A value that JSON cannot carry never makes the body invalid.
    odd = DicomJSONResponse([{"00280030": {"vr": "DS", "Value": [float("nan")]}}])
    assert json.loads(odd.body) == [{"00280030": {"vr": "DS", "Value": [None]}}]
