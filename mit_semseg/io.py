"""Reading images and annotation maps, with errors that name the file.

``read_image`` always returns an 8-bit RGB ``PIL.Image``; ``read_annotation``
returns a 2-D integer array of class indices (0 = unlabeled, k = class k).
Every problem raises ``DatasetError`` (a ``ValueError``) whose message starts
with the offending path; the datasets add the odgt file and line.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DatasetError", "read_image", "to_rgb", "read_annotation", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Modes PIL converts to RGB without losing meaning (alpha is dropped, as the
# original's ``convert('RGB')`` does).
_DIRECT_TO_RGB = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "1", "P", "PA",
                  "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class DatasetError(ValueError):
    """An input file or list entry is missing, unreadable or inconsistent.

    Constructed from a single message string, so a DataLoader worker can
    re-raise it in the main process with the same type.
    """


def _open(path: str, what: str) -> Image.Image:
    """Open and fully decode ``path`` (PIL decodes lazily; truncation shows on load)."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: {what} file not found")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} path is not a file")
    try:
        with warnings.catch_warnings():
            # Palette+transparency conversions warn; decompression-bomb sizes are
            # legitimate for large photos and are not a reason to fail here.
            warnings.simplefilter("ignore")
            img = Image.open(path)
            img.load()
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: cannot read {what}: not an image file PIL recognises") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: {what} refused by PIL as too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read {what} (corrupt or truncated file): {exc}") from None
    return img


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's own conversion clips 16-bit values at 255 (nearly white images);
    # rescale the 0..65535 range to 0..255 instead.
    arr = np.asarray(img, dtype=np.float64)
    arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


def read_image(path: str, exif_transpose: bool = False) -> Image.Image:
    """Read ``path`` as an 8-bit RGB image.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit grayscale
    images are converted to RGB. With ``exif_transpose`` the pixels are rotated
    by the photo's EXIF orientation (use it for test-time photos, not for
    training images whose annotation follows the stored pixel layout).
    """
    img = _open(path, "image")
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # malformed EXIF block: keep the stored orientation
            pass
    return to_rgb(img, path)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """``img`` (decoded) as 8-bit RGB, converted as ``read_image`` does; raises
    DatasetError naming ``name`` for modes without an RGB meaning (e.g. float)."""
    if img.mode in _SIXTEEN_BIT:
        return _sixteen_bit_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in _DIRECT_TO_RGB:
        raise DatasetError(f"{name}: unsupported image mode {img.mode!r}")
    return img.convert("RGB") if img.mode != "RGB" else img


def read_annotation(path: str, num_class: int | None = None) -> np.ndarray:
    """Read a class-index map: 2-D array, 0 = unlabeled, k = class k (1..num_class).

    Accepted: 8-bit grayscale ("L"), palette ("P": the palette indices are the
    classes), 1-bit, 16-bit grayscale, and 3/4-channel files whose colour
    channels are all equal. A colour-coded annotation (channels differ), a
    float image or, when ``num_class`` is given, any value above ``num_class``
    raises ``DatasetError``. dtype is uint8, or int32 for 16-bit maps.
    """
    img = _open(path, "annotation")
    mode = img.mode
    if mode in ("L", "P"):
        arr = np.asarray(img)
    elif mode in ("LA", "La", "PA"):
        arr = np.asarray(img)[..., 0]
    elif mode == "1":
        arr = np.asarray(img).astype(np.uint8)
    elif mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.int32)
        if arr.size and arr.min() < 0:
            raise DatasetError(f"{path}: annotation holds negative values (min {arr.min()})")
    elif mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img)[..., :3]
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        if not (np.array_equal(r, g) and np.array_equal(r, b)):
            raise DatasetError(
                f"{path}: annotation is a colour-coded {mode} image (its channels differ); "
                "expected class indices in a single-channel (L or P mode) PNG, "
                "0 = unlabeled, k = class k")
        arr = np.ascontiguousarray(r)
    else:
        raise DatasetError(f"{path}: unsupported annotation mode {mode!r}; "
                           "expected class indices in an L or P mode PNG")
    if num_class is not None and arr.size:
        top = int(arr.max())
        if top > num_class:
            count = int((arr > num_class).sum())
            raise DatasetError(
                f"{path}: annotation value {top} is above num_class={num_class} "
                f"({count} pixels > {num_class}; values must be 0 = unlabeled or 1..{num_class})")
    return arr
