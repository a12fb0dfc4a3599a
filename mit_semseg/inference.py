"""Multi-scale inference: the one engine behind eval.py, eval_multipro.py,
test.py and the Python API (``Segmenter``).

Procedure (the original toolkit's): every resized copy of the image (one per
``DATASET.imgSizes`` entry) goes through encoder and decoder; the class scores
are resized bilinearly (``align_corners=False``) to the original image size,
turned into probabilities by a softmax over classes, divided by the number of
copies and summed; the label of a pixel is the class of highest summed
probability. With ``flip`` every copy is also run mirrored left-right (its
scores mirrored back before resizing) and counts as one more copy.

The engine has two steps, kept apart so each can be optimised on its own:

* ``InferenceEngine.scale_logits(img_data)``: the network, once per copy;
  returns small class-score maps (``[1, C, h, w]`` float32, feature
  resolution). This is where the compute goes.
* ``fuse(logits, out_size)``: resize, softmax, average and argmax at the
  original resolution.

``fuse_full`` is the straightforward form of the second step: it holds a
``C x H x W`` float32 buffer for the whole photo (150 classes x 3 MP = 1.8 GB,
plus temporaries of the same size). ``fuse_banded`` computes the same numbers
in horizontal bands of output rows, so its memory is bounded by
``band_bytes`` whatever the photo size: the bilinear resize of a band needs
only the source rows under it (plus one), and the softmax and average are per
pixel. Its results are bit-identical to ``fuse_full``:

* the horizontal part of the resize is done by ``F.interpolate`` itself (on
  the band's source rows, height unchanged, which copies rows exactly);
* the vertical part reproduces what the interpolation kernel computes for
  each output row: the same source rows and weights (the kernel's float32
  arithmetic, checked per size against ``F.interpolate`` on a one-column
  probe) and the same fused multiply-add;
* softmax runs over the last axis of class-last tensors, whose CPU and CUDA
  kernels treat every pixel alike (the class-axis-1 CPU kernel does not: its
  last bits depend on the pixel's position and the thread count).

A one-time self-check per device compares the two on random data; if it (or
the per-size check) fails, e.g. on a platform whose kernels round
differently, the engine warns once and uses ``fuse_full``: results are then
still exact, only memory is not bounded.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

__all__ = ["InferenceEngine", "Prediction", "Segmenter", "ClassShare", "CheckpointNotFoundError",
           "DeviceUnavailableError", "fuse_full", "fuse_banded", "interpolate_rows",
           "resolve_device", "checkpoint_paths", "build_engine", "describe_labels",
           "DEFAULT_BAND_BYTES"]

# Size of one band tensor (float32, C x rows x W); about 7 such tensors are
# alive at once while a band is fused.
DEFAULT_BAND_BYTES = 32 * 2 ** 20

# F.interpolate on CPU switches to another kernel (with other rounding) when
# output height + width is at most this; smaller outputs are fused in one piece.
_SMALL_OUTPUT_SIDES = 128


# ============================================================================ devices

class DeviceUnavailableError(RuntimeError):
    """The requested GPU does not exist or CUDA is not available."""


def resolve_device(device: str | int | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: first GPU if CUDA is available, else CPU. ``"cpu"``, ``-1``
    or ``"-1"``: CPU. ``N``, ``"N"``, ``"gpuN"``, ``"cuda"``, ``"cuda:N"``: that GPU."""
    if isinstance(device, torch.device):
        spec: Any = device
    elif device is None or str(device).strip().lower() in ("", "auto"):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    else:
        text = str(device).strip().lower()
        if text in ("cpu", "-1"):
            return torch.device("cpu")
        if text.startswith("gpu"):
            text = text[3:]
        spec = torch.device("cuda", int(text)) if text.isdigit() else torch.device(text)
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {device!r} requested but CUDA is not "
                                         f"available; use 'cpu' (e.g. --gpu cpu)")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} requested but only "
                                         f"{torch.cuda.device_count()} GPU(s) are visible")
        dev = torch.device("cuda", index)
    return dev


