"""Pixel data for DICOMweb: frames, transcoding between transfer syntaxes, rendered images.

Everything decodes with pydicom's pixel handlers (numpy; Pillow for JPEG and JPEG 2000; its
own RLE decoder) and encodes images with Pillow. What cannot be decoded here (JPEG Lossless,
JPEG-LS, video... without extra plugins) is served as stored only; asking for another
representation of it is answered 406 Not Acceptable by the routes.

Rendering (PS3.18 8.3.5, PS3.3 C.11): Modality LUT (rescale slope/intercept or LUT), then VOI
(the ``window`` query parameter, else the dataset's first window or VOI LUT, else the range of
the frame), MONOCHROME1 inverted, colour as RGB, then scaled to the viewport.
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, ImageOps
from pydicom import encaps
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import get_expected_length, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomflow.api.exceptions import PixelDataError

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
OCTET_STREAM = "application/octet-stream"

# The media type of the frames of each compressed transfer syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}

RENDERED_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
MAX_VIEWPORT = 4096
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = (128, 128)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class RenderParameterError(PixelDataError, ValueError):
    """A rendering query parameter (window, viewport, quality) that is malformed."""


class FrameNotFound(PixelDataError):
    """A frame number beyond the frames of the instance."""


# --- transfer syntaxes ----------------------------------------------------------------------


def is_native(syntax: str) -> bool:
    """Whether `syntax` holds pixel data natively (not encapsulated)."""
    return not UID(syntax).is_encapsulated


def can_decode(syntax: str) -> bool:
    """Whether this installation can decode pixel data stored in `syntax`."""
    uid = UID(syntax)
    if not uid.is_encapsulated:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(syntax: str) -> bool:
    """Whether an object stored in `syntax` can be re-encoded uncompressed (little endian).

    Retired Explicit VR Big Endian objects are served as stored only.
    """
    return syntax != ExplicitVRBigEndian and can_decode(syntax)


def frame_media_type(syntax: str) -> str:
    """The media type of one frame stored in `syntax` (octet-stream when native)."""
    return OCTET_STREAM if is_native(syntax) else FRAME_MEDIA_TYPES.get(syntax, OCTET_STREAM)


def read_dataset(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise PixelDataError(f"the stored object cannot be read: {type(exc).__name__}") from exc


def _decompress(ds: Dataset) -> None:
    """Decode encapsulated pixel data in place (Explicit VR Little Endian, same UIDs)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not can_decode(syntax):
        raise PixelDataError(f"no decoder for pixel data in {syntax.name} ({syntax})")
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:
        raise PixelDataError(f"the pixel data cannot be decoded: {exc}") from exc


def transcode(data: bytes, target: str) -> bytes:
    """A Part 10 object re-encoded in `target`, an uncompressed transfer syntax.

    Encapsulated pixel data is decoded first; UIDs and every other attribute are kept.
    """
    ds = read_dataset(data)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax == target:
        return data
    if syntax.is_encapsulated:
        _decompress(ds)
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as exc:
        raise PixelDataError(f"the object cannot be written as {UID(target).name}: {exc}") from exc
    return buffer.getvalue()


# --- frames ---------------------------------------------------------------------------------


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def check_frame_numbers(ds: Dataset, numbers: Sequence[int]) -> None:
    if "PixelData" not in ds:
        raise PixelDataError("the instance has no pixel data (0x7FE00010)")
    count = number_of_frames(ds)
    outside = [n for n in numbers if not 1 <= n <= count]
    if outside:
        raise FrameNotFound(f"frame {outside[0]} does not exist: the instance has {count} frame(s)")


