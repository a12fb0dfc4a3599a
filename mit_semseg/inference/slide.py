"""Sliding-window inference: the photo at full (or a chosen) resolution, cut
into overlapping tiles, with memory bounded whatever the photo size.

Procedure (mmsegmentation's ``slide`` test mode, the convention people know):

1. The photo is resized by ``scale`` (PIL bilinear, as ``TestDataset``;
   ``scale=1``: used as it is) to ``h x w`` and normalised like ``TestDataset``.
2. Tiles: along each axis, window ``k`` starts at ``k * stride``; a window that
   would end past the border is moved back to end on it (so every tile has the
   full crop size unless the photo is smaller than the crop, when the tile is
   the whole side); there are ``max(size - crop + stride - 1, 0) // stride + 1``
   windows per axis and the tiles are all pairs of row and column windows.
3. Each tile runs through the network (``InferenceEngine.scores``: the
   PyTorch model or the onnxruntime graph); its class scores (feature
   resolution) are resized bilinearly (``align_corners=False``) to the tile's
   pixel size.
4. Every pixel's scores are the mean of the resized scores of the tiles that
   cover it (scores, i.e. before the softmax, as mmsegmentation; the sum runs
   over tiles in row-major order, then divides by the number of tiles).
5. With ``flip`` every tile also runs mirrored (scores mirrored back); the
   mirrored runs are averaged into a second copy of step 4.
6. Each copy's averaged scores are resized bilinearly (``align_corners=False``)
   from ``h x w`` to the photo's size (nothing to do when ``scale=1``); the
   probabilities are the mean over copies of their softmax; the label is the
   class of highest probability (with one copy and no probabilities asked for,
   the argmax of the scores: the softmax does not change the order).

Memory: nothing of size ``C x H x W`` is held (150 classes on a 12 MP photo
would be 7 GB). Output rows are produced in bands of ``band_bytes`` (per copy,
float32 ``rows x w x C``); a tile row runs when the first band it covers is
reached and its scores (feature resolution, a few MiB) are dropped after the
last; the rows of a tile's resized scores under a band are computed from the
source rows under them with the row weights ``fusion`` uses (the same numbers
as resizing the whole tile where ``fusion.banding_exact`` holds).
Held at once: the uint8 photo, the int64 labels, at most two tile rows of
feature-resolution scores, a few band buffers and one tile's activations.
The results equal a straightforward implementation holding full ``C x H x W``
buffers, bit for bit where ``fusion.banding_exact`` holds, else to float32
rounding (tests/test_slide.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import ConfigError
from ..data.transforms import normalize
from .fusion import SMALL_OUTPUT_SIDES, Prediction, row_plan

__all__ = ["SlideWindow", "MODES", "slide_options", "tile_windows", "slide_predict",
           "predict_slide", "DEFAULT_SLIDE_BAND_BYTES"]

MODES = ("whole", "slide")
DEFAULT_SLIDE_BAND_BYTES = 32 * 2 ** 20

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SlideWindow:
    """Tile size and step in pixels of the resized photo, as (height, width), and
    the resize factor applied to the photo first (1.0: full resolution)."""

    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scale: float = 1.0

    def __post_init__(self) -> None:
        crop, stride = _pair(self.crop_size, "crop_size"), _pair(self.stride, "stride")
        if any(s > c for s, c in zip(stride, crop)):
            raise ValueError(f"stride {stride} larger than crop_size {crop}: pixels between "
                             "tiles would get no scores")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "scale", float(self.scale))


def _pair(value: Any, name: str) -> tuple[int, int]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive integer or [height, width], got {value!r}")
    return int(values[0]), int(values[1])


def slide_options(node: Any, section: str = "TEST") -> SlideWindow | None:
    """``SlideWindow`` from a config section (``cfg.TEST`` / ``cfg.VAL``: ``mode``,
    ``crop_size``, ``stride``, ``slide_scale``); None for ``mode: whole``."""
    mode = str(node.mode).lower()
    if mode not in MODES:
        raise ConfigError(f"{section}.mode: unknown inference mode {node.mode!r}; "
                          f"expected one of {list(MODES)}")
    if mode == "whole":
        return None
    try:
        return SlideWindow(node.crop_size, node.stride, node.slide_scale)
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def tile_windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the windows along one axis (see the module docstring)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for k in range(count):
        end = min(k * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


def _normalise(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``h x w x 3`` -> ``[1, 3, h, w]`` float32 (the preprocessing rule)."""
    return normalize(pixels).unsqueeze(0).to(device)


