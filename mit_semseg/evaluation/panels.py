"""The worst images' panels: image | ground truth | prediction | errors.

``error_map`` and ``panel_tiles`` draw one image's tiles; ``WorstPanels``
keeps the panels of the lowest-scoring images while an evaluation runs (and
merges what other processes kept); ``png_bytes`` encodes a picture as the
report page embeds it.
"""
from __future__ import annotations

import heapq
import io
import math
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["TILE_LABELS", "error_map", "panel_tiles", "png_bytes", "WorstPanels"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the captions of a four-tile panel, in the order of panel_tiles
TILE_LABELS = ("image", "ground truth", "prediction", "errors")


def error_map(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: wrongly predicted pixels red, correct ones a dimmed grey copy of
    ``image`` (HxWx3 or HxW uint8), unlabeled pixels (``label < 0``) black."""
    label, pred = np.asarray(label), np.asarray(pred)
    img = np.asarray(image)
    if label.shape != pred.shape or img.shape[:2] != label.shape:
        raise ValueError(f"shapes differ: image {img.shape}, label {label.shape}, "
                         f"prediction {pred.shape}")
    gray = img.astype(np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    dim = (60 + 0.45 * gray).astype(np.uint8)
    out = np.repeat(dim[..., None], 3, axis=2)
    labeled = label >= 0
    wrong = labeled & (pred != label)
    # keep a little of the image's shading in the red so shapes stay visible
    out[wrong] = np.stack([np.full(int(wrong.sum()), 255, np.uint8),
                           (0.25 * gray[wrong]).astype(np.uint8),
                           (0.25 * gray[wrong]).astype(np.uint8)], axis=1)
    out[~labeled] = 0
    return out


def _colorize(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Label map -> HxWx3 uint8 with ``colors[k]``; unlabeled and unknown values black."""
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    table = np.concatenate([colors, np.zeros((1, 3), np.uint8)])
    idx = np.where((labels >= 0) & (labels < len(colors)), labels, len(colors))
    return table[idx]


def _shrink(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    # label colours stay exact (nearest); photos and error maps are area-averaged
    resample = Image.NEAREST if nearest else Image.BOX
    return np.asarray(Image.fromarray(arr).resize(size, resample=resample))


def panel_tiles(image: np.ndarray, label: np.ndarray, pred: np.ndarray, colors: np.ndarray,
                *, max_side: int = 160) -> list[np.ndarray]:
    """[image, ground truth, prediction, errors] as HxWx3 uint8 tiles, scaled down so
    the longer side is at most ``max_side``. ``colors``: Kx3 uint8 class colours."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    label, pred = np.asarray(label), np.asarray(pred)
    tiles = [image, _colorize(label, colors), _colorize(pred, colors),
             error_map(image, label, pred)]
    h, w = label.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return tiles
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return [_shrink(t, size, nearest=i in (1, 2)) for i, t in enumerate(tiles)]


def png_bytes(picture: Any, palette: bool = False) -> tuple[bytes, int, int]:
    """PNG bytes and (width, height) of a uint8 array or of PNG bytes; ``palette``:
    an RGB array is stored with 256 colours (about a third of the bytes for photos)."""
    if isinstance(picture, (bytes, bytearray, memoryview)):
        data = bytes(picture)
        if not data.startswith(_PNG_MAGIC):
            raise ValueError("panel pictures given as bytes must be PNG files")
        with Image.open(io.BytesIO(data)) as im:
            return data, im.width, im.height
    arr = np.asarray(picture)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3
                                                           and arr.shape[2] not in (3, 4)):
        raise ValueError(f"panel pictures must be uint8 HxW, HxWx3 or HxWx4 arrays or PNG "
                         f"bytes, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if palette and arr.ndim == 3 and arr.shape[2] == 3:
        im = im.quantize(256, method=Image.Quantize.FASTOCTREE)
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), arr.shape[1], arr.shape[0]


class WorstPanels:
    """Keeps the ``n`` lowest-scoring images' panels while an evaluation runs.

    ``offer(score, name, image, label, pred, order=...)`` builds the tiles only
    when the image is among the worst so far (NaN scores are skipped); images
    rank by (score, order), ``order`` defaulting to the number offered before,
    so equal scores keep the earlier image. ``merge`` adds the panels another
    keeper holds (e.g. another process's share of the images, offered with
    their indices in the whole list): the result is what one keeper offered
    every image would hold. ``panels()`` returns them worst first, ready for
    ``html_report.write_html_report``. Tiles are ``panel_tiles`` as PNG, the photo and error
    tiles with a 256-colour palette. Picklable.
    """

    def __init__(self, n: int, colors: np.ndarray, *, max_side: int = 160) -> None:
        self.n, self.colors, self.max_side = max(0, int(n)), np.asarray(colors), int(max_side)
        # max-heap on (score, order): items (-score, -order, name, tiles)
        self._heap: list[tuple[float, int, str, list[bytes]]] = []
        self._seen = 0

    def _admits(self, score: float, order: int) -> bool:
        if len(self._heap) < self.n:
            return True
        top = self._heap[0]
        return (score, order) < (-top[0], -top[1])

    def _push(self, item: tuple[float, int, str, list[bytes]]) -> None:
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def offer(self, score: float, name: str, image: np.ndarray, label: np.ndarray,
              pred: np.ndarray, *, order: int | None = None) -> bool:
        """Keep this image if it is among the ``n`` worst so far; returns whether it was."""
        if self.n <= 0 or score is None or not math.isfinite(score):
            return False
        order = self._seen if order is None else int(order)
        self._seen += 1
        if not self._admits(float(score), order):
            return False
        tiles = [png_bytes(t, palette=i in (0, 3))[0] for i, t in enumerate(
            panel_tiles(image, label, pred, self.colors, max_side=self.max_side))]
        self._push((-float(score), -order, str(name), tiles))
        return True

    def merge(self, other: "WorstPanels") -> "WorstPanels":
        """Add ``other``'s panels (in place; orders must not collide); returns self."""
        for item in other._heap:
            if self.n > 0 and self._admits(-item[0], -item[1]):
                self._push(item)
        self._seen += other._seen
        return self

    def panels(self) -> list[tuple[str, list[bytes]]]:
        """(name, [image, ground truth, prediction, errors] PNG bytes), worst first."""
        return [(name, tiles) for _, _, name, tiles in
                sorted(self._heap, key=lambda it: (-it[0], -it[1]))]

    def ranking(self) -> list[tuple[str, float, int]]:
        """(name, score, order) of the kept images, worst first."""
        return [(name, -neg, -order) for neg, order, name, _ in
                sorted(self._heap, key=lambda it: (-it[0], -it[1]))]