def stored_frames(ds: Dataset, numbers: Sequence[int]) -> list[bytes]:
    """Frames as stored: the encapsulated frame, or the native bytes (little endian)."""
    check_frame_numbers(ds, numbers)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_encapsulated:
        count = number_of_frames(ds)
        try:
            return [encaps.get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
        except Exception as exc:
            raise PixelDataError(f"the encapsulated pixel data is malformed: {exc}") from exc
    return native_frames(ds, numbers)


def native_frames(ds: Dataset, numbers: Sequence[int]) -> list[bytes]:
    """Frames as uncompressed little-endian bytes, decoding encapsulated pixel data."""
    check_frame_numbers(ds, numbers)
    if UID(ds.file_meta.TransferSyntaxUID).is_encapsulated:
        _decompress(ds)
    count = number_of_frames(ds)
    bits = int(ds.get("BitsAllocated") or 8)
    total_bits = get_expected_length(ds, unit="pixels") * bits
    if bits == 1 and (total_bits // count) % 8:
        raise PixelDataError("1-bit frames that do not end on a byte boundary are not supported")
    length = get_expected_length(ds, unit="bytes") // count
    data: bytes = ds.PixelData
    if not ds.original_encoding[1] and bits > 8:  # big endian: frames are little endian
        data = np.frombuffer(data, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
    frames = [data[(n - 1) * length : n * length] for n in numbers]
    if any(len(frame) != length for frame in frames):
        raise PixelDataError("the pixel data is shorter than its attributes say")
    return frames


# --- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and function."""

    center: float
    width: float
    function: str = "linear"  # linear, linear-exact or sigmoid


@dataclass(frozen=True)
class Viewport:
    """The size of the rendered image and, optionally, the source region (sx, sy, sw, sh)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


_FUNCTIONS = {
    "linear": "linear",
    "linear-exact": "linear-exact",
    "linear_exact": "linear-exact",
    "sigmoid": "sigmoid",
}


def _float(text: str, what: str) -> float:
    text = text.strip()
    if not _NUMBER.match(text):
        raise RenderParameterError(f"{what} {text[:20]!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise RenderParameterError(f"{what} must be finite")
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (function: linear, linear-exact or sigmoid)."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise RenderParameterError(
            f"window {text[:40]!r} is not center,width[,function] (e.g. 40,400,linear)"
        )
    center = _float(parts[0], "window center")
    width = _float(parts[1], "window width")
    function = _FUNCTIONS.get(parts[2].strip().lower() if len(parts) == 3 else "linear")
    if function is None:
        raise RenderParameterError(
            f"window function {parts[2][:20]!r} is not linear, linear-exact or sigmoid"
        )
    if width <= 0 or (function == "linear" and width < 1):
        raise RenderParameterError(
            "window width must be positive (at least 1 for the linear function)"
        )
    return Window(center, width, function)


def _int(text: str, what: str, minimum: int) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,6}", text):
        raise RenderParameterError(f"{what} {text[:20]!r} is not a whole number")
    value = int(text)
    if value < minimum:
        raise RenderParameterError(f"{what} must be at least {minimum}")
    return value


def parse_viewport(text: str) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (negative sw/sh flip the region)."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise RenderParameterError(f"viewport {text[:40]!r} is not vw,vh or vw,vh,sx,sy,sw,sh")
    width = _int(parts[0], "viewport width", 1)
    height = _int(parts[1], "viewport height", 1)
    if width > MAX_VIEWPORT or height > MAX_VIEWPORT:
        raise RenderParameterError(f"viewport is limited to {MAX_VIEWPORT}x{MAX_VIEWPORT}")
    region = None
    if len(parts) == 6:
        sx, sy = _int(parts[2], "sx", 0), _int(parts[3], "sy", 0)
        sw, sh = _int(parts[4], "sw", -(10**6)), _int(parts[5], "sh", -(10**6))
        if sw == 0 or sh == 0:
            raise RenderParameterError("the viewport region must not be empty")
        region = (sx, sy, sw, sh)
    return Viewport(width, height, region)


def parse_quality(text: str) -> int:
    quality = _int(text, "quality", 1)
    if quality > 100:
        raise RenderParameterError("quality must be between 1 and 100")
    return quality


def apply_window(values: NDArray[np.float64], window: Window) -> NDArray[np.float64]:
    """`values` through a VOI window into 0..255 (PS3.3 C.11.2.1.2.1 and .2)."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "linear-exact":
        return np.clip(((values - c) / w + 0.5) * 255.0, 0.0, 255.0)
    low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    scaled = ((values - (c - 0.5)) / max(w - 1, 1e-9) + 0.5) * 255.0
    return np.where(values <= low, 0.0, np.where(values > high, 255.0, scaled))


def _stretch(values: NDArray[np.float64]) -> NDArray[np.float64]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _dataset_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, Sequence) else center)
        w = float(width[0] if isinstance(width, Sequence) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = _FUNCTIONS.get(str(ds.get("VOILUTFunction", "LINEAR")).strip().lower())
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        return None
    return Window(c, max(w, 1.0) if function in (None, "linear") else w, function or "linear")


def _grayscale(arr: NDArray[np.generic], ds: Dataset, window: Window | None) -> NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window is None and "VOILUTSequence" in ds and "WindowCenter" not in ds:
        out = _stretch(np.asarray(apply_voi_lut(values, ds), dtype=np.float64))
    else:
        chosen = window or _dataset_window(ds)
        out = apply_window(values, chosen) if chosen else _stretch(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _colour(arr: NDArray[np.generic], ds: Dataset) -> NDArray[np.uint8]:
    bits = int(ds.get("BitsStored") or 8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 8 if arr.dtype == np.uint8 else 16
    if arr.dtype == np.uint8:
        return np.asarray(arr, dtype=np.uint8)
    scaled = np.asarray(arr, dtype=np.float64) * (255.0 / float(2**bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def frame_image(ds: Dataset, frame: int, window: Window | None = None) -> Image.Image:
    """Frame `frame` (1-based) as an 8-bit grayscale or RGB image, VOI applied."""
    check_frame_numbers(ds, [frame])
    try:
        arr = pixel_array(ds, index=frame - 1)
    except Exception as exc:
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        if not can_decode(syntax):
            raise PixelDataError(f"no decoder for pixel data in {syntax.name}") from exc
        raise PixelDataError(f"the pixel data cannot be decoded: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples == 1 and photometric != "PALETTE COLOR":
        if arr.ndim != 2:
            raise PixelDataError(f"unexpected frame shape {arr.shape}")
        return Image.fromarray(_grayscale(arr, ds, window), mode="L")
    rgb = _colour(arr, ds)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise PixelDataError(f"unexpected colour frame shape {rgb.shape}")
    return Image.fromarray(rgb, mode="RGB")


def fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """`image` cropped to the viewport's region, then scaled to fit it (aspect kept)."""
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        image = image.crop((left, top, right, bottom))
        if sw < 0:
            image = ImageOps.mirror(image)
        if sh < 0:
            image = ImageOps.flip(image)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image


def encode_image(image: Image.Image, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    buffer = BytesIO()
    image_format = RENDERED_MEDIA_TYPES[media_type]
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=image_format)
    return buffer.getvalue()


def render(
    ds: Dataset,
    frame: int,
    media_type: str,
    *,
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int = DEFAULT_QUALITY,
) -> bytes:
    """Frame `frame` (1-based) of `ds` rendered as `media_type` (JPEG, PNG or GIF)."""
    return encode_image(fit(frame_image(ds, frame, window), viewport), media_type, quality)
