"""Multi-scale inference: the one engine behind eval.py, eval_multipro.py,
test.py, the web demo and the Python API (``Segmenter``).

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
  resolution). This is where the compute goes. By default it runs an
  inference copy of the model (``models.inference_copy``: BatchNorm folded,
  fused convolutions, channels-last, factorized pyramid heads), whose scores
  equal the model's to float32 rounding; ``exact=True`` (``VAL.exact`` /
  ``TEST.exact``) runs the modules as given, the original's operations.
* ``fuse(logits, out_size)``: resize, softmax, average and argmax at the
  original resolution, in bands of bounded memory by default; with ``exact``
  the original's full-size operations and bits (``mit_semseg.fusion``).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .fusion import DEFAULT_BAND_BYTES, Prediction, fuse
from .models.inference_copy import (mkldnn_bf16_available, optimize_for_inference, precision_dtype,
                                    prepare_input)

__all__ = ["InferenceEngine", "Prediction", "Segmenter", "ClassShare", "CheckpointNotFoundError",
           "DeviceUnavailableError", "resolve_device", "checkpoint_paths", "build_engine",
           "describe_labels", "DEFAULT_BAND_BYTES"]


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
    dtype = precision_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ============================================================================ engine

class InferenceEngine:
    """Multi-scale inference with an encoder/decoder pair.

    ``device``: see ``resolve_device``. ``flip``: also average the mirrored
    image. ``precision``: "fp32", or "bf16"/"fp16" for the network (fusion
    always in float32; bf16 casts the inference copy, class layers kept
    float32; fp16 and the exact path use autocast). ``band_bytes``: memory
    bound of a fusion band (0: one piece; not used with ``exact``). ``exact``: run
    ``encoder`` and ``decoder`` as given (NCHW, unfused) instead of an inference
    copy, and fuse full-size with the original's operations (its bits).
    ``channels_last`` / ``fuse``: parts of the default path, which also fuses
    labels with ``fusion.fuse(exact=False)`` (no softmax for a single copy, no
    division by the number of copies; same labels up to float ties).
    ``backend``: a callable with a ``num_class`` attribute run in place of
    encoder + decoder (``onnx_backend.OnnxBackend``; encoder and decoder None).
    """

    def __init__(self, encoder: nn.Module | None, decoder: nn.Module | None, *,
                 device: str | int | torch.device | None = "auto", flip: bool = False,
                 precision: str = "fp32", band_bytes: int = DEFAULT_BAND_BYTES,
                 exact: bool = False, channels_last: bool = True,
                 fuse: bool = True, backend: Any = None) -> None:
        self.backend = backend
        if backend is not None:
            if (precision or "fp32").lower() not in ("fp32", "float32"):
                raise ValueError(f"precision {precision!r} needs the pytorch backend; "
                                 "the onnxruntime backend runs the exported float32 graph")
            encoder = decoder = None
        elif not hasattr(decoder, "logits"):
            raise TypeError(f"{type(decoder).__name__} has no logits(conv_out) method; "
                            "the engine needs class scores before the softmax")
        self.device = resolve_device(device)
        self.flip = bool(flip)
        self.precision = precision
        self.band_bytes = int(band_bytes)
        self.exact = bool(exact)
        dtype = precision_dtype(precision)  # validates early
        if dtype == torch.bfloat16 and self.device.type == "cpu" and not mkldnn_bf16_available():
            warnings.warn("bf16 on this CPU: oneDNN has no bf16 convolutions here (they need "
                          "AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX), so torch's generic bf16 "
                          "convolution runs, slower than fp32; use precision fp32", stacklevel=2)
        if backend is None:
            encoder = encoder.to(self.device).eval()
            decoder = decoder.to(self.device).eval()
        if self.exact or backend is not None:
            self.model_dtype, self.channels_last = None, False
        else:
            self.model_dtype = dtype if dtype == torch.bfloat16 else None
            self.channels_last = bool(channels_last)
            encoder = optimize_for_inference(encoder, channels_last=self.channels_last,
                                             fuse=fuse, dtype=self.model_dtype)
            decoder = optimize_for_inference(decoder, channels_last=self.channels_last,
                                             fuse=fuse, dtype=self.model_dtype)
        self.encoder, self.decoder = encoder, decoder

    @property
    def num_class(self) -> int:
        return int((self.backend or self.decoder).num_class)

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        if self.backend is not None:
            return self.backend(img).to(self.device).float()
        x = prepare_input(img, channels_last=self.channels_last, dtype=self.model_dtype)
        autocast = (contextlib.nullcontext() if self.model_dtype is not None
                    else _autocast(self.device, self.precision))
        with autocast:
            features = self.encoder(x, return_feature_maps=True)
            out = self.decoder.logits(features)
        return out.float().contiguous()

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
        return fuse(logits, out_size, return_probs, self.band_bytes, exact=self.exact)

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
                 exact: bool = False, backend: str = "pytorch",
                 onnx_path: str = "") -> InferenceEngine:
    """Build the model described by ``cfg.MODEL`` / ``cfg.DATASET.num_class`` with
    the given weight files and wrap it in an InferenceEngine (``exact``: the
    original's operations instead of the inference copy). ``backend="onnxruntime"``:
    run the exported graph ``onnx_path`` instead (weights unused)."""
    from .onnx_backend import make_backend
    runner = make_backend(backend, onnx_path, cfg.DATASET.num_class)
    if runner is not None:
        return InferenceEngine(None, None, device=device, flip=flip, precision=precision,
                               band_bytes=band_bytes, backend=runner)
    from .models import ModelBuilder
    encoder = ModelBuilder.build_encoder(
        arch=cfg.MODEL.arch_encoder.lower(), fc_dim=cfg.MODEL.fc_dim, weights=encoder_weights,
        pretrained=False)
    decoder = ModelBuilder.build_decoder(
        arch=cfg.MODEL.arch_decoder.lower(), fc_dim=cfg.MODEL.fc_dim,
        num_class=cfg.DATASET.num_class, weights=decoder_weights, use_softmax=True)
    return InferenceEngine(encoder, decoder, device=device, flip=flip, precision=precision,
                           band_bytes=band_bytes, exact=exact)


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
                 names: Mapping[int, str] | None = None, colors: np.ndarray | None = None,
                 slide: Any = None) -> None:
        from .dataset import TestDataset
        from .utils import class_colors, class_names
        self.engine = engine
        self.slide = slide  # a slide.SlideWindow: sliding-window mode; None: whole image
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
                    precision: str | None = None, band_bytes: int = DEFAULT_BAND_BYTES,
                    exact: bool | None = None, backend: str | None = None,
                    onnx_path: str | None = None, slide: Any = None) -> "Segmenter":
        """Build from a YAML path (or a loaded cfg). Weights: ``encoder_weights`` and
        ``decoder_weights`` if given, else ``<checkpoint_dir or cfg.DIR>/{encoder,decoder}_
        <checkpoint or cfg.TEST.checkpoint>``. ``flip``/``precision``/``exact`` default
        to cfg.TEST.flip / cfg.TEST.precision / cfg.TEST.exact. ``backend`` ("pytorch" |
        "onnxruntime") and ``onnx_path`` default to cfg.TEST.backend / cfg.TEST.onnx (with
        onnxruntime no weights are read). ``slide``: a ``slide.SlideWindow``, False for
        whole-image inference, or None for cfg.TEST.mode / crop_size / stride / slide_scale."""
        from .config import load_cfg
        from .slide import slide_options
        cfg = load_cfg(config, opts) if isinstance(config, (str, os.PathLike)) else config
        backend = str(backend or cfg.TEST.backend).lower()
        if slide is None:
            slide = slide_options(cfg.TEST, "TEST")
        if (encoder_weights is None) != (decoder_weights is None):
            raise ValueError("give both encoder_weights and decoder_weights, or neither")
        if backend == "onnxruntime":
            encoder_weights = decoder_weights = ""
        elif encoder_weights is None:
            encoder_weights, decoder_weights = checkpoint_paths(
                checkpoint_dir or cfg.DIR, checkpoint or cfg.TEST.checkpoint)
        else:
            for p in (encoder_weights, decoder_weights):
                if not os.path.isfile(p):
                    raise CheckpointNotFoundError(f"checkpoint not found: {p}")
        engine = build_engine(cfg, encoder_weights, decoder_weights, device=device,
                              flip=cfg.TEST.flip if flip is None else flip,
                              precision=precision or cfg.TEST.precision, band_bytes=band_bytes,
                              exact=cfg.TEST.exact if exact is None else exact,
                              backend=backend,
                              onnx_path=cfg.TEST.onnx if onnx_path is None else onnx_path)
        return cls(engine, cfg.DATASET, slide=slide or None)

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
        if self.slide is not None:
            from .slide import predict_slide
            if imgSizes is not None:
                raise ValueError("imgSizes does not apply in sliding-window mode (the tiles "
                                 "are cut at slide_scale resolution); leave it None")
            pred = predict_slide(self.engine, np.asarray(pil), self.slide, return_probs, flip)
            return (pred.labels, pred.probs) if return_probs else pred.labels
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

