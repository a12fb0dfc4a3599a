"""Backends of the inference engine: what turns a normalised image into class
scores.

* ``TorchBackend``: encoder + decoder in PyTorch, as the inference copy
  (:mod:`mit_semseg.accel`: BatchNorm folded, fused convolutions,
  channels-last, optional bf16) by default, or the modules as given
  (``exact``: the original's operations).
* ``OnnxBackend``: a file written by ``python -m mit_semseg export`` (float32)
  or ``python -m mit_semseg quantize`` (int8), run by onnxruntime
  (``TEST.backend onnxruntime TEST.onnx model.onnx``).

Both are callables ``backend(img)``: ``[1, 3, h, w]`` float32 -> ``[1, C, h', w']``
float32 scores before the softmax, with ``num_class``, ``name`` ("pytorch",
"onnxruntime") and ``precision`` (what the network computes in: "fp32", "bf16",
"fp16", "int8") attributes; the engine keeps everything else (multi-scale
copies, flip, fusion, sliding windows) and ``run_precision`` reconciles a
requested precision with a backend's.

An exported file records what it was made for (``export.onnx.metadata``:
architecture, classes, preprocessing). ``config_claims`` lists what a config
says about the same things and ``check_metadata`` refuses a file that says
otherwise (``TEST.onnx_trust config``, the default); ``file_settings`` reads
the file's own preprocessing and class table for ``TEST.onnx_trust file``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import contextlib
import warnings

import numpy as np
import torch
import torch.nn as nn

from ..accel import (mkldnn_bf16_available, optimize_for_inference, precision_dtype,
                     prepare_input)
from ..config import ConfigError, check_value
from ..config.schema import BACKENDS as SCHEMA_BACKENDS, TRUST as SCHEMA_TRUST
from ..data.classes import ClassTable, class_table
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..errors import InputNotFoundError

__all__ = ["TorchBackend", "OnnxBackend", "BACKENDS", "TRUST", "FILE_PRECISIONS",
           "OnnxMismatchError", "decode_metadata", "make_backend", "config_claims",
           "check_metadata", "file_settings", "run_precision"]

BACKENDS = SCHEMA_BACKENDS
# who decides the preprocessing and classes of an exported file (TEST.onnx_trust)
TRUST = SCHEMA_TRUST
# what an exported file computes in: its metadata's "precision" (export writes
# none: float32; python -m mit_semseg quantize writes "int8")
FILE_PRECISIONS = ("fp32", "int8")


class OnnxMismatchError(ConfigError):
    """An exported model's metadata disagrees with the config it is run with."""


class TorchBackend:
    """``backend(img)``: class scores of a ``SegmentationNetwork`` on ``device``.

    ``precision``: "fp32", or "bf16"/"fp16" for the network (bf16 casts the
    inference copy, class layers kept float32; fp16 and the exact path use
    autocast). ``exact``: run the network's encoder and decoder as given (NCHW,
    unfused) instead of an inference copy. ``channels_last`` / ``fuse``: parts
    of the inference copy (see ``accel.optimize_for_inference``).
    """

    name = "pytorch"

    def __init__(self, network: nn.Module, device: torch.device, *,
                 precision: str = "fp32", exact: bool = False, channels_last: bool = True,
                 fuse: bool = True) -> None:
        if str(precision).lower() == "int8":
            raise ConfigError("precision int8 runs an int8 file in onnxruntime: make one with "
                              "python -m mit_semseg quantize, then set backend onnxruntime and "
                              "onnx to that file (TEST.backend / TEST.onnx)")
        encoder, decoder = network.encoder, network.decoder
        if not hasattr(decoder, "logits"):
            raise TypeError(f"{type(decoder).__name__} has no logits(conv_out) method; "
                            "the engine needs class scores before the softmax")
        dtype = precision_dtype(precision)  # validates early
        if dtype == torch.bfloat16 and device.type == "cpu" and not mkldnn_bf16_available():
            warnings.warn("bf16 on this CPU: oneDNN has no bf16 convolutions here (they need "
                          "AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX), so torch's generic bf16 "
                          "convolution runs, slower than fp32; use precision fp32", stacklevel=3)
        self.device, self.precision, self.exact = device, precision, bool(exact)
        encoder = encoder.to(device).eval()
        decoder = decoder.to(device).eval()
        if self.exact:
            self.model_dtype, self.channels_last = None, False
        else:
            self.model_dtype = dtype if dtype == torch.bfloat16 else None
            self.channels_last = bool(channels_last)
            encoder = optimize_for_inference(encoder, channels_last=self.channels_last,
                                             fuse=fuse, dtype=self.model_dtype)
            decoder = optimize_for_inference(decoder, channels_last=self.channels_last,
                                             fuse=fuse, dtype=self.model_dtype)
        self.encoder, self.decoder = encoder, decoder
        self.num_class = int(decoder.num_class)

    def _autocast(self) -> Any:
        dtype = precision_dtype(self.precision)
        if self.model_dtype is not None or dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = prepare_input(img, channels_last=self.channels_last, dtype=self.model_dtype)
        with self._autocast():
            features = self.encoder(x, return_feature_maps=True)
            out = self.decoder.logits(features)
        return out.float().contiguous()

    def __repr__(self) -> str:
        kind = "exact" if self.exact else "inference copy"
        return f"TorchBackend({kind}, {self.precision}, {self.device}, num_class={self.num_class})"