def _horizontal_cl(rows: torch.Tensor, width: int) -> torch.Tensor:
    """``[1, C, k, w]`` rows resized to ``width`` (height kept: rows copied exactly),
    class-last ``[k, width, C]``. Short row sets are padded (last row repeated) so
    F.interpolate stays on its general kernel, as for whole maps."""
    k = rows.shape[2]
    need = max(2, SMALL_OUTPUT_SIDES + 1 - width)
    if k < need:
        rows = torch.cat([rows, rows[:, :, -1:].expand(-1, -1, need - k, -1)], dim=2)
    out = F.interpolate(rows.contiguous(), size=(rows.shape[2], width), mode="bilinear",
                        align_corners=False)
    return out[0, :, :k].movedim(0, -1)


def _vertical(held: torch.Tensor, base: int, plan: Any, r0: int, r1: int) -> torch.Tensor:
    """Output rows r0:r1 from class-last source rows ``held`` (first row ``base``):
    bottom * l1 then a fused multiply-add of top * l0, as the kernel rounds."""
    top = held.index_select(0, plan.i0[r0:r1] - base)
    bottom = held.index_select(0, plan.i1[r0:r1] - base)
    return torch.addcmul(bottom * plan.l1[r0:r1].view(-1, 1, 1), top,
                         plan.l0[r0:r1].view(-1, 1, 1))


