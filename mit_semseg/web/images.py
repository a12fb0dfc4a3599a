"""Uploaded bytes -> RGB photo, and the PNGs the demo serves (no web framework here).

``decode_upload`` reads a photo the way ``test.py`` reads a file (EXIF
orientation applied, any mode converted to RGB by ``mit_semseg.data.io.to_rgb``),
so the labels equal test.py's for the same settings. Every problem raises
``UploadError`` with the HTTP status the server answers with.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.classes import colorEncode
from ..data.io import DatasetError, confidence_uint8, to_rgb
from ..data.labelmap import label_map_image

__all__ = ["UploadError", "decode_upload", "label_png", "label_png_rgb", "read_label_png",
           "result_png", "confidence_png"]


class UploadError(ValueError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image rotated by its EXIF orientation.

    Empty data, a file PIL does not recognise, a corrupt or truncated file and an
    image above ``max_pixels`` (default: PIL's ``Image.MAX_IMAGE_PIXELS``, whose
    DecompressionBombWarning is treated as an error) raise UploadError; the size
    is checked from the header, before the pixels are decoded.
    """
    if not data:
        raise UploadError(400, f"{name}: empty upload (0 bytes); choose an image file")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if limit and width * height > limit:
            raise UploadError(413, f"{name}: image of {width}x{height} = {width * height} pixels "
                                   f"is above the limit of {limit} pixels (decompression bomb?)")
        img.load()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image file (PIL recognises no image format "
                               f"in its {len(data)} bytes); upload a JPEG, PNG, WebP, BMP, "
                               f"GIF or TIFF photo") from None
    except Image.DecompressionBombError as exc:
        raise UploadError(413, f"{name}: image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(400, f"{name}: cannot decode the image (corrupt or truncated "
                               f"file): {exc}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF block: keep the stored orientation, as test.py
        pass
    try:
        return to_rgb(img, name)
    except DatasetError as exc:
        raise UploadError(415, str(exc)) from None


def _png(arr: np.ndarray) -> bytes:
    """uint8 H x W -> L, uint16 H x W -> I;16, uint8 H x W x 3 -> RGB."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def label_png(labels: np.ndarray, num_class: int, colors: np.ndarray | None = None) -> bytes:
    """The label map as a PNG in the ADE20K convention: value k+1 for 0-based class k
    (0 would be unlabeled), written by ``data.labelmap``: 8-bit grayscale up to 255
    classes (indexed, with ``colors`` as the palette, when they are given), else
    16-bit grayscale."""
    buf = io.BytesIO()
    label_map_image(labels, num_class, colors).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def label_png_rgb(labels: np.ndarray) -> bytes:
    """The label map packed in an RGB PNG for pages (canvases decode 8 bits per
    channel): value k+1 for class k as red = (k+1) mod 256, green = (k+1) div 256."""
    value = (labels + 1).astype(np.uint32)
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = value & 255
    rgb[..., 1] = value >> 8
    return _png(rgb)


def read_label_png(data: bytes) -> np.ndarray:
    """Inverse of ``label_png``: H x W int64 array of 0-based classes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).astype(np.int64) - 1


def result_png(photo: Image.Image, labels: np.ndarray, colors: np.ndarray) -> bytes:
    """The photo and its colourised labels side by side, as ``test.py`` writes them."""
    row = np.concatenate([np.asarray(photo), colorEncode(labels, colors)], axis=1)
    return _png(row.astype(np.uint8))


def confidence_png(confidence: np.ndarray) -> bytes:
    """The confidence map (H x W probabilities) as 8-bit grayscale PNG, value
    round(255 p), as test.py writes it (TEST.confidence)."""
    return _png(confidence_uint8(confidence))
