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
float32 ``rows x w x C``, one buffer reused band after band); a tile row runs
when the first band it covers is reached and is dropped after the last.
Held at once: the uint8 photo, the int64 labels (and ``return_probs``'
``H x W x C``), at most two tile rows of feature-resolution scores with a few
horizontally resized source rows each, a few band buffers and one tile's
activations.

Arithmetic: a tile's resized scores are never formed whole. Each of its
source rows is resized horizontally once, a few rows just before the bands
reach them (``F.interpolate`` with the height kept, which copies rows exactly;
its channels-last kernel, class-last in and out, where fusion's probe says it
gives the NCHW kernel's bits). An output row is then ``bottom * l1`` plus a
fused multiply-add of ``top * l0``, with the two source rows and weights that
``fusion.row_plan`` checks against ``F.interpolate``: the numbers the kernel
computes, so the same as resizing the whole tile where ``fusion.banding_exact``
holds. Tiles are added to a band in row-major order (a pixel's first tile is
written rather than added to zeros: the same number), then the band is divided
by its coverage; step 6 streams the same way (each row of the averaged map
resized horizontally once and held until no output row needs it); the softmax
and argmax run over contiguous class-last rows, a few at a time. Every step is
a vectorised operation on contiguous class-last rows (those of a tile that
share their source rows together), so the work is proportional to pixels x
classes x tiles per pixel: seconds for a 12 MP photo, small next to the
network (``python -m mit_semseg.benchmark --sections slide`` measures both).
The results equal a straightforward implementation holding full ``C x H x W``
buffers, bit for bit where ``fusion.banding_exact`` holds, else to float32
rounding (tests/test_slide.py, tests/test_slide_speed_equiv.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import ConfigError, check_value
from ..config.schema import MODES
from ..data.transforms import normalize
from .fusion import SMALL_OUTPUT_SIDES, Prediction, horizontal_cl_exact, row_plan

__all__ = ["SlideWindow", "MODES", "slide_options", "tile_windows", "slide_predict",
           "predict_slide", "DEFAULT_SLIDE_BAND_BYTES"]

DEFAULT_SLIDE_BAND_BYTES = 32 * 2 ** 20
# rows resized horizontally, or softmaxed, in one operation (float32, rows x width
# x C): a few at a time, so that the next operation finds them in cache
_PIECE_BYTES = 1 * 2 ** 20
# output rows (sharing their source rows) of a tile computed in one operation
_GROUP_ROWS = 8

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
    mode = check_value(f"{section}.mode", node.mode)
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


def _horizontal(rows: torch.Tensor, width: int) -> torch.Tensor:
    """``[1, C, k, w]`` rows resized to ``width`` by ``F.interpolate`` (height kept:
    rows copied exactly), as a contiguous class-last ``[k, width, C]`` tensor.

    The channels-last kernel (class-last in, class-last out) where fusion's probe
    says it gives the NCHW kernel's bits; else the NCHW kernel, short row sets
    padded (last row repeated) so it stays on its general kernel, and one
    transposition."""
    _, channels, k, w = rows.shape
    if horizontal_cl_exact(channels, w, width, rows.device):
        out = F.interpolate(rows.contiguous(memory_format=torch.channels_last),
                            size=(k, width), mode="bilinear", align_corners=False)
        return out[0].permute(1, 2, 0).contiguous()  # no copy: class-last storage already
    need = max(2, SMALL_OUTPUT_SIDES + 1 - width)
    if k < need:
        rows = torch.cat([rows, rows[:, :, -1:].expand(-1, -1, need - k, -1)], dim=2)
    out = F.interpolate(rows.contiguous(), size=(rows.shape[2], width), mode="bilinear",
                        align_corners=False)
    return out[0, :, :k].permute(1, 2, 0).contiguous()


class _RowWeights:
    """``fusion.row_plan`` for ``in_size -> out_size`` rows: source rows ``i0``,
    ``i1`` per output row (lists), float32 weights ``l0``, ``l1`` (``[rows, 1, 1]``)
    and ``run_end[r]``: the end of the run of rows sharing row r's source rows."""

    def __init__(self, in_size: int, out_size: int, device: torch.device) -> None:
        plan = row_plan(in_size, out_size, device)
        self.i0: list[int] = plan.i0.tolist()
        self.i1: list[int] = plan.i1.tolist()
        self.l0 = plan.l0.clone().view(-1, 1, 1)
        self.l1 = plan.l1.clone().view(-1, 1, 1)
        self.run_end = [out_size] * out_size
        for r in range(out_size - 2, -1, -1):
            same = (self.i0[r], self.i1[r]) == (self.i0[r + 1], self.i1[r + 1])
            self.run_end[r] = self.run_end[r + 1] if same else r + 1


def _vertical_into(out: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor,
                   weights: _RowWeights, r0: int, r1: int) -> None:
    """``out`` (``[r1-r0, ...]``) = output rows r0:r1, which share their two source
    rows, as the interpolation kernel rounds: bottom * l1, then a fused
    multiply-add of top * l0."""
    torch.mul(bottom, weights.l1[r0:r1], out=out)
    out.addcmul_(top, weights.l0[r0:r1])


class _TileRows:
    """One tile's scores resized (as ``F.interpolate``) to the tile's pixel size,
    served one class-last output row ``[width, C]`` at a time, rows in increasing
    order. Each source row is resized horizontally once (``chunk_rows`` at a time,
    just before they are needed, and dropped once passed); an output row combines
    two of them with the kernel's row weights."""

    def __init__(self, scores: torch.Tensor, size: tuple[int, int],
                 weights: _RowWeights | None, chunk_rows: int) -> None:
        self.scores, self.width, self.weights = scores, size[1], weights
        self.chunk_rows = chunk_rows
        self.held: dict[int, torch.Tensor] = {}  # source row -> its resized row
        self.next = 0  # first source row not resized yet
        self.full: torch.Tensor | None = None
        if weights is None:
            # F.interpolate uses other kernels here: resize the (small) tile whole
            full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            self.full = full[0].permute(1, 2, 0).contiguous()

    def _sources(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.weights is not None
        s0, s1 = self.weights.i0[r], self.weights.i1[r]
        if s1 >= self.next:
            for s in [s for s in self.held if s < s0]:
                del self.held[s]
            lo = max(self.next, s0)
            hi = min(self.scores.shape[2], max(s1 + 1, lo + self.chunk_rows))
            rows = _horizontal(self.scores[:, :, lo:hi], self.width)
            self.held.update(zip(range(lo, hi), rows.unbind(0)))
            self.next = hi
        return self.held[s0], self.held[s1]

    def run_end(self, r: int) -> int:
        """End of the run of output rows from r on that share their source rows."""
        return self.weights.run_end[r] if self.weights is not None else len(self.full)

    def write(self, r0: int, r1: int, out: torch.Tensor, c0: int, c1: int) -> None:
        """``out`` (``[r1-r0, c1-c0, C]``) = columns c0:c1 of output rows r0:r1
        (within one run)."""
        if self.full is not None:
            out.copy_(self.full[r0:r1, c0:c1])
            return
        top, bottom = self._sources(r0)
        _vertical_into(out, top[c0:c1], bottom[c0:c1], self.weights, r0, r1)

    def add(self, r0: int, r1: int, out: torch.Tensor, c0: int, c1: int,
            scratch: torch.Tensor) -> None:
        """``out += `` columns c0:c1 of output rows r0:r1 (within one run;
        ``scratch``: room for them)."""
        if self.full is not None:
            out.add_(self.full[r0:r1, c0:c1])
            return
        tmp = scratch[:out.numel()].view(out.shape)
        self.write(r0, r1, tmp, c0, c1)
        out.add_(tmp)


class _Tiles:
    """Runs the tile grid one tile row at a time, on demand, keeping the tile rows
    still needed: per tile its feature-resolution scores and a chunk of
    horizontally resized source rows (``_TileRows``)."""

    def __init__(self, score_fn: ScoreFn, pixels: np.ndarray, window: SlideWindow,
                 flip: bool, device: torch.device,
                 progress: Callable[[int, int], None] | None = None) -> None:
        h, w = pixels.shape[:2]
        self.rows = tile_windows(h, window.crop_size[0], window.stride[0])
        self.cols = tile_windows(w, window.crop_size[1], window.stride[1])
        self.score_fn, self.pixels, self.flip, self.device = score_fn, pixels, flip, device
        self.progress, self.finished = progress, 0  # progress(tiles run, tiles)
        self.done: dict[int, list[list[_TileRows]]] = {}
        self.weights: dict[tuple[int, int], _RowWeights] = {}
        # tiles covering each row / column; their product is the per-pixel count
        self.row_count = _coverage(self.rows, h)
        self.col_count = _coverage(self.cols, w)

    def _tile(self, scores: torch.Tensor, size: tuple[int, int]) -> _TileRows:
        if sum(size) <= SMALL_OUTPUT_SIDES or scores.shape[1] <= 3:
            return _TileRows(scores, size, None, 0)
        key = (scores.shape[2], size[0])
        if key not in self.weights:
            self.weights[key] = _RowWeights(key[0], key[1], self.device)
        chunk = max(2, _PIECE_BYTES // (size[1] * scores.shape[1] * 4))
        layout = (torch.channels_last if horizontal_cl_exact(scores.shape[1], scores.shape[3],
                                                              size[1], self.device)
                  else torch.contiguous_format)  # as _horizontal will want its row sets
        return _TileRows(scores.contiguous(memory_format=layout), size, self.weights[key], chunk)

    def tiles(self, i: int) -> list[list[_TileRows]]:
        """Per column window: tile (i, j), and its mirrored run if flip."""
        if i not in self.done:
            y0, y1 = self.rows[i]
            out = []
            for x0, x1 in self.cols:
                img = _normalise(self.pixels[y0:y1, x0:x1], self.device)
                runs = [self.score_fn(img).float()]
                if self.flip:
                    runs.append(self.score_fn(img.flip(-1)).float().flip(-1))
                out.append([self._tile(s, (y1 - y0, x1 - x0)) for s in runs])
                self.finished += 1
                if self.progress is not None:
                    self.progress(self.finished, len(self.rows) * len(self.cols))
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


def _score_bands(tiles: _Tiles, size: tuple[int, int], num_class: int, band_rows: int,
                 group_rows: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """``(r0, r1, copies)``: each copy's averaged scores of rows r0:r1 at the tiled
    resolution, class-last ``[r1-r0, w, C]`` (buffers reused for the next band),
    bands in order.

    Tiles are added in row-major order, each over the band's rows it covers, up to
    ``group_rows`` rows sharing their source rows at a time; where no earlier tile
    covers a pixel its value is written instead (0 + x is x)."""
    h, w = size
    device = tiles.device
    copies = 2 if tiles.flip else 1
    bufs = [torch.empty((min(band_rows, h), w, num_class), device=device)
            for _ in range(copies)]
    widest = max(b - a for a, b in tiles.cols)
    scratch = torch.empty(min(group_rows, band_rows) * widest * num_class, device=device)
    col_count = tiles.col_count.to(device).view(1, w, 1)
    row_count = tiles.row_count.tolist()
    one_column = bool((tiles.col_count == 1).all())  # one tile across: rows need no column count
    # first column of tile j that tile j-1 does not cover
    fresh = [x0 if j == 0 else max(x0, tiles.cols[j - 1][1])
             for j, (x0, _) in enumerate(tiles.cols)]
    for r0 in range(0, h, band_rows):
        r1 = min(r0 + band_rows, h)
        acc = [b[:r1 - r0] for b in bufs]
        for i, (y0, y1) in enumerate(tiles.rows):
            if y0 >= r1 or y1 <= r0:
                continue
            seen = tiles.rows[i - 1][1] if i > 0 else 0  # rows above covered by tile row i-1
            for (x0, x1), start, runs in zip(tiles.cols, fresh, tiles.tiles(i)):
                for k, tile in enumerate(runs):
                    r = max(r0, y0)
                    while r < min(r1, y1):
                        e = min(r1, y0 + tile.run_end(r - y0), r + group_rows,
                                seen if r < seen else y1)
                        a, b, dst = r - y0, e - y0, acc[k][r - r0:e - r0]
                        if r < seen:
                            tile.add(a, b, dst[:, x0:x1], 0, x1 - x0, scratch)
                        else:
                            if start > x0:
                                tile.add(a, b, dst[:, x0:start], 0, start - x0, scratch)
                            tile.write(a, b, dst[:, start:x1], start - x0, x1 - x0)
                        r = e
        r = r0
        while r < r1:  # divide by the coverage, a run of equal row counts at a time
            e = r + 1
            while e < r1 and row_count[e] == row_count[r]:
                e += 1
            if row_count[r] != 1 or not one_column:
                for x in acc:
                    x[r - r0:e - r0].div_(col_count * row_count[r])
            r = e
        tiles.release_before(r1)
        yield r0, r1, acc


def _resized_bands(bands: Iterator[tuple[int, int, list[torch.Tensor]]], in_size: tuple[int, int],
                   out_size: tuple[int, int], num_class: int, device: torch.device,
                   band_rows: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """The score bands of ``bands`` bilinearly resized from ``in_size`` to ``out_size``
    as ``F.interpolate`` would resize the whole map (streaming: each source row is
    resized horizontally once, when its band arrives, and held until no output row
    needs it; output rows combine two of them with the kernel's row weights)."""
    (h, w), (H, W) = in_size, out_size
    if (h, w) == (H, W):
        yield from bands
        return
    if H + W <= SMALL_OUTPUT_SIDES or num_class <= 3:
        # F.interpolate uses other kernels here, and the map is small: resize it whole
        parts = [[x.clone() for x in copies] for _, _, copies in bands]
        whole = [torch.cat(rows) for rows in zip(*parts)]
        yield 0, H, [F.interpolate(x.movedim(-1, 0)[None], size=(H, W), mode="bilinear",
                                   align_corners=False)[0].permute(1, 2, 0).contiguous()
                     for x in whole]
        return
    weights = _RowWeights(h, H, device)
    held: dict[int, list[torch.Tensor]] = {}  # source row -> its resized row per copy
    end = 0  # source rows below end have arrived
    bufs: list[torch.Tensor] = []
    piece = max(1, _PIECE_BYTES // (W * num_class * 4))
    for R0 in range(0, H, band_rows):
        R1 = min(R0 + band_rows, H)
        for s in [s for s in held if s < weights.i0[R0]]:
            del held[s]
        while end <= weights.i1[R1 - 1]:
            s0, end, copies = next(bands)
            for a in range(0, end - s0, piece):  # a few rows at a time: small fresh buffers
                b = min(a + piece, end - s0)
                wide = [_horizontal(x[None, a:b].permute(0, 3, 1, 2), W) for x in copies]
                for s in range(a, b):
                    held[s0 + s] = [x[s - a] for x in wide]
        if not bufs:
            bufs = [torch.empty((min(band_rows, H), W, num_class), device=device)
                    for _ in held[weights.i0[R0]]]
        out = [b[:R1 - R0] for b in bufs]
        R = R0
        while R < R1:
            E = min(R1, weights.run_end[R])
            top, bottom = held[weights.i0[R]], held[weights.i1[R]]
            for k, x in enumerate(out):
                _vertical_into(x[R - R0:E - R0], top[k], bottom[k], weights, R, E)
            R = E
        yield R0, R1, out


def _band_rows(width: int, num_class: int, band_bytes: int) -> int:
    return max(1, int(band_bytes) // (width * num_class * 4))


@torch.inference_mode()
def slide_predict(score_fn: ScoreFn, image: np.ndarray, window: SlideWindow, num_class: int, *,
                  flip: bool = False, return_probs: bool = False,
                  device: torch.device | str = "cpu",
                  band_bytes: int = DEFAULT_SLIDE_BAND_BYTES,
                  return_confidence: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> Prediction:
    """Sliding-window prediction of an ``H x W x 3`` uint8 RGB photo (see the module
    docstring). ``score_fn``: normalised ``[1, 3, h, w]`` -> ``[1, C, h', w']`` scores
    (``InferenceEngine.scores``). Returns an ``inference.Prediction`` at ``H x W``;
    ``return_confidence``: with the top-class probability of every pixel (H x W
    float32, computed band by band: no C x H x W buffer). ``progress(done, total)``:
    called with ``(0, tiles)``, then after each tile (with its mirrored run)."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {pixels.dtype} {pixels.shape}")
    device = torch.device(device)
    H, W = pixels.shape[:2]
    if window.scale != 1.0:
        size = (max(1, int(W * window.scale + 0.5)), max(1, int(H * window.scale + 0.5)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    h, w = pixels.shape[:2]
    tiles = _Tiles(score_fn, pixels, window, flip, device, progress)
    if progress is not None:
        progress(0, len(tiles.rows) * len(tiles.cols))
    bands = _score_bands(tiles, (h, w), num_class, _band_rows(w, num_class, band_bytes),
                         _GROUP_ROWS)
    bands = _resized_bands(bands, (h, w), (H, W), num_class, device,
                           _band_rows(W, num_class, band_bytes))
    labels = np.empty((H, W), dtype=np.int64)
    probs = torch.empty((H, W, num_class), dtype=torch.float32) if return_probs else None
    confidence = np.empty((H, W), dtype=np.float32) if return_confidence else None
    piece = max(1, _PIECE_BYTES // (W * num_class * 4))
    for r0, r1, copies in bands:  # the band buffers are ours to overwrite
        if len(copies) == 1 and probs is None and confidence is None:
            best = torch.max(copies[0], dim=-1).indices  # = argmax (first of ties), faster
            labels[r0:r1] = best.cpu().numpy()
            continue
        for a in range(0, r1 - r0, piece):  # a few rows at a time, while they are in cache
            b = min(a + piece, r1 - r0)
            # the mean of the copies' softmaxes, summed as fuse_full does
            for x in copies:
                torch._softmax(x[a:b], -1, False, out=x[a:b])
                if len(copies) > 1:
                    x[a:b].div_(len(copies))
            p = copies[0][a:b]
            for x in copies[1:]:
                p.add_(x[a:b])
            best = torch.max(p, dim=-1)
            labels[r0 + a:r0 + b] = best.indices.cpu().numpy()
            if confidence is not None:
                confidence[r0 + a:r0 + b] = best.values.cpu().numpy()
            if probs is not None:
                probs[r0 + a:r0 + b] = p.cpu()
    return Prediction(labels, probs.permute(2, 0, 1) if probs is not None else None,
                      confidence)


def predict_slide(engine: Any, image: np.ndarray, window: SlideWindow, return_probs: bool = False,
                  flip: bool | None = None, return_confidence: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> Prediction:
    """``slide_predict`` with an ``InferenceEngine``: its network (``scores``: PyTorch
    or onnxruntime), device, class count and ``flip`` default."""
    return slide_predict(engine.scores, image, window, engine.num_class,
                         flip=engine.flip if flip is None else bool(flip),
                         return_probs=return_probs, device=engine.device,
                         return_confidence=return_confidence, progress=progress)
