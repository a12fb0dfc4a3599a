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
from ..runtime.devices import resolve_device
from .backends import (TorchBackend, check_metadata, config_claims, file_settings,
                       make_backend, run_precision)
from .fusion import DEFAULT_BAND_BYTES, Prediction, fuse
from .slide import SlideWindow, predict_slide, slide_options

__all__ = ["InferenceEngine", "Prediction", "Progress", "build_engine", "engine_from_config",
           "DEFAULT_BAND_BYTES"]

Progress = Callable[[int, int], None]  # progress(done, total): see the module docstring


class InferenceEngine:
    """Multi-scale inference with an encoder/decoder pair (or another backend).

    ``device``: a device spec (see ``runtime.devices``). ``flip``: also average the
    mirrored image. ``precision``, ``exact``, ``channels_last``, ``fuse``: how the
    PyTorch network runs (see ``backends.TorchBackend``; ``exact`` also fuses
    full-size with the original's operations, its bits). ``band_bytes``: memory
    bound of a fusion band (0: one piece; not used with ``exact``). ``backend``: a
    callable with a ``num_class`` attribute run in place of encoder + decoder
    (``backends.OnnxBackend``; encoder and decoder None). ``preprocess``: the resize
    rule of whole-image copies (default: ``Preprocess()``, the ADE20K presets').
    ``window``: a ``slide.SlideWindow`` for sliding-window mode, None for whole
    images. ``classes``: the class table the model itself declares (an exported
    file's, with ``onnx_trust file``), None when the config's applies.
    """

    def __init__(self, encoder: nn.Module | None, decoder: nn.Module | None, *,
                 device: Any = "auto", flip: bool = False, precision: str = "fp32",
                 band_bytes: int = DEFAULT_BAND_BYTES, exact: bool = False,
                 channels_last: bool = True, fuse: bool = True, backend: Any = None,
                 preprocess: Preprocess | None = None,
                 window: SlideWindow | None = None, classes: ClassTable | None = None) -> None:
        self.device = resolve_device(device)
        if backend is not None:
            precision = run_precision(backend, precision)  # the file's: fp32 or int8
        else:
            backend = TorchBackend(encoder, decoder, self.device, precision=precision,
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


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# ============================================================================ building

def build_engine(cfg: Any, encoder_weights: str, decoder_weights: str, *,
                 device: Any = "auto", flip: bool = False, precision: str = "fp32",
                 band_bytes: int = DEFAULT_BAND_BYTES, exact: bool = False,
                 backend: str = "pytorch", onnx_path: str = "", onnx_trust: str = "config",
                 window: SlideWindow | None = None, section: str = "TEST") -> InferenceEngine:
    """Build the model described by ``cfg.MODEL`` / ``cfg.DATASET.num_class`` with
    the given weight files and wrap it in an InferenceEngine that preprocesses as
    ``cfg.DATASET`` says (``exact``: the original's operations instead of the
    inference copy). ``backend="onnxruntime"``: run the exported graph
    ``onnx_path`` instead (weights unused), checked against the config
    (``onnx_trust="config"``: a file whose metadata disagrees is refused) or on
    the file's own preprocessing and class table (``"file"``; ``engine.classes``).
    ``section``: the config section named in messages."""
    preprocess = Preprocess.from_config(cfg.DATASET)
    trust = str(onnx_trust or "config").lower()
    runner = make_backend(backend, onnx_path, trust=trust, section=section)
    if runner is not None:
        classes, precision = None, run_precision(runner, precision, section)
        if trust == "file":
            preprocess, classes = file_settings(runner, section)
        else:
            check_metadata(runner, config_claims(cfg, sizes=window is None), section)
        return InferenceEngine(None, None, device=device, flip=flip, precision=precision,
                               band_bytes=band_bytes, backend=runner, preprocess=preprocess,
                               window=window, classes=classes)
    from ..models import ModelBuilder
    encoder = ModelBuilder.build_encoder(
        arch=cfg.MODEL.arch_encoder.lower(), fc_dim=cfg.MODEL.fc_dim, weights=encoder_weights,
        pretrained=False)
    decoder = ModelBuilder.build_decoder(
        arch=cfg.MODEL.arch_decoder.lower(), fc_dim=cfg.MODEL.fc_dim,
        num_class=cfg.DATASET.num_class, weights=decoder_weights, use_softmax=True)
    return InferenceEngine(encoder, decoder, device=device, flip=flip, precision=precision,
                           band_bytes=band_bytes, exact=exact, preprocess=preprocess,
                           window=window)


def engine_from_config(cfg: Any, section: str = "TEST", device: Any = "auto", *,
                       checkpoint_dir: str | None = None, checkpoint: str | None = None,
                       weights: tuple[str, str] | None = None,
                       **overrides: Any) -> InferenceEngine:
    """The engine a config section (``"TEST"`` or ``"VAL"``) describes: the PyTorch
    model with ``weights`` (encoder file, decoder file) if given, else
    ``<checkpoint_dir or DIR>/{encoder,decoder}_<checkpoint or <section>.checkpoint>``;
    or the onnxruntime graph ``<section>.onnx`` (no weights read; checked against
    the config, or trusted: ``<section>.onnx_trust``). Flip, precision, exact,
    backend and mode come from the section; ``overrides`` (keyword arguments
    of ``build_engine``) replace them."""
    node = cfg[section]
    options: dict[str, Any] = dict(flip=node.flip, precision=node.precision, exact=node.exact,
                                   backend=node.backend, onnx_path=node.onnx,
                                   onnx_trust=node.onnx_trust,
                                   window=slide_options(node, section), section=section)
    options.update(overrides)
    enc = dec = ""
    if str(options["backend"]).lower() == "onnxruntime":
        pass
    elif weights is not None:
        enc, dec = weights
        for path in weights:
            if not os.path.isfile(path):
                raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    else:
        enc, dec = checkpoint_paths(checkpoint_dir or cfg.DIR, checkpoint or node.checkpoint)
    return build_engine(cfg, enc, dec, device=device, **options)