class OnnxBackend:
    """``backend(img)``: normalised ``[1, 3, h, w]`` tensor -> class scores
    ``[1, num_class, h', w']`` float32 (CPU tensor), as ``InferenceEngine._logits``.

    ``threads``: onnxruntime intra-op threads (default: ``torch.get_num_threads()``,
    so both backends use the same cores). ``providers``: onnxruntime execution
    providers (default: CPU). ``metadata``: the file's metadata, JSON decoded.
    ``normalisation(mean, std)`` makes it feed the graph pixels normalised with the
    file's own mean/std instead of the ImageNet values the engine applies.
    ``precision``: the metadata's ``precision`` ("int8" for a file of
    ``python -m mit_semseg quantize``), else "fp32"; loading an int8 file that
    failed its accuracy check when it was made (kept with ``--keep``) warns.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnxruntime backend needs onnxruntime: "
                              "pip install -e \".[onnx]\"") from None
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputNotFoundError(f"ONNX model not found: {self.path} (write one with "
                                    "python -m mit_semseg export --cfg CFG --onnx FILE)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: not its notes on graph clean-up
        try:
            self.session = ort.InferenceSession(
                self.path, options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # corrupt or not an ONNX file
            raise ValueError(f"{self.path}: cannot be loaded by onnxruntime: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output, got "
                             f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0].name, outputs[0].name
        self._affine: tuple[torch.Tensor, torch.Tensor] | None = None
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        channels = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        if "num_class" in self.metadata:
            self.num_class = int(self.metadata["num_class"])
        elif isinstance(channels, int):
            self.num_class = channels
        else:
            raise ValueError(f"{self.path}: no num_class in the metadata and no fixed class "
                             "axis in the output; was it written by mit_semseg.export?")
        self.precision = str(self.metadata.get("precision", "fp32")).lower()
        if self.precision not in FILE_PRECISIONS:
            raise ValueError(f"{self.path}: its metadata says precision "
                             f"{self.metadata['precision']!r}; this package runs "
                             f"{list(FILE_PRECISIONS)} files")
        if self.precision == "int8" and self.metadata.get("int8_verified") is False:
            reason = (self.metadata.get("int8_check") or {}).get("failed", "")
            warnings.warn(f"{self.path}: this int8 file failed its accuracy check when it "
                          f"was made and was kept with --keep" + (f" ({reason})" if reason
                                                                   else ""), stacklevel=2)

    def normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Feed the graph ``(pixel - mean) / std`` (RGB in [0, 1]) although its input
        arrives ImageNet-normalised: an affine map per channel; none for ImageNet's."""
        if np.allclose(mean, IMAGENET_MEAN, rtol=0, atol=1e-7) and \
                np.allclose(std, IMAGENET_STD, rtol=0, atol=1e-7):
            self._affine = None
            return
        m0, s0 = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        m1, s1 = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self._affine = ((s0 / s1).view(1, 3, 1, 1), ((m0 - m1) / s1).view(1, 3, 1, 1))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[0] != 1 or img.shape[1] != 3:
            raise ValueError(f"expected an image of shape [1, 3, h, w], got {tuple(img.shape)}")
        img = img.detach().to("cpu", torch.float32)
        if self._affine is not None:
            img = img * self._affine[0] + self._affine[1]
        x = np.ascontiguousarray(img.numpy())
        (scores,) = self.session.run([self._output], {self._input: x})
        return torch.from_numpy(scores)

    def __repr__(self) -> str:
        return f"OnnxBackend({self.path!r}, {self.precision}, num_class={self.num_class})"


