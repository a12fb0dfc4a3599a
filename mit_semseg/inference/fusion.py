"""Score fusion: per-copy class scores -> labels at the photo's size.

The original toolkit's procedure: every class-score map (one per resized
copy of the photo, and per mirrored copy with ``flip``) is resized bilinearly
(``align_corners=False``) to the photo's size, turned into probabilities by a
softmax over classes (``dim=1`` of the ``[1, C, H, W]`` map), divided by the
number of maps and summed; a pixel's label is the class of highest summed
probability (``torch.max(scores, dim=1)``).

``fuse(..., exact=True)`` runs exactly that, operation for operation, so its
probabilities are the original's bits on every machine. It needs a
``C x H x W`` float32 buffer for the whole photo (150 classes x 3 MP =
1.8 GB, plus temporaries of the same size), as the original did. The CPU
softmax over ``dim=1`` of such a map rounds some pixels differently
depending on where its threads' and vector loops' work ends, so pieces of
the map cannot reproduce it.

``fuse(..., exact=False)`` (the engine's default) computes the same
procedure in horizontal bands of output rows, with memory bounded by
``band_bytes`` whatever the photo size:

* the horizontal part of the resize is ``F.interpolate`` itself, on the
  source rows under the band (height kept, which copies rows exactly);
* the vertical part reproduces what the interpolation kernel computes for
  each output row: the same two source rows and weights in the kernel's
  float32 arithmetic and the same fused multiply-add. The weights are
  checked per size against ``F.interpolate`` on a probe (``row_plan``);
* softmax runs over the last axis of class-last bands, whose kernel treats
  every pixel alike (one thread per pixel's classes), so the band height
  does not change any bit; its probabilities equal the ``dim=1`` softmax's
  to float32 rounding (about 1e-6), labels except where two classes tie to
  that precision;
* without ``return_probs``, no work that cannot change a label: a single
  map's labels are the argmax of its resized scores, several maps'
  probabilities are summed without dividing by their count;
* ``return_confidence``: each pixel's top-class probability (the averaged
  probability of its label) comes out of the same ``max`` that picks the
  label, band by band: an ``H x W`` float32 map, no ``C x H x W`` buffer
  (a single map is then put through the softmax, several maps' summed
  probabilities have only their maximum divided by the count);
* band tensors live in reused per-thread buffers (no page faults on fresh
  memory, no allocator traffic).

``banding_exact(device, num_class)`` checks once per device, class count and
thread count that bands give the same bits as one class-last piece. Where a
probe fails (a platform whose kernels round differently) the bands use the
exactly-computed weights anyway: memory stays bounded, probabilities agree
to float32 rounding.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["fuse", "Prediction", "banding_exact", "release_workspace", "DEFAULT_BAND_BYTES",
           "RowPlan", "row_plan", "SMALL_OUTPUT_SIDES", "horizontal_cl_exact"]

logger = logging.getLogger(__name__)

# Size of one band tensor (float32, rows x W x C). Three such buffers plus the
# horizontally resized rows of every scale are alive at once. Measured on a
# 2-core AVX-512 machine (640x480, 150 classes, 5 scales): 1-2 MiB is best with
# one thread or OpenMP's spinning wait, 16 MiB with OMP_WAIT_POLICY=passive;
# 4 MiB is within about 10% of the best of both.
DEFAULT_BAND_BYTES = 4 * 2 ** 20

# F.interpolate on CPU switches to another kernel (with other rounding) when
# output height + width is at most this; such outputs are fused in one piece.
SMALL_OUTPUT_SIDES = 128


@dataclass
class Prediction:
    """``labels``: H x W int64 numpy array of 0-based classes. ``probs``: the
    averaged class probabilities as a [C, H, W] float32 CPU tensor (for
    ``exact=False`` a view of class-last storage), or None when not requested.
    ``confidence``: H x W float32 numpy array, each pixel's averaged probability
    of its label (the top class), or None when not requested."""
    labels: np.ndarray
    probs: torch.Tensor | None = None
    confidence: np.ndarray | None = None


# ============================================================================ buffers

class _Workspace(threading.local):
    """Per-thread reusable buffers (grown on demand, never shrunk)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # usable in and outside inference mode
                buf = torch.empty(n, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[:n].view(tuple(shape))


_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's reusable fusion buffers."""
    _workspace.buffers.clear()


# ============================================================================ row weights

class RowPlan(NamedTuple):
    """For each output row: source rows i0, i1 and weights l0, l1 (float32);
    ``exact``: checked equal to F.interpolate on this device."""
    i0: torch.Tensor
    i1: torch.Tensor
    l0: torch.Tensor
    l1: torch.Tensor
    exact: bool


def _row_weights(in_size: int, out_size: int, fused: bool) -> tuple[np.ndarray, ...]:
    """The interpolation kernel's source rows and weights for one axis
    (align_corners=False, size given, no scale factor), in its float32 arithmetic.

    ``fused``: the source coordinate scale*(i+0.5)-0.5 is rounded once (the
    kernel compiled with fused multiply-add); float64 evaluates it exactly
    before that single rounding. Otherwise each step is rounded to float32.
    """
    idx = np.arange(out_size)
    if in_size == out_size:
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    half = (idx + 0.5).astype(np.float32)
    if fused:
        src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = (scale * half).astype(np.float32) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    l0 = (np.float32(1) - l1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, l0, l1


_plan_cache: dict[tuple[int, int, str], RowPlan] = {}
_warned: set[str] = set()


def row_plan(in_size: int, out_size: int, device: torch.device) -> RowPlan:
    """Row weights for in_size -> out_size rows on ``device``: the candidate that
    reproduces F.interpolate on a probe, else the exactly-computed one (inexact)."""
    key = (in_size, out_size, str(device))
    if key not in _plan_cache:
        # cached across calls: normal tensors, usable in and out of inference mode
        with torch.inference_mode(False), torch.no_grad():
            plan = _find_row_plan(in_size, out_size, device)
        if len(_plan_cache) > 4096:
            _plan_cache.clear()
        _plan_cache[key] = plan
        if not plan.exact and str(device) not in _warned:
            _warned.add(str(device))
            logger.info("fusion on %s: this platform's bilinear kernel rounds differently from "
                        "every known form (rows %d -> %d); bands agree with the full-size "
                        "procedure to float32 rounding", device, in_size, out_size)
    return _plan_cache[key]


def _find_row_plan(in_size: int, out_size: int, device: torch.device) -> RowPlan:
    gen = torch.Generator().manual_seed(in_size * 100003 + out_size)
    width = max(2, SMALL_OUTPUT_SIDES + 1 - out_size)  # keep the probe on the general kernel
    probe = (torch.rand(1, 1, in_size, width, generator=gen) * 20 - 10).to(device)
    target = F.interpolate(probe, size=(out_size, width), mode="bilinear", align_corners=False)
    candidates = []
    for fused in (True, False):
        i0, i1, l0, l1 = (torch.from_numpy(a).to(device)
                          for a in _row_weights(in_size, out_size, fused))
        # top*l0 + bottom*l1 as the kernel rounds: a fused multiply-add over bottom*l1
        got = torch.addcmul(probe[0, 0, i1] * l1[:, None], probe[0, 0, i0], l0[:, None])
        if torch.equal(got, target[0, 0]):
            return RowPlan(i0, i1, l0, l1, True)
        candidates.append(RowPlan(i0, i1, l0, l1, False))
    return candidates[0]


_cl_checked: dict[tuple, bool] = {}


def horizontal_cl_exact(channels: int, in_w: int, out_w: int, device: torch.device) -> bool:
    """Whether the channels-last bilinear kernel resizes rows (height kept) to the
    same bits as the NCHW kernel for this size on this device (probe, cached)."""
    key = (channels, in_w, out_w, str(device), torch.get_num_threads())
    if key not in _cl_checked:
        gen = torch.Generator().manual_seed(channels * 7919 + in_w * 31 + out_w)
        probe = (torch.randn(1, channels, 3, in_w, generator=gen) * 8).to(device)
        ref = F.interpolate(probe, size=(3, out_w), mode="bilinear", align_corners=False)
        got = F.interpolate(probe.contiguous(memory_format=torch.channels_last), size=(3, out_w),
                            mode="bilinear", align_corners=False)
        if len(_cl_checked) > 4096:
            _cl_checked.clear()
        _cl_checked[key] = bool(torch.equal(ref, got))
    return _cl_checked[key]


class _Horizontal:
    """Class-last horizontally resized source rows of one scale, computed in chunks."""

    def __init__(self, x: torch.Tensor, width: int, chunk_rows: int, slot: int) -> None:
        self.x = x
        self.width = width
        self.chunk_rows = chunk_rows
        self.slot = slot
        C, _, w = x.shape[1:]
        self.use_cl = horizontal_cl_exact(C, w, width, x.device)
        self.xcl = x.contiguous(memory_format=torch.channels_last) if self.use_cl else None
        self.lo = self.hi = -1
        self.rows: torch.Tensor | None = None

    def get(self, s0: int, s1: int) -> tuple[torch.Tensor, int]:
        """Rows covering source rows s0:s1 as a [k, W, C] tensor and its first row index."""
        if not (self.lo <= s0 and s1 <= self.hi):
            h, C = self.x.shape[2], self.x.shape[1]
            lo, hi = s0, min(h, max(s1, s0 + self.chunk_rows))
            if self.use_cl:
                assert self.xcl is not None
                horiz = F.interpolate(self.xcl[:, :, lo:hi], size=(hi - lo, self.width),
                                      mode="bilinear", align_corners=False)
                self.rows = horiz[0].permute(1, 2, 0)  # class-last storage already
            else:
                # NCHW kernel, then one transposition. Short row sets are padded
                # (last row repeated) so the kernel stays the general one.
                rows = self.x[:, :, lo:hi]
                need = max(2, SMALL_OUTPUT_SIDES + 1 - self.width)
                if rows.shape[2] < need:
                    rows = torch.cat(
                        [rows, rows[:, :, -1:].expand(-1, -1, need - rows.shape[2], -1)], dim=2)
                horiz = F.interpolate(rows.contiguous(), size=(rows.shape[2], self.width),
                                      mode="bilinear", align_corners=False)
                out = _workspace.get(f"horiz{self.slot}", (hi - lo, self.width, C),
                                     torch.float32, self.x.device)
                out.copy_(horiz[0, :, :hi - lo].permute(1, 2, 0))
                self.rows = out
            self.lo, self.hi = lo, hi
        assert self.rows is not None
        return self.rows, self.lo


# ============================================================================ fusion

def _as_nchw(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for x in logits:
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"expected class scores of shape [1, C, h, w], got {tuple(x.shape)}")
        out.append(x.float().contiguous())
    if not out:
        raise ValueError("no class scores to fuse")
    if len({x.shape[1] for x in out}) != 1:
        raise ValueError("all class-score maps must have the same number of classes")
    return out


def _finish(labels: torch.Tensor, probs: torch.Tensor | None, class_last: bool = True,
            confidence: torch.Tensor | None = None) -> Prediction:
    lab = labels.cpu().numpy()
    prob = None
    if probs is not None:
        prob = probs.cpu().permute(2, 0, 1) if class_last else probs.cpu()
    conf = None if confidence is None else confidence.cpu().numpy()
    return Prediction(lab, prob, conf)


def _literal(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
             return_probs: bool, return_confidence: bool = False) -> Prediction:
    """The original's procedure on full-size maps, operation for operation."""
    n = len(logits)
    scores = None
    for x in logits:
        p = F.softmax(F.interpolate(x, size=tuple(out_size), mode="bilinear",
                                    align_corners=False), dim=1)
        scores = p / n if scores is None else scores + p / n
    assert scores is not None
    values, labels = torch.max(scores, dim=1)
    return _finish(labels[0], scores[0] if return_probs else None, class_last=False,
                   confidence=values[0] if return_confidence else None)


def _in_one_piece(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
                  band_bytes: int) -> bool:
    H, W = out_size
    C = logits[0].shape[1]
    if band_bytes <= 0 or H + W <= SMALL_OUTPUT_SIDES or C * H * W * 4 <= band_bytes:
        return True
    # F.interpolate picks other kernels for <= 3 channels (single-threaded) and
    # for 1x1 maps; their full buffers are small.
    return C <= 3 or any(x.shape[2] * x.shape[3] == 1 for x in logits)


def _fuse_one_piece(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
                    return_probs: bool, argmax_only: bool, average: bool,
                    return_confidence: bool = False) -> Prediction:
    n = len(logits)
    scores = None
    for x in logits:
        full = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        full = full[0].permute(1, 2, 0).contiguous()  # class-last
        if argmax_only:
            scores = full
            break
        p = F.softmax(full, dim=-1)
        del full
        if average:
            p = p / n
        scores = p if scores is None else scores + p
    assert scores is not None
    values, labels = torch.max(scores, dim=-1)
    confidence = None
    if return_confidence:
        confidence = values if average or n == 1 else values.div_(n)
    return _finish(labels, scores if return_probs else None, confidence=confidence)


def fuse(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
         return_probs: bool = False, band_bytes: int = DEFAULT_BAND_BYTES,
         exact: bool = True, return_confidence: bool = False) -> Prediction:
    """Resize every ``[1, C, h, w]`` score map in ``logits`` to ``out_size`` (H, W),
    softmax over classes, average, argmax (see the module docstring).

    ``exact=True``: the original's operations on full-size maps (its bits and
    its memory; ``band_bytes`` is not used). ``exact=False``: in bands, class-last;
    memory about three ``band_bytes`` buffers plus, per map, horizontally resized
    source rows for two bands, plus the labels (and ``return_probs``' full
    [C, H, W] map); ``band_bytes <= 0``: one piece. Without ``return_probs`` it
    skips the softmax of a single map and the division by the count.

    ``return_confidence``: also each pixel's averaged probability of its label
    (``Prediction.confidence``, H x W float32): with ``exact`` the maximum of the
    original's full-size probabilities; otherwise from the same bands as the
    labels, no [C, H, W] buffer (it equals the maximum of ``return_probs``' map
    to float32 rounding).
    """
    logits = _as_nchw(logits)
    H, W = (int(s) for s in out_size)
    if exact:
        return _literal(logits, (H, W), return_probs, return_confidence)
    C, n = logits[0].shape[1], len(logits)
    argmax_only = n == 1 and not (return_probs or return_confidence)
    average = return_probs
    if _in_one_piece(logits, (H, W), band_bytes):
        return _fuse_one_piece(logits, (H, W), return_probs, argmax_only, average,
                               return_confidence)
    device = logits[0].device
    plans = [row_plan(x.shape[2], H, device) for x in logits]
    rows_per_band = max(1, int(band_bytes) // (C * W * 4))
    scales = [_Horizontal(x, W, max(2, 2 * rows_per_band), k) for k, x in enumerate(logits)]
    starts = [p.i0.tolist() for p in plans]
    ends = [p.i1.tolist() for p in plans]
    w0 = [p.l0.view(-1, 1, 1) for p in plans]
    w1 = [p.l1.view(-1, 1, 1) for p in plans]

    labels = torch.empty((H, W), dtype=torch.int64, device=device)
    probs = torch.empty((H, W, C), dtype=torch.float32, device=device) if return_probs else None
    confidence = torch.empty((H, W), dtype=torch.float32, device=device) \
        if return_confidence else None
    f32 = torch.float32
    for r0 in range(0, H, rows_per_band):
        r1 = min(H, r0 + rows_per_band)
        rr = r1 - r0
        acc = probs[r0:r1] if probs is not None else _workspace.get("acc", (rr, W, C), f32, device)
        band = _workspace.get("band", (rr, W, C), f32, device)
        for k in range(n):
            i0, i1 = starts[k], ends[k]
            src, base = scales[k].get(i0[r0], i1[r1 - 1] + 1)
            # vertical resize: rows sharing source rows (a, b) in one broadcast step;
            # bottom * l1 then fused multiply-add of top * l0, as the kernel rounds.
            s = r0
            while s < r1:
                a, b = i0[s], i1[s]
                e = s + 1
                while e < r1 and i0[e] == a:
                    e += 1
                dst = band[s - r0:e - r0]
                torch.mul(src[b - base:b - base + 1], w1[k][s:e], out=dst)
                dst.addcmul_(src[a - base:a - base + 1], w0[k][s:e])
                s = e
            if argmax_only:
                acc = band
            elif k == 0:
                torch._softmax(band, -1, False, out=acc)
                if average:
                    acc.div_(n)
            else:
                torch._softmax(band, -1, False, out=band)
                if average:
                    band.div_(n)
                acc.add_(band)
        values = confidence[r0:r1] if confidence is not None else \
            _workspace.get("max", (rr, W), f32, device)
        torch.max(acc, -1, out=(values, labels[r0:r1]))
    if confidence is not None and not average and n > 1:
        confidence.div_(n)  # summed probabilities: only their maximum is averaged
    return _finish(labels, probs, confidence=confidence)


_exact_checked: dict[tuple[str, int, int], bool] = {}


def banding_exact(device: torch.device | str, num_class: int) -> bool:
    """Whether ``fuse(exact=False)`` in bands is bit-identical to one class-last
    piece on ``device`` for ``num_class`` classes at this thread count (checked
    once on random scores: upsampled and downsampled rows, a narrow and a wide
    output)."""
    device = torch.device(device)
    key = (str(device), int(num_class), torch.get_num_threads())
    if key not in _exact_checked:
        gen = torch.Generator().manual_seed(4321)
        logits = [(torch.randn(1, num_class, h, w, generator=gen) * 4).to(device)
                  for h, w in ((11, 9), (17, 13), (70, 150))]
        ok = True
        with torch.inference_mode():
            for size in ((67, 75), (41, 131)):
                ref = fuse(logits, size, return_probs=True, band_bytes=0, exact=False)
                got = fuse(logits, size, return_probs=True,
                           band_bytes=num_class * size[1] * 4 * 5, exact=False)
                assert ref.probs is not None and got.probs is not None
                ok = ok and bool(np.array_equal(ref.labels, got.labels)) \
                    and torch.equal(ref.probs, got.probs)
        _exact_checked[key] = ok
    return _exact_checked[key]
