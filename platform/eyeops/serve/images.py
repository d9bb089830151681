"""Turning untrusted request bytes into RGB images, safely.

Formats are recognised by their magic bytes, never by a client-supplied name or content type.
Pixel counts are checked from the header *before* any pixel is decoded, so a decompression bomb
costs a few header bytes, not gigabytes. Every failure is an :class:`EyeopsError` (4xx).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from eyeops.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

ImageFormat = Literal["jpeg", "png", "tiff", "dicom"]
ACCEPTED_FORMATS: tuple[ImageFormat, ...] = ("jpeg", "png", "tiff", "dicom")
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF"}
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.IGNORECASE
)


def sniff_format(data: bytes, *, field: str = "image") -> ImageFormat:
    """The image format from magic bytes; 415 naming ``field`` for anything we do not accept."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    raise UnsupportedMediaType(
        f"{field}: unsupported format (first bytes {data[:8].hex() or 'empty'}); "
        f"accepted: {', '.join(ACCEPTED_FORMATS)}"
    )


def decode_base64(text: str, *, field: str = "image_b64") -> bytes:
    """Strict base64 (standard alphabet, whitespace tolerated); 400 naming the field otherwise."""
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"{field}: expected a non-empty base64 string")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{field}: not valid base64 ({exc})") from None


def decode_data_url(url: str, *, field: str = "image_url.url") -> bytes:
    """Bytes of a ``data:[mime];base64,...`` URL. Remote URLs are refused: servers never fetch."""
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        shown = url[:32] if isinstance(url, str) else type(url).__name__
        raise InvalidRequest(f"{field}: only data: URLs with base64 images are accepted, got {shown!r}…")
    if not match.group("b64"):
        raise InvalidRequest(f"{field}: data URL must be base64-encoded (';base64,')")
    return decode_base64(url[match.end() :], field=field)


def decode_image(data: bytes, *, max_pixels: int, field: str = "image") -> Image.Image:
    """Decode JPEG/PNG/TIFF/DICOM bytes into an RGB image after checking the pixel count."""
    if not data:
        raise InvalidRequest(f"{field}: empty image")
    fmt = sniff_format(data, field=field)
    if fmt == "dicom":
        return _decode_dicom(data, max_pixels=max_pixels, field=field)
    with warnings.catch_warnings():
        # PIL warns (rather than raises) between MAX_IMAGE_PIXELS and 2× it; we refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
            _check_pixels(image.width, image.height, 1, max_pixels, field)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLarge(f"{field}: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidRequest(f"{field}: corrupt or truncated {fmt} image ({exc})") from None
    return image if image.mode == "RGB" else image.convert("RGB")  # a JPEG is RGB already: no copy


def _check_pixels(width: int, height: int, frames: int, max_pixels: int, field: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"{field}: image has no pixels ({width}×{height})")
    if width * height * frames > max_pixels:
        raise PayloadTooLarge(f"{field}: {width}×{height}×{frames} pixels exceeds the limit of {max_pixels}")


def _decode_dicom(data: bytes, *, max_pixels: int, field: str) -> Image.Image:
    """First frame of a DICOM image as RGB, windowed to 8 bits. Only pixel data is used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{field}: corrupt DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise InvalidRequest(f"{field}: DICOM file has no PixelData")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels(cols, rows, int(ds.get("NumberOfFrames", 1) or 1), max_pixels, field)
    try:
        pixels = np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:  # compressed syntax without a handler
        raise UnsupportedMediaType(f"{field}: cannot decode this DICOM transfer syntax ({exc})") from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError) as exc:
        raise InvalidRequest(f"{field}: corrupt DICOM pixel data ({exc})") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise InvalidRequest(f"{field}: unsupported DICOM pixel layout {tuple(pixels.shape)}")
    pixels = pixels[..., :3].astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="RGB")