def run_precision(backend: Any, requested: str | None, section: str = "TEST") -> str:
    """The precision ``backend`` (an ``OnnxBackend``) runs at when ``<section>.precision``
    is ``requested``: the file's own for "fp32" (the default) or for the file's own
    value; "int8" for an fp32 file, and "bf16"/"fp16" (PyTorch's), raise ConfigError."""
    want = str(requested or "fp32").lower()
    have = str(getattr(backend, "precision", "fp32"))
    if want in ("fp32", "float32", have):
        return have
    path = getattr(backend, "path", "the file")
    if want == "int8":
        raise ConfigError(f"{section}.precision int8: {path} is a {have} file; make an int8 "
                          f"one with python -m mit_semseg quantize and set {section}.onnx to it")
    raise ConfigError(f"{section}.precision {requested!r} needs the pytorch backend; the "
                      f"onnxruntime backend runs the file at its own precision ({have})")


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """ONNX metadata_props (strings) with JSON values decoded."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def make_backend(name: str, onnx_path: str, num_class: int | None = None, *,
                 claims: Mapping[str, tuple[str, Any]] | None = None,
                 trust: str = "config", section: str = "TEST") -> OnnxBackend | None:
    """None for ``"pytorch"`` (the engine runs encoder + decoder); an ``OnnxBackend``
    for ``"onnxruntime"``. ``trust="config"``: the file must have ``num_class``
    classes and agree with ``claims`` (``config_claims``; ``check_metadata``; not
    compared when neither is given); ``"file"``: nothing is compared, the caller
    takes ``file_settings``. ``name``,
    ``onnx_path`` and ``trust`` come from the config keys ``<section>.backend`` /
    ``.onnx`` / ``.onnx_trust``; bad values raise ``ConfigError`` (a missing file
    FileNotFoundError)."""
    key = check_value(f"{section}.backend", name or "pytorch")
    trust = check_value(f"{section}.onnx_trust", trust or "config")
    if key == "pytorch":
        return None
    if not onnx_path:
        raise ConfigError("backend 'onnxruntime' needs the path of an exported model "
                          "(TEST.onnx / VAL.onnx, or onnx_path=...)")
    try:
        backend = OnnxBackend(onnx_path)
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if trust == "config" and (claims or num_class is not None):
        claims = dict(claims or {})
        if num_class is not None:
            claims.setdefault("num_class", ("DATASET.num_class", int(num_class)))
        check_metadata(backend, claims, section)
    return backend


def config_claims(cfg: Any, *, sizes: bool = True) -> dict[str, tuple[str, Any]]:
    """What ``cfg`` says about the keys an exported file records: metadata key ->
    (config key, value). ``sizes``: include the whole-image resize rule (imgSizes,
    imgMaxSize, padding_constant), which sliding-window mode does not use."""
    table = class_table(cfg)
    claims: dict[str, tuple[str, Any]] = {
        "arch_encoder": ("MODEL.arch_encoder", str(cfg.MODEL.arch_encoder).lower()),
        "arch_decoder": ("MODEL.arch_decoder", str(cfg.MODEL.arch_decoder).lower()),
        "fc_dim": ("MODEL.fc_dim", int(cfg.MODEL.fc_dim)),
        "num_class": ("DATASET.num_class", int(cfg.DATASET.num_class)),
        "mean": ("the preprocessing rule's mean (ImageNet's)", list(IMAGENET_MEAN)),
        "std": ("the preprocessing rule's std (ImageNet's)", list(IMAGENET_STD)),
    }
    own = table.source not in ("", "ADE20K")
    claims["class_names"] = (f"DATASET.class_table {table.source!r}" if own else
                             f"the config's default class names ({table.source or 'class_k'}; "
                             f"DATASET.class_table empty)", list(table.names))
    if sizes:
        rule = Preprocess.from_config(cfg.DATASET)
        claims.update(imgSizes=("DATASET.imgSizes", list(rule.img_sizes)),
                      imgMaxSize=("DATASET.imgMaxSize", rule.max_size),
                      padding_constant=("DATASET.padding_constant", rule.padding))
    return claims


def _disagreement(key: str, have: Any, where: str, want: Any) -> str | None:
    """One phrase naming the file's value and the config's, or None when they agree."""
    if key in ("mean", "std"):
        if np.shape(have) == np.shape(want) and np.allclose(have, want, rtol=0, atol=1e-7):
            return None
    elif key == "class_names":
        if not isinstance(have, list) or len(have) != len(want):
            return f"the file's {len(have)} class_names vs {len(want)} of {where}"
        k = next((k for k, (a, b) in enumerate(zip(have, want)) if a != b), None)
        return None if k is None else \
            f"the file's class_names[{k}] {have[k]!r} vs {where}: {want[k]!r}"
    elif have == want:
        return None
    return f"the file's {key} {have!r} vs config {where} {want!r}"


def check_metadata(backend: OnnxBackend, claims: Mapping[str, tuple[str, Any]],
                   section: str = "TEST") -> None:
    """Raise ``OnnxMismatchError`` (one line naming every disagreement: the file's
    value vs the config key and its value) when the file's metadata contradicts
    ``claims`` (``config_claims``). Keys the file does not record are not compared;
    the class count is compared with the file's output channels when not recorded."""
    meta = dict(backend.metadata)
    meta.setdefault("num_class", backend.num_class)
    if "num_class" in claims and meta["num_class"] != claims["num_class"][1]:
        claims = {k: v for k, v in claims.items() if k != "class_names"}  # follows from it
    found = [_disagreement(key, meta[key], where, want)
             for key, (where, want) in claims.items() if key in meta]
    found = [f for f in found if f]
    if found:
        raise OnnxMismatchError(
            f"{backend.path} was exported for another model or preprocessing than the config "
            f"describes: {'; '.join(found)} (run it with the config it was exported with, or "
            f"set {section}.onnx_trust file to use the file's own preprocessing and classes)")


