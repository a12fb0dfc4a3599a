"""Multi-scale inference: the one engine behind eval.py, eval_multipro.py,
test.py, the web demo, export's self-check, the benchmark and the Python API
(``Segmenter``). It owns the whole path from a photo to its labels: the
preprocessing rule (``data.transforms.Preprocess``), the scale/flip loop, the
mode (whole image, or sliding window: ``slide``) and the backend (PyTorch or
onnxruntime: ``backends``); callers hand it a photo or a dataset sample.

Procedure (the original toolkit's): every resized copy of the image (one per
``DATASET.imgSizes`` entry) goes through encoder and decoder; the class scores
are resized bilinearly (``align_corners=False``) to the original image size,
turned into probabilities by a softmax over classes, divided by the number of
copies and summed; the label of a pixel is the class of highest summed
probability. With ``flip`` every copy is also run mirrored left-right (its
scores mirrored back before resizing) and counts as one more copy.

The engine has two steps, kept apart so each can be optimised on its own:

* ``InferenceEngine.scale_logits(img_data)``: the network (``scores``), once
  per copy; returns small class-score maps (``[1, C, h, w]`` float32, feature
  resolution). This is where the compute goes. By default it runs an
  inference copy of the model (``mit_semseg.accel``: BatchNorm folded, fused
  convolutions, channels-last, factorized pyramid heads), whose scores equal
  the model's to float32 rounding; ``exact=True`` (``VAL.exact`` /
  ``TEST.exact``) runs the modules as given, the original's operations.
* ``fuse(logits, out_size)``: resize, softmax, average and argmax at the
  original resolution, in bands of bounded memory by default; with ``exact``
  the original's full-size operations and bits (``fusion``).

What a prediction carries (``Prediction``): the labels always;
``return_probs``: the averaged class probabilities, a ``[C, H, W]`` float32
tensor (4 C H W bytes: 150 classes on a 640x480 photo = 184 MB);
``return_confidence``: each pixel's probability of its label, an ``H x W``
float32 array (4 H W bytes), computed with the labels without a ``C x H x W``
buffer in whole-image mode.

Progress (``progress``, a ``Progress``: ``progress(done, total)``): called with
``(0, total)`` before the first step and after every step, the last call
``(total, total)``. A step is one network run and the fusion in whole-image
mode (``copies x (1 + flip) + 1`` steps), one tile (and its mirrored run) in
sliding-window mode. For callers that show how far a long photo is.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..checkpoints.files import CheckpointNotFoundError, checkpoint_paths
from ..data.classes import ClassTable
from ..data.transforms import Preprocess
from ..models import build_model
from ..runtime.devices import resolve_device
from .backends import (TorchBackend, check_metadata, config_claims, file_settings,
                       make_backend, run_precision)
from .fusion import DEFAULT_BAND_BYTES, Prediction, fuse
from .slide import SlideWindow, predict_slide, slide_options

__all__ = ["InferenceEngine", "Prediction", "Progress", "engine_from_config",
           "DEFAULT_BAND_BYTES"]

Progress = Callable[[int, int], None]  # progress(done, total): see the module docstring


class InferenceEngine:
    """Multi-scale inference with a ``SegmentationNetwork`` (or another backend).

    Build it from a config with :meth:`from_config`; the constructor is the one
    place every engine is made. ``network``: the model (``models.build_model``),
    None with ``backend``. ``device``: a device spec (see ``runtime.devices``).
    ``flip``: also average the
    mirrored image. ``precision``, ``exact``, ``channels_last``, ``fuse``: how the
    PyTorch network runs (see ``backends.TorchBackend``; ``exact`` also fuses
    full-size with the original's operations, its bits). ``band_bytes``: memory
    bound of a fusion band (0: one piece; not used with ``exact``). ``backend``: a
    callable with a ``num_class`` attribute run in place of the network
    (``backends.OnnxBackend``; network None). ``preprocess``: the resize
    rule of whole-image copies (default: ``Preprocess()``, the ADE20K presets').
    ``window``: a ``slide.SlideWindow`` for sliding-window mode, None for whole
    images. ``classes``: the class table the model itself declares (an exported
    file's, with ``onnx_trust file``), None when the config's applies.
    """

    def __init__(self, network: nn.Module | None, *, device: Any = "auto", flip: bool = False, precision: str = "fp32",
                 band_bytes: int = DEFAULT_BAND_BYTES, exact: bool = False,
                 channels_last: bool = True, fuse: bool = True, backend: Any = None,
                 preprocess: Preprocess | None = None,
                 window: SlideWindow | None = None, classes: ClassTable | None = None) -> None:
        self.device = resolve_device(device)
        if backend is not None:
            precision = run_precision(backend, precision)  # the file's: fp32 or int8
        else:
            if network is None:
                raise ValueError("InferenceEngine needs a network or a backend")
            backend = TorchBackend(network, self.device, precision=precision,
                                   exact=exact, channels_last=channels_last, fuse=fuse)
        self.backend = backend
        self.flip = bool(flip)
        self.precision = precision
        self.band_bytes = int(band_bytes)
        self.exact = bool(exact)
        self.preprocess = preprocess or Preprocess()
        self.window = window
        self.classes = classes

    @property
    def num_class(self) -> int:
        return int(self.backend.num_class)

    @property
    def encoder(self) -> nn.Module | None:
        """The network's encoder as it runs (the inference copy by default; None for
        a backend without one, such as onnxruntime)."""
        return getattr(self.backend, "encoder", None)

    @property
    def decoder(self) -> nn.Module | None:
        """The decoder as it runs (see ``encoder``)."""
        return getattr(self.backend, "decoder", None)

    @property
    def mode(self) -> str:
        """``"slide"`` or ``"whole"``."""
        return "slide" if self.window is not None else "whole"

    # ---------------------------------------------------------------- network
    @torch.inference_mode()
    def scores(self, img: torch.Tensor) -> torch.Tensor:
        """One network run: normalised ``[1, 3, h, w]`` -> class scores ``[1, C, h', w']``
        (float32, before the softmax, feature resolution, on the engine's device)."""
        return self.backend(img.to(self.device, non_blocking=True)).to(self.device).float()

    @torch.inference_mode()
    def scale_logits(self, img_data: Sequence[torch.Tensor], flip: bool | None = None,
                     progress: Progress | None = None, total: int | None = None
                     ) -> list[torch.Tensor]:
        """Class scores ``[1, C, h, w]`` for every resized copy in ``img_data`` (each
        ``[1, 3, h, w]``, normalised); with ``flip`` (default: the engine's) each copy
        is followed by its mirrored run, mirrored back. ``progress`` is called after
        each run, ``(done, total)``; ``total`` defaults to the number of runs."""
        flip = self.flip if flip is None else bool(flip)
        runs = len(img_data) * (2 if flip else 1)
        total = runs if total is None else int(total)
        out = []
        for img in img_data:
            img = img.to(self.device, non_blocking=True)
            out.append(self.scores(img))
            if flip:
                _report(progress, len(out), total)
                out.append(self.scores(img.flip(-1)).flip(-1))
            _report(progress, len(out), total)
        return out

    @torch.inference_mode()
    def fuse(self, logits: Sequence[torch.Tensor], out_size: tuple[int, int],
             return_probs: bool = False, return_confidence: bool = False) -> Prediction:
        """Resize, softmax, average and argmax ``logits`` at ``out_size`` (H, W)."""
        return fuse(logits, out_size, return_probs, self.band_bytes, exact=self.exact,
                    return_confidence=return_confidence)

    # ---------------------------------------------------------------- whole image
    def predict(self, img_data: Sequence[torch.Tensor], out_size: tuple[int, int],
                return_probs: bool = False, flip: bool | None = None, *,
                return_confidence: bool = False, progress: Progress | None = None
                ) -> Prediction:
        """Whole-image prediction from prepared copies: ``fuse(scale_logits(img_data,
        flip), out_size)``; ``progress``: every network run and the fusion are steps."""
        flip = self.flip if flip is None else bool(flip)
        total = len(img_data) * (2 if flip else 1) + 1
        _report(progress, 0, total)
        logits = self.scale_logits(img_data, flip, progress, total)
        pred = self.fuse(logits, out_size, return_probs, return_confidence)
        _report(progress, total, total)
        return pred

    # ---------------------------------------------------------------- entry points
    def predict_image(self, image: Image.Image | np.ndarray, return_probs: bool = False, *,
                      sizes: Sequence[int] | None = None, flip: bool | None = None,
                      return_confidence: bool = False,
                      progress: Progress | None = None) -> Prediction:
        """Labels (and probabilities, confidence) of an RGB photo (PIL image or
        ``H x W x 3`` uint8 array) at its own size, in the engine's mode: whole-image
        copies at ``sizes`` (short sides; default: the preprocessing's ``imgSizes``),
        or sliding windows. ``progress(done, total)``: see the module docstring."""
        if self.window is not None:
            if sizes is not None:
                raise ValueError("imgSizes does not apply in sliding-window mode (the tiles "
                                 "are cut at slide_scale resolution); leave it None")
            return self._slide(np.asarray(image), return_probs, return_confidence, flip,
                               progress)
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        copies = self.preprocess.scales(pil, sizes)
        return self.predict(copies, (pil.size[1], pil.size[0]), return_probs, flip,
                            return_confidence=return_confidence, progress=progress)

    def predict_sample(self, sample: Mapping[str, Any], return_probs: bool = False, *,
                       return_confidence: bool = False,
                       progress: Progress | None = None) -> Prediction:
        """Predict a ValDataset/TestDataset item at its ``img_ori`` size, in the engine's
        mode (whole: its prepared ``img_data`` copies when they have the sizes of the
        engine's preprocessing, else copies of ``img_ori`` made by it; slide: tiles of
        ``img_ori``). ``progress(done, total)``: see the module docstring."""
        if self.window is not None:
            return self._slide(sample["img_ori"], return_probs, return_confidence,
                               progress=progress)
        h, w = sample["img_ori"].shape[:2]
        copies = sample["img_data"]
        if [tuple(c.shape[-2:]) for c in copies] != \
                [self.preprocess.copy_size(h, w, s) for s in self.preprocess.img_sizes]:
            # prepared by another rule (the dataset's config; the file's own decides)
            copies = self.preprocess.scales(Image.fromarray(sample["img_ori"]))
        return self.predict(copies, (h, w), return_probs,
                            return_confidence=return_confidence, progress=progress)

    def _slide(self, pixels: np.ndarray, return_probs: bool, return_confidence: bool,
               flip: bool | None = None, progress: Progress | None = None) -> Prediction:
        return predict_slide(self, pixels, self.window, return_probs, flip,
                             return_confidence=return_confidence, progress=progress)


    # ---------------------------------------------------------------- building
    @classmethod
    def from_config(cls, cfg: Any, section: str = "TEST", device: Any = "auto", *,
                    network: nn.Module | None = None, weights: tuple[str, str] | None = None,
                    checkpoint_dir: str | None = None, checkpoint: str | None = None,
                    **overrides: Any) -> "InferenceEngine":
        """The engine a config section (``"TEST"`` or ``"VAL"``) describes.

        The model: ``network`` if given (a live one, e.g. training's validation),
        else ``models.build_model(cfg)`` with ``weights`` (encoder file, decoder file)
        or ``<checkpoint_dir or DIR>/{encoder,decoder}_<checkpoint or
        <section>.checkpoint>``; or, with ``<section>.backend onnxruntime``, the graph
        ``<section>.onnx`` (no weights read; checked against the config, or trusted:
        ``<section>.onnx_trust``). Preprocessing from ``cfg.DATASET``; flip,
        precision, exact, band bytes and mode from the section. ``overrides``
        replace section values: ``flip``, ``precision``, ``exact``, ``band_bytes``,
        ``backend``, ``onnx_path``, ``onnx_trust``, ``window`` (a ``SlideWindow`` or
        None), ``channels_last``, ``fuse``.
        """
        node = cfg[section]
        unknown = sorted(set(overrides) - _OVERRIDES)
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; expected some of "
                            f"{sorted(_OVERRIDES)}")
        opt: dict[str, Any] = dict(flip=node.flip, precision=node.precision, exact=node.exact,
                                   band_bytes=DEFAULT_BAND_BYTES, backend=node.backend,
                                   onnx_path=node.onnx, onnx_trust=node.onnx_trust,
                                   window=slide_options(node, section), channels_last=True,
                                   fuse=True)
        opt.update(overrides)
        preprocess = Preprocess.from_config(cfg.DATASET)
        trust = str(opt["onnx_trust"] or "config").lower()
        common = dict(device=device, flip=opt["flip"], precision=opt["precision"],
                      band_bytes=opt["band_bytes"], window=opt["window"])
        runner = make_backend(opt["backend"], opt["onnx_path"], trust=trust, section=section)
        if runner is not None:
            classes = None
            common["precision"] = run_precision(runner, opt["precision"], section)
            if trust == "file":
                preprocess, classes = file_settings(runner, section)
            else:
                check_metadata(runner, config_claims(cfg, sizes=opt["window"] is None), section)
            return cls(None, backend=runner, preprocess=preprocess, classes=classes, **common)
        if network is None:
            network = build_model(cfg, _weight_files(cfg, node, weights, checkpoint_dir,
                                                     checkpoint))
        return cls(network, exact=opt["exact"], channels_last=opt["channels_last"],
                   fuse=opt["fuse"], preprocess=preprocess, **common)


_OVERRIDES = {"flip", "precision", "exact", "band_bytes", "backend", "onnx_path", "onnx_trust",
              "window", "channels_last", "fuse"}


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _weight_files(cfg: Any, node: Any, weights: tuple[str, str] | None,
                  checkpoint_dir: str | None, checkpoint: str | None) -> tuple[str, str]:
    if weights is not None:
        for path in weights:
            if not os.path.isfile(path):
                raise CheckpointNotFoundError(f"checkpoint not found: {path}")
        return weights[0], weights[1]
    return checkpoint_paths(checkpoint_dir or cfg.DIR, checkpoint or node.checkpoint)


def engine_from_config(cfg: Any, section: str = "TEST", device: Any = "auto",
                       **kwargs: Any) -> InferenceEngine:
    """``InferenceEngine.from_config`` under the name earlier versions exported."""
    return InferenceEngine.from_config(cfg, section, device, **kwargs)