def _autocast(device: torch.device, precision: str):
    precision = (precision or "fp32").lower()
    if precision in ("fp32", "float32"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


# ============================================================================ fusing

def _softmax_classes_last(x: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] scores -> [1, H, W, C] probabilities (softmax over the last axis)."""
    return F.softmax(x.movedim(1, -1).contiguous(), dim=-1)


def _as_nchw(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for x in logits:
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"expected logits of shape [1, C, h, w], got {tuple(x.shape)}")
        out.append(x.float().contiguous())
    if len({x.shape[1] for x in out}) != 1:
        raise ValueError("all logits must have the same number of classes")
    return out


def _finish(labels: torch.Tensor, probs: torch.Tensor | None) -> "Prediction":
    lab = labels.cpu().numpy()
    prob = probs.cpu().permute(2, 0, 1) if probs is not None else None
    return Prediction(lab, prob)


def fuse_full(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
              return_probs: bool = False) -> "Prediction":
    """Reference fusion with full-size buffers: for each ``[1, C, h, w]`` score map,
    resize to ``out_size`` (bilinear, align_corners=False), softmax over classes
    (class-last, see the module docstring), divide by the number of maps and
    sum; labels = argmax."""
    logits = _as_nchw(logits)
    n = len(logits)
    scores = None
    for x in logits:
        full = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        p = _softmax_classes_last(full)
        del full
        scores = p / n if scores is None else scores + p / n
        del p
    assert scores is not None
    labels = torch.max(scores[0], dim=-1).indices
    return _finish(labels, scores[0] if return_probs else None)


class _RowPlan(NamedTuple):
    """For each output row: source rows i0, i1 and weights l0, l1 (float32)."""
    i0: torch.Tensor
    i1: torch.Tensor
    l0: torch.Tensor
    l1: torch.Tensor


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


def _combine_rows(top: torch.Tensor, bottom: torch.Tensor, l0: torch.Tensor,
                  l1: torch.Tensor) -> torch.Tensor:
    # top*l0 + bottom*l1 with the kernel's rounding: one fused multiply-add over
    # the rounded product bottom*l1 (addcmul is fused on the same builds).
    return torch.addcmul(bottom * l1, top, l0)


_plan_cache: dict[tuple[int, int, str], _RowPlan | None] = {}


def _row_plan(in_size: int, out_size: int, device: torch.device) -> _RowPlan | None:
    """Row weights that reproduce F.interpolate on ``device`` for in_size -> out_size
    rows, checked on a probe; None if no candidate matches."""
    key = (in_size, out_size, str(device))
    if key not in _plan_cache:
        # cached across calls: normal tensors, usable in and out of inference mode
        with torch.inference_mode(False), torch.no_grad():
            plan = _find_row_plan(in_size, out_size, device)
        if len(_plan_cache) > 4096:
            _plan_cache.clear()
        _plan_cache[key] = plan
    return _plan_cache[key]


def _find_row_plan(in_size: int, out_size: int, device: torch.device) -> _RowPlan | None:
    gen = torch.Generator().manual_seed(in_size * 100003 + out_size)
    width = max(2, _SMALL_OUTPUT_SIDES + 1 - out_size)  # keep the probe on the general kernel
    probe = (torch.rand(1, 1, in_size, width, generator=gen) * 20 - 10).to(device)
    target = F.interpolate(probe, size=(out_size, width), mode="bilinear", align_corners=False)
    for fused in (True, False):
        i0, i1, l0, l1 = _row_weights(in_size, out_size, fused)
        cand = _RowPlan(torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device),
                        torch.from_numpy(l0).to(device), torch.from_numpy(l1).to(device))
        got = _combine_rows(probe[0, 0, cand.i0], probe[0, 0, cand.i1],
                            cand.l0[:, None], cand.l1[:, None])
        if torch.equal(got, target[0, 0]):
            return cand
    return None


def _resize_rows_cl(x: torch.Tensor, plan: _RowPlan, r0: int, r1: int, width: int) -> torch.Tensor:
    """Rows r0:r1 of F.interpolate(x, (H, width)) as a class-last [1, r1-r0, width, C] tensor."""
    i0, i1 = plan.i0[r0:r1], plan.i1[r0:r1]
    s0, s1 = int(i0[0]), int(i1[-1]) + 1  # source rows under the band (plus the margin row)
    rows = x[:, :, s0:s1]
    # Repeat the last row so the horizontal pass stays on the general kernel
    # (see _SMALL_OUTPUT_SIDES); extra rows are computed and ignored.
    need = max(2, _SMALL_OUTPUT_SIDES + 1 - width)
    if rows.shape[2] < need:
        rows = torch.cat([rows, rows[:, :, -1:].expand(-1, -1, need - rows.shape[2], -1)], dim=2)
    horiz = F.interpolate(rows.contiguous(), size=(rows.shape[2], width), mode="bilinear",
                          align_corners=False)
    horiz = horiz.movedim(1, -1).contiguous()  # [1, k, width, C]
    top = horiz.index_select(1, i0 - s0)
    bottom = horiz.index_select(1, i1 - s0)
    del horiz
    return _combine_rows(top, bottom, plan.l0[r0:r1].view(1, -1, 1, 1),
                         plan.l1[r0:r1].view(1, -1, 1, 1))


def interpolate_rows(x: torch.Tensor, out_size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``F.interpolate(x, out_size, mode='bilinear',
    align_corners=False)`` for ``x`` of shape [1, C, h, w], computed from the
    source rows under them only. Raises RuntimeError where this platform's
    kernel cannot be reproduced."""
    x = _as_nchw([x])[0]
    H, W = out_size
    if not 0 <= r0 < r1 <= H:
        raise ValueError(f"rows {r0}:{r1} outside 0:{H}")
    if x.shape[1] <= 3 or x.shape[2] * x.shape[3] == 1:  # kernels that _needs_full avoids
        return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)[:, :, r0:r1]
    plan = _row_plan(x.shape[2], H, x.device)
    if plan is None:
        raise RuntimeError(f"cannot reproduce F.interpolate rows for {x.shape[2]} -> {H} on {x.device}")
    return _resize_rows_cl(x, plan, r0, r1, W).movedim(-1, 1)