_FILE_KEYS = ("num_class", "class_names", "class_colors", "mean", "std", "imgSizes",
              "imgMaxSize", "padding_constant")


def file_settings(backend: OnnxBackend, section: str = "TEST") -> tuple[Preprocess, ClassTable]:
    """The file's own resize rule and class table (``TEST.onnx_trust file``); also
    sets the backend to the file's mean/std. A file without this metadata (not
    written by ``python -m mit_semseg export``) raises ConfigError."""
    meta = backend.metadata
    missing = [k for k in _FILE_KEYS if k not in meta]
    if missing:
        raise ConfigError(f"{backend.path}: {section}.onnx_trust file needs the metadata "
                          f"python -m mit_semseg export writes; missing {', '.join(missing)} "
                          f"(set {section}.onnx_trust config to run it with the config's)")
    n = int(meta["num_class"])
    names, colors = list(meta["class_names"]), np.asarray(meta["class_colors"])
    if len(names) != n or colors.shape != (n, 3):
        raise ConfigError(f"{backend.path}: the metadata's class_names ({len(names)}) and "
                          f"class_colors {colors.shape} do not describe its {n} classes")
    backend.normalisation(meta["mean"], meta["std"])
    table = ClassTable(tuple(str(x) for x in names), colors.astype(np.uint8),
                       np.zeros((0, 3), np.uint8), source=backend.path)
    return Preprocess(meta["imgSizes"], meta["imgMaxSize"], meta["padding_constant"]), table
