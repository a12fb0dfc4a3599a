"""Reading images and annotation maps, with errors that name the file.

``read_image`` always returns an 8-bit RGB ``PIL.Image``; ``read_annotation``
returns a 2-D integer array of class indices in ADE20K's convention (0 =
unlabeled, k = class k), whatever convention the file uses (``LabelFormat``):

* ``ade20k`` (default): stored as is; values above num_class are errors.
* ``zero_based``: 0..N-1 are the classes and ``ignore_label`` (e.g. 255) is
  unlabeled (VOC, Cityscapes train ids); value v becomes v + 1, the ignore
  value 0; any other value is an error.
* ``rgb``: colour-coded masks; each colour of the class table becomes its
  class, the table's unlabeled colours 0; any other colour is an error.

Palette ("P") PNGs are read as their indices in the two index formats, as
their colours in ``rgb``. Files are never rewritten. Every problem raises
``DatasetError`` (a ``ValueError``) whose message starts with the offending
path and lists the offending values; the datasets add the odgt file and line.
"""
from __future__ import annotations

import os
import warnings

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MitSemsegError

__all__ = ["DatasetError", "UnknownColorsError", "LabelFormat", "LABEL_FORMATS", "read_image",
           "to_rgb", "read_annotation", "IMAGE_EXTENSIONS", "find_recursive", "write_png", "write_probs", "confidence_uint8"]

LABEL_FORMATS = ("ade20k", "zero_based", "rgb")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Modes PIL converts to RGB without losing meaning (alpha is dropped, as the
# original's ``convert('RGB')`` does).
_DIRECT_TO_RGB = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "1", "P", "PA",
                  "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@dataclass(frozen=True)
class LabelFormat:
    """How class labels are stored in annotation files (see the module docstring).

    ``kind``: one of ``LABEL_FORMATS``. ``num_class``: classes (None: no upper
    check, ade20k/zero_based only). ``ignore_label``: the unlabeled value of
    ``zero_based`` (negative: none). ``colors``: N x 3 class colours and
    ``unlabeled_colors``: M x 3 colours read as unlabeled (``rgb`` only).
    """

    kind: str = "ade20k"
    num_class: int | None = None
    ignore_label: int = 255
    colors: np.ndarray | None = None
    unlabeled_colors: np.ndarray | None = None


class DatasetError(MitSemsegError, ValueError):
    """An input file or list entry is missing, unreadable or inconsistent.

    Constructed from a single message string, so a DataLoader worker can
    re-raise it in the main process with the same type.
    """


class UnknownColorsError(DatasetError):
    """A colour-coded annotation holds colours that are not in the class table.

    ``colors``: ``[((r, g, b), pixels), ...]`` of every such colour, so a check
    of many masks can report a colour once instead of once per mask.
    """

    colors: list[tuple[tuple[int, int, int], int]]


# What to do about a colour that marks unlabeled pixels (``datatools check`` says it
# once for all masks, fitted to the class table's layout).
_UNLABELED_HINT = ("if it marks unlabeled pixels, add a row 'Idx 0' for it to the class "
                        "table (e.g. 0,unlabeled,{r},{g},{b}, with the classes numbered 1..N) or "
                        "set DATASET.ignore_colors [[{r}, {g}, {b}]]")


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


def _read_indices(path: str, img: Image.Image) -> np.ndarray:
    """The stored class-index values of an annotation (before any convention)."""
    mode = img.mode
    if mode in ("L", "P"):
        return np.asarray(img)
    if mode in ("LA", "La", "PA"):
        return np.asarray(img)[..., 0]
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.int32)
        if arr.size and arr.min() < 0:
            raise DatasetError(f"{path}: annotation holds negative values (min {arr.min()})")
        return arr
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img)[..., :3]
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        if not (np.array_equal(r, g) and np.array_equal(r, b)):
            raise DatasetError(
                f"{path}: annotation is a colour-coded {mode} image (its channels differ); "
                "expected class indices in a single-channel (L or P mode) PNG, or set "
                "DATASET.label_format rgb with a class table of colours")
        return np.ascontiguousarray(r)
    raise DatasetError(f"{path}: unsupported annotation mode {mode!r}; "
                       "expected class indices in an L or P mode PNG")