def _needs_full(logits: Sequence[torch.Tensor], out_size: tuple[int, int], band_bytes: int) -> bool:
    H, W = out_size
    C = logits[0].shape[1]
    if H + W <= _SMALL_OUTPUT_SIDES or C * H * W * 4 <= band_bytes:
        return True  # small enough: one piece is the bounded form
    # F.interpolate picks other kernels for 3 channels (single-threaded) and for
    # 1x1 maps (also channels-last contiguous); full buffers of <= 3 classes are small.
    return C <= 3 or any(x.shape[2] * x.shape[3] == 1 for x in logits)


def fuse_banded(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
                return_probs: bool = False, band_bytes: int = DEFAULT_BAND_BYTES) -> "Prediction":
    """``fuse_full`` computed in bands of output rows (memory bounded by ``band_bytes``
    per band tensor, plus the labels and, if asked, the full probabilities).

    Falls back to ``fuse_full`` (with a one-time warning) where the platform's
    interpolation cannot be reproduced row by row.
    """
    logits = _as_nchw(logits)
    H, W = (int(s) for s in out_size)
    if _needs_full(logits, (H, W), band_bytes):
        return fuse_full(logits, (H, W), return_probs)
    device = logits[0].device
    plans = [_row_plan(x.shape[2], H, device) for x in logits]
    if any(p is None for p in plans):
        _warn_once(f"rows {[x.shape[2] for x in logits]} -> {H} on {device}")
        return fuse_full(logits, (H, W), return_probs)
    C, n = logits[0].shape[1], len(logits)
    rows_per_band = max(1, int(band_bytes) // (C * W * 4))
    labels = torch.empty((H, W), dtype=torch.int64, device=device)
    probs = torch.empty((H, W, C), dtype=torch.float32, device=device) if return_probs else None
    for r0 in range(0, H, rows_per_band):
        r1 = min(H, r0 + rows_per_band)
        scores = None
        for x, plan in zip(logits, plans):
            p = F.softmax(_resize_rows_cl(x, plan, r0, r1, W), dim=-1)
            p.div_(n)
            if scores is None:
                scores = p
            else:
                scores.add_(p)
            del p
        assert scores is not None
        labels[r0:r1] = torch.max(scores[0], dim=-1).indices
        if probs is not None:
            probs[r0:r1] = scores[0]
        del scores
    return _finish(labels, probs)


_warned: set[str] = set()


def _warn_once(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"mit_semseg.inference: band-wise fusion cannot reproduce this platform's "
                      f"F.interpolate ({what}); using full-size buffers (same results, more memory)",
                      RuntimeWarning, stacklevel=3)


_self_check: dict[tuple[str, int, int], bool] = {}


def _banding_verified(device: torch.device, num_class: int) -> bool:
    """Compare fuse_banded with fuse_full on random scores once per device, class
    count and thread count (the things F.interpolate's kernel choice depends on)."""
    key = (str(device), int(num_class), torch.get_num_threads())
    if key not in _self_check:
        gen = torch.Generator().manual_seed(1234)
        # up- and downsampled rows, a narrow output (padded horizontal pass), a wide one
        logits = [(torch.randn(1, num_class, h, w, generator=gen) * 4).to(device)
                  for h, w in ((11, 9), (17, 13), (70, 150))]
        ok = True
        for size in ((67, 75), (41, 131)):
            ref = fuse_full(logits, size, return_probs=True)
            got = fuse_banded(logits, size, return_probs=True,
                              band_bytes=num_class * size[1] * 4 * 5)
            ok = ok and np.array_equal(ref.labels, got.labels) and torch.equal(ref.probs, got.probs)
        _self_check[key] = ok
        if not ok:
            _warn_once(f"self-check on {device} with {num_class} classes")
    return _self_check[key]


# ============================================================================ engine

@dataclass
class Prediction:
    """``labels``: H x W int64 numpy array of 0-based classes. ``probs``: the
    averaged class probabilities as a [C, H, W] float32 CPU tensor (a view of
    class-last storage), or None when not requested."""
    labels: np.ndarray
    probs: torch.Tensor | None = None


class InferenceEngine:
    """Multi-scale inference with an encoder/decoder pair.

    ``device``: see ``resolve_device``. ``flip``: also average the mirrored
    image. ``precision``: "fp32", or "bf16"/"fp16" autocast for the network
    (fusion always in float32). ``band_bytes``: memory bound of a fusion band;
    0 selects the full-buffer reference fusion.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *,
                 device: str | int | torch.device | None = "auto", flip: bool = False,
                 precision: str = "fp32", band_bytes: int = DEFAULT_BAND_BYTES) -> None:
        if not hasattr(decoder, "logits"):
            raise TypeError(f"{type(decoder).__name__} has no logits(conv_out) method; "
                            "the engine needs class scores before the softmax")
        self.device = resolve_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        self.flip = bool(flip)
        self.precision = precision
        self.band_bytes = int(band_bytes)
        _autocast(self.device, precision)  # validate early

    @property
    def num_class(self) -> int:
        return int(self.decoder.num_class)

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.precision):
            features = self.encoder(img, return_feature_maps=True)
            out = self.decoder.logits(features)
        return out.float()

    @torch.inference_mode()
    def scale_logits(self, img_data: Sequence[torch.Tensor],
                     flip: bool | None = None) -> list[torch.Tensor]:
        """Class scores ``[1, C, h, w]`` (float32, on the engine's device) for every
        resized copy in ``img_data`` (each ``[1, 3, h, w]``, normalised); with
        ``flip`` (default: the engine's) each copy is followed by its mirrored run,
        mirrored back."""
        flip = self.flip if flip is None else bool(flip)
        out = []
        for img in img_data:
            img = img.to(self.device, non_blocking=True)
            out.append(self._logits(img))
            if flip:
                out.append(self._logits(img.flip(-1)).flip(-1))
        return out

    @torch.inference_mode()
    def fuse(self, logits: Sequence[torch.Tensor], out_size: tuple[int, int],
             return_probs: bool = False) -> Prediction:
        """Resize, softmax, average and argmax ``logits`` at ``out_size`` (H, W)."""
        if self.band_bytes <= 0 or not _banding_verified(self.device, logits[0].shape[1]):
            return fuse_full(logits, out_size, return_probs)
        from . import fast  # same bits as fuse_banded, reused buffers (see fast.py)
        if fast._fast_banding_verified(self.device, logits[0].shape[1]):
            return fast.fuse_banded_fast(logits, out_size, return_probs, self.band_bytes)
        return fuse_banded(logits, out_size, return_probs, self.band_bytes)

    def predict(self, img_data: Sequence[torch.Tensor], out_size: tuple[int, int],
                return_probs: bool = False, flip: bool | None = None) -> Prediction:
        """``fuse(scale_logits(img_data, flip), out_size)``."""
        logits = self.scale_logits(img_data, flip)
        return self.fuse(logits, out_size, return_probs)

    def predict_sample(self, sample: Mapping[str, Any], return_probs: bool = False) -> Prediction:
        """Predict a ValDataset/TestDataset item (its ``img_data`` at its ``img_ori`` size)."""
        h, w = sample["img_ori"].shape[:2]
        return self.predict(sample["img_data"], (h, w), return_probs)


# ============================================================================ building

class CheckpointNotFoundError(FileNotFoundError):
    """Model weights are missing; the message names the paths and how to get them."""


def checkpoint_paths(directory: str, checkpoint: str) -> tuple[str, str]:
    """``directory/encoder_<checkpoint>`` and ``directory/decoder_<checkpoint>``;
    raises CheckpointNotFoundError naming what is missing and how to get it."""
    enc = os.path.join(directory, "encoder_" + checkpoint)
    dec = os.path.join(directory, "decoder_" + checkpoint)
    missing = [p for p in (enc, dec) if not os.path.isfile(p)]
    if missing:
        from .pretrained import RELEASED_MODELS
        name = os.path.basename(os.path.normpath(directory))
        hint = (f"fetch the released model: python3 -m mit_semseg.pretrained {name}"
                if name in RELEASED_MODELS else
                "train one first (python3 train.py --cfg <config>), or fetch a released model "
                "(python3 -m mit_semseg.pretrained --list)")
        raise CheckpointNotFoundError(
            f"checkpoint not found: {' and '.join(missing)}. Set DIR and the checkpoint name "
            f"(VAL.checkpoint / TEST.checkpoint) to an existing checkpoint, or {hint}")
    return enc, dec


def build_engine(cfg: Any, encoder_weights: str, decoder_weights: str, *,
                 device: str | int | torch.device | None = "auto", flip: bool = False,
                 precision: str = "fp32", band_bytes: int = DEFAULT_BAND_BYTES,
                 fast: bool = False) -> InferenceEngine:
    """Build the model described by ``cfg.MODEL`` / ``cfg.DATASET.num_class`` with
    the given weight files and wrap it in an InferenceEngine (``fast``: a
    ``fast.FastInferenceEngine``, same predictions up to float ties)."""
    from .models import ModelBuilder
    encoder = ModelBuilder.build_encoder(
        arch=cfg.MODEL.arch_encoder.lower(), fc_dim=cfg.MODEL.fc_dim, weights=encoder_weights,
        pretrained=False)
    decoder = ModelBuilder.build_decoder(
        arch=cfg.MODEL.arch_decoder.lower(), fc_dim=cfg.MODEL.fc_dim,
        num_class=cfg.DATASET.num_class, weights=decoder_weights, use_softmax=True)
    if fast:
        from .fast import FastInferenceEngine
        return FastInferenceEngine(encoder, decoder, device=device, flip=flip,
                                   precision=precision)
    return InferenceEngine(encoder, decoder, device=device, flip=flip, precision=precision,
                           band_bytes=band_bytes)


# ============================================================================ Python API

class ClassShare(NamedTuple):
    """One line of ``Segmenter.describe``: class index, name and share of pixels (%)."""
    index: int
    name: str
    percent: float


ImageInput = Any  # path (str / os.PathLike), PIL.Image.Image, or H x W x 3 uint8 numpy array


class Segmenter:
    """Segment photos with a trained model.

    >>> seg = Segmenter.from_config("config/ade20k-resnet50dilated-ppm_deepsup.yaml",
    ...                             checkpoint_dir="ckpt/ade20k-resnet50dilated-ppm_deepsup")
    >>> labels = seg("photo.jpg")                  # H x W int64, 0-based classes
    >>> for share in seg.describe(labels): print(share.name, share.percent)

    Paths are read as test.py reads them (EXIF orientation applied, any mode
    converted to RGB). PIL images and arrays are used as given (no EXIF
    rotation), so the labels line up with their pixels.
    """

    def __init__(self, engine: InferenceEngine, dataset_opt: Any,
                 names: Mapping[int, str] | None = None, colors: np.ndarray | None = None) -> None:
        from .dataset import TestDataset
        from .utils import class_colors, class_names
        self.engine = engine
        # A one-item TestDataset gives the exact resize/normalise rules of test.py.
        self._prep = TestDataset([{"fpath_img": "<in-memory>"}], dataset_opt)
        # DATASET.class_table (via dataset_opt) when it describes this model's classes
        table = dataset_opt if getattr(dataset_opt, "num_class", None) == engine.num_class \
            else engine.num_class
        self.names = dict(names) if names is not None else class_names(table)
        self.colors = np.asarray(colors) if colors is not None else class_colors(table)

    @classmethod
    def from_config(cls, config: Any, *, checkpoint_dir: str | None = None,
                    checkpoint: str | None = None, encoder_weights: str | None = None,
                    decoder_weights: str | None = None, device: str | int | None = "auto",
                    opts: Sequence[str] = (), flip: bool | None = None,
                    precision: str | None = None,
                    band_bytes: int = DEFAULT_BAND_BYTES) -> "Segmenter":
        """Build from a YAML path (or a loaded cfg). Weights: ``encoder_weights`` and
        ``decoder_weights`` if given, else ``<checkpoint_dir or cfg.DIR>/{encoder,decoder}_
        <checkpoint or cfg.TEST.checkpoint>``. ``flip``/``precision`` default to
        cfg.TEST.flip / cfg.TEST.precision."""
        from .config import load_cfg
        cfg = load_cfg(config, opts) if isinstance(config, (str, os.PathLike)) else config
        if (encoder_weights is None) != (decoder_weights is None):
            raise ValueError("give both encoder_weights and decoder_weights, or neither")
        if encoder_weights is None:
            encoder_weights, decoder_weights = checkpoint_paths(
                checkpoint_dir or cfg.DIR, checkpoint or cfg.TEST.checkpoint)
        else:
            for p in (encoder_weights, decoder_weights):
                if not os.path.isfile(p):
                    raise CheckpointNotFoundError(f"checkpoint not found: {p}")
        engine = build_engine(cfg, encoder_weights, decoder_weights, device=device,
                              flip=cfg.TEST.flip if flip is None else flip,
                              precision=precision or cfg.TEST.precision, band_bytes=band_bytes,
                              fast=cfg.TEST.fast)
        return cls(engine, cfg.DATASET)

    # ---------------------------------------------------------------- inputs
    def _to_pil(self, image: ImageInput) -> Image.Image:
        from .io import read_image
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image), exif_transpose=True)
        if isinstance(image, Image.Image):
            if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                arr = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
            return image.convert("RGB") if image.mode != "RGB" else image
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"numpy images must be uint8, got {image.dtype}")
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise ValueError(f"numpy images must be H x W x 3 (RGB), got shape {image.shape}")
            return Image.fromarray(np.ascontiguousarray(image[:, :, :3]), mode="RGB")
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")

    # ---------------------------------------------------------------- predict
    def predict(self, image: ImageInput, return_probs: bool = False, *,
                imgSizes: Sequence[int] | None = None, flip: bool | None = None):
        """Labels (H x W int64 numpy); with ``return_probs`` also the averaged class
        probabilities ([C, H, W] float32 tensor; full-size, so large for big photos).
        ``imgSizes`` (short sides, e.g. ``[450]`` for single scale) and ``flip``
        override the configured ones for this call."""
        pil = self._to_pil(image)
        img_data = self._prep._multi_scale(pil, imgSizes)
        pred = self.engine.predict(img_data, (pil.size[1], pil.size[0]), return_probs, flip)
        return (pred.labels, pred.probs) if return_probs else pred.labels

    def __call__(self, image: ImageInput) -> np.ndarray:
        return self.predict(image)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 colour image of ``labels`` (the class table's colours;
        ADE20K's for 150 classes without one)."""
        from .utils import colorEncode
        return colorEncode(labels, self.colors).astype(np.uint8)

    def describe(self, labels: np.ndarray, min_percent: float = 0.0) -> list[ClassShare]:
        """Classes present in ``labels`` with their share of pixels, largest first;
        shares at or below ``min_percent`` are left out."""
        return describe_labels(labels, self.names, min_percent)


def describe_labels(labels: np.ndarray, names: Mapping[int, str],
                    min_percent: float = 0.0) -> list[ClassShare]:
    """Class shares of ``labels`` (largest first, ties by class index), above ``min_percent``."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((values, -counts))
    out = []
    for i in order:
        pct = counts[i] / max(labels.size, 1) * 100
        if pct > min_percent:
            k = int(values[i])
            out.append(ClassShare(k, names.get(k, f"class_{k}"), float(pct)))
    return out