def _tile_rows_cl(scores: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of the tile's scores resized to ``size`` (as ``F.interpolate``),
    class-last ``[r1-r0, w, C]``, computed from the source rows under them."""
    if sum(size) <= SMALL_OUTPUT_SIDES or scores.shape[1] <= 3:
        # F.interpolate uses other kernels here: resize the (small) tile whole
        full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return full[0, :, r0:r1].movedim(0, -1)
    plan = row_plan(scores.shape[2], size[0], scores.device)
    s0, s1 = int(plan.i0[r0]), int(plan.i1[r1 - 1]) + 1
    return _vertical(_horizontal_cl(scores[:, :, s0:s1], size[1]), s0, plan, r0, r1)


class _Tiles:
    """Runs the tile grid one tile row at a time, on demand, keeping the
    feature-resolution scores of the tile rows still needed."""

    def __init__(self, score_fn: ScoreFn, pixels: np.ndarray, window: SlideWindow,
                 flip: bool, device: torch.device) -> None:
        h, w = pixels.shape[:2]
        self.rows = tile_windows(h, window.crop_size[0], window.stride[0])
        self.cols = tile_windows(w, window.crop_size[1], window.stride[1])
        self.score_fn, self.pixels, self.flip, self.device = score_fn, pixels, flip, device
        self.done: dict[int, list[list[torch.Tensor]]] = {}
        # tiles covering each row / column; their product is the per-pixel count
        self.row_count = _coverage(self.rows, h)
        self.col_count = _coverage(self.cols, w)

    def scores(self, i: int) -> list[list[torch.Tensor]]:
        """Per column window: the scores of tile (i, j), and of its mirrored run if flip."""
        if i not in self.done:
            y0, y1 = self.rows[i]
            out = []
            for x0, x1 in self.cols:
                img = _normalise(self.pixels[y0:y1, x0:x1], self.device)
                runs = [self.score_fn(img).float()]
                if self.flip:
                    runs.append(self.score_fn(img.flip(-1)).float().flip(-1))
                out.append(runs)
            self.done[i] = out
        return self.done[i]

    def release_before(self, row: int) -> None:
        for i in [i for i in self.done if self.rows[i][1] <= row]:
            del self.done[i]


def _coverage(windows: Sequence[tuple[int, int]], size: int) -> torch.Tensor:
    count = torch.zeros(size, dtype=torch.float32)
    for a, b in windows:
        count[a:b] += 1
    return count


def _score_bands(tiles: _Tiles, size: tuple[int, int], num_class: int,
                 band_rows: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """``(r0, r1, copies)``: each copy's averaged scores of rows r0:r1 at the tiled
    resolution, class-last ``[r1-r0, w, C]``, bands in order."""
    h, w = size
    copies = 2 if tiles.flip else 1
    col_count = tiles.col_count.to(tiles.device).view(1, w, 1)
    for r0 in range(0, h, band_rows):
        r1 = min(r0 + band_rows, h)
        acc = [torch.zeros((r1 - r0, w, num_class), device=tiles.device) for _ in range(copies)]
        for i, (y0, y1) in enumerate(tiles.rows):
            if y0 >= r1 or y1 <= r0:
                continue
            a, b = max(r0, y0), min(r1, y1)
            for (x0, x1), runs in zip(tiles.cols, tiles.scores(i)):
                for k, scores in enumerate(runs):
                    acc[k][a - r0:b - r0, x0:x1] += _tile_rows_cl(scores, (y1 - y0, x1 - x0),
                                                                   a - y0, b - y0)
        tiles.release_before(r1)
        count = tiles.row_count[r0:r1].to(tiles.device).view(-1, 1, 1) * col_count
        yield r0, r1, [x.div_(count) for x in acc]


def _resized_bands(bands: Iterator[tuple[int, int, list[torch.Tensor]]], in_size: tuple[int, int],
                   out_size: tuple[int, int], num_class: int, device: torch.device,
                   band_rows: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """The score bands of ``bands`` bilinearly resized from ``in_size`` to ``out_size``
    as ``F.interpolate`` would resize the whole map (streaming: only the source rows
    under the current output band are held, horizontally resized)."""
    (h, w), (H, W) = in_size, out_size
    if (h, w) == (H, W):
        yield from bands
        return
    if H + W <= SMALL_OUTPUT_SIDES or num_class <= 3:
        # F.interpolate uses other kernels here, and the map is small: resize it whole
        whole = [torch.cat(rows) for rows in zip(*(copies for _, _, copies in bands))]
        yield 0, H, [F.interpolate(x.movedim(-1, 0)[None], size=(H, W), mode="bilinear",
                                   align_corners=False)[0].movedim(0, -1) for x in whole]
        return
    plan = row_plan(h, H, device)
    i0, i1 = plan.i0.tolist(), plan.i1.tolist()
    held: list[torch.Tensor] = []
    start = end = 0  # source rows start:end are held
    for R0 in range(0, H, band_rows):
        R1 = min(R0 + band_rows, H)
        while end <= i1[R1 - 1]:
            _, end, copies = next(bands)
            wide = [_horizontal_cl(x.movedim(-1, 0)[None], W) for x in copies]
            held = wide if not held else [torch.cat([a, b]) for a, b in zip(held, wide)]
        if i0[R0] > start:
            held = [x[i0[R0] - start:] for x in held]
            start = i0[R0]
        yield R0, R1, [_vertical(x, start, plan, R0, R1) for x in held]


def _band_rows(width: int, num_class: int, band_bytes: int) -> int:
    return max(1, int(band_bytes) // (width * num_class * 4))


@torch.inference_mode()
def slide_predict(score_fn: ScoreFn, image: np.ndarray, window: SlideWindow, num_class: int, *,
                  flip: bool = False, return_probs: bool = False,
                  device: torch.device | str = "cpu",
                  band_bytes: int = DEFAULT_SLIDE_BAND_BYTES) -> Prediction:
    """Sliding-window prediction of an ``H x W x 3`` uint8 RGB photo (see the module
    docstring). ``score_fn``: normalised ``[1, 3, h, w]`` -> ``[1, C, h', w']`` scores
    (``InferenceEngine.scores``). Returns an ``inference.Prediction`` at ``H x W``."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {pixels.dtype} {pixels.shape}")
    device = torch.device(device)
    H, W = pixels.shape[:2]
    if window.scale != 1.0:
        size = (max(1, int(W * window.scale + 0.5)), max(1, int(H * window.scale + 0.5)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    h, w = pixels.shape[:2]
    tiles = _Tiles(score_fn, pixels, window, flip, device)
    bands = _score_bands(tiles, (h, w), num_class, _band_rows(w, num_class, band_bytes))
    bands = _resized_bands(bands, (h, w), (H, W), num_class, device,
                           _band_rows(W, num_class, band_bytes))
    labels = np.empty((H, W), dtype=np.int64)
    probs = torch.empty((H, W, num_class), dtype=torch.float32) if return_probs else None
    for r0, r1, copies in bands:
        if len(copies) == 1 and probs is None:
            best = copies[0].argmax(dim=-1)
        else:
            p = None
            for x in copies:  # the mean of the softmaxes, summed as fuse_full does
                q = F.softmax(x, dim=-1) / len(copies)
                p = q if p is None else p + q
            best = torch.max(p, dim=-1).indices
            if probs is not None:
                probs[r0:r1] = p.cpu()
        labels[r0:r1] = best.cpu().numpy()
    return Prediction(labels, probs.permute(2, 0, 1) if probs is not None else None)


def predict_slide(engine: Any, image: np.ndarray, window: SlideWindow, return_probs: bool = False,
                  flip: bool | None = None) -> Prediction:
    """``slide_predict`` with an ``InferenceEngine``: its network (``scores``: PyTorch
    or onnxruntime), device, class count and ``flip`` default."""
    return slide_predict(engine.scores, image, window, engine.num_class,
                         flip=engine.flip if flip is None else bool(flip),
                         return_probs=return_probs, device=engine.device)