def _value_list(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    order = np.argsort(values)
    shown = [f"{int(values[i])} ({int(counts[i])} px)" for i in order[:limit]]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(shown) + more


def _offending(arr: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(arr[bad], return_counts=True)


def _ade20k(path: str, arr: np.ndarray, num_class: int | None) -> np.ndarray:
    if num_class is not None and arr.size and int(arr.max()) > num_class:
        bad = arr > num_class
        values, counts = _offending(arr, bad)
        raise DatasetError(
            f"{path}: annotation value {int(values.max())} is above num_class={num_class} "
            f"({int(bad.sum())} pixels > {num_class}; values must be 0 = unlabeled or "
            f"1..{num_class}; offending values: {_value_list(values, counts)})")
    return arr


def _zero_based(path: str, arr: np.ndarray, fmt: LabelFormat) -> np.ndarray:
    arr = arr.astype(np.int32, copy=False)
    ignore = arr == fmt.ignore_label if fmt.ignore_label >= 0 else np.zeros(arr.shape, bool)
    if fmt.num_class is not None:
        bad = ~ignore & (arr >= fmt.num_class)
        if bad.any():
            values, counts = _offending(arr, bad)
            ign = f" or the ignore value {fmt.ignore_label}" if fmt.ignore_label >= 0 else ""
            raise DatasetError(
                f"{path}: annotation values outside the zero_based convention (classes "
                f"0..{fmt.num_class - 1}{ign}, DATASET.num_class={fmt.num_class}, "
                f"DATASET.ignore_label={fmt.ignore_label}): {_value_list(values, counts)}")
    out = arr + 1
    out[ignore] = 0
    top = fmt.num_class if fmt.num_class is not None else int(out.max(initial=0))
    return out.astype(np.uint8) if top <= 255 else out


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.int32).reshape(-1, 3)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def _rgb(path: str, img: Image.Image, fmt: LabelFormat) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        raise DatasetError(f"{path}: annotation mode {img.mode!r} is not a colour image "
                           f"(DATASET.label_format rgb expects colour-coded RGB or P masks)")
    rgb = np.asarray(img.convert("RGB"))
    packed = _pack(rgb).reshape(rgb.shape[:2])
    colors = fmt.colors if fmt.colors is not None else np.zeros((0, 3), np.uint8)
    unlabeled = fmt.unlabeled_colors if fmt.unlabeled_colors is not None else np.zeros((0, 3))
    table = {int(c): k + 1 for k, c in enumerate(_pack(colors))}
    table.update({int(c): 0 for c in _pack(unlabeled)})
    values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    mapped = np.asarray([table.get(int(v), -1) for v in values], np.int32)
    unknown = mapped < 0
    if unknown.any():
        found = [((v >> 16, (v >> 8) & 255, v & 255), int(n))
                 for v, n in zip(values[unknown].tolist(), counts[unknown])]
        found.sort(key=lambda item: -item[1])
        shown = [f"{rgb} ({n} px)" for rgb, n in found[:8]]
        more = f" and {len(found) - 8} more" if len(found) > 8 else ""
        exc = UnknownColorsError(
            f"{path}: colours not in the class table (DATASET.label_format rgb): "
            f"{', '.join(shown)}{more}; "
            + _UNLABELED_HINT.format(r=found[0][0][0], g=found[0][0][1], b=found[0][0][2]))
        exc.colors = found
        raise exc
    labels = mapped[inverse.reshape(-1)].reshape(packed.shape)
    return labels.astype(np.uint8) if len(colors) <= 255 else labels


def read_annotation(path: str, num_class: int | None = None,
                    label_format: LabelFormat | None = None) -> np.ndarray:
    """Read an annotation as a class-index map: 2-D array, 0 = unlabeled, k = class k.

    ``label_format`` (default: ADE20K's convention with ``num_class``) says how
    the file stores the classes; see the module docstring. Accepted files:
    8-bit grayscale ("L"), palette ("P"), 1-bit, 16-bit grayscale, and 3/4-channel
    files whose colour channels are all equal (index formats), or any colour
    image (``rgb``). A value or colour outside the convention raises
    ``DatasetError`` listing the offending values and their pixel counts. dtype
    is uint8, or int32 when the classes do not fit.
    """
    fmt = label_format or LabelFormat("ade20k", num_class)
    img = _open(path, "annotation")
    if fmt.kind == "rgb":
        return _rgb(path, img, fmt)
    arr = _read_indices(path, img)
    if fmt.kind == "zero_based":
        return _zero_based(path, arr, fmt)
    return _ade20k(path, arr, fmt.num_class if fmt.num_class is not None else num_class)


def find_recursive(root_dir: str, ext: str | Sequence[str] = ".jpg") -> list[str]:
    """Files under ``root_dir`` (recursively, sorted) whose name ends with ``ext``
    (a suffix or a sequence of them, e.g. ``IMAGE_EXTENSIONS``), compared
    case-insensitively. The default is the original's ``.jpg``."""
    exts = (ext,) if isinstance(ext, str) else tuple(ext)
    exts = tuple(e.lower() for e in exts)
    found = []
    for root, dirs, names in os.walk(root_dir):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(exts)]
    return found


def write_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 image array as PNG, creating the folder. zlib level 1: the same
    pixels, about 3x faster to write than PIL's default level 6, files a few
    percent larger."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def confidence_uint8(confidence: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(255 p)`` (255 = 1.0): how confidence
    maps are stored as 8-bit grayscale PNGs (test.py, the web API)."""
    return np.clip(np.rint(np.asarray(confidence, np.float32) * 255), 0, 255).astype(np.uint8)


def write_probs(probs: Any, path: str) -> None:
    """``np.savez(path, probs=[C, H, W] float16)`` (uncompressed: written at disk
    speed; about 2 C H W bytes), creating the folder."""
    arr = probs.numpy() if torch.is_tensor(probs) else np.asarray(probs)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:  # a file object: savez adds no second extension
        np.savez(fh, probs=np.ascontiguousarray(arr, dtype=np.float16))
