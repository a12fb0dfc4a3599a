"""Backends of the inference engine: what turns a normalised image into class
scores.

* ``TorchBackend``: encoder + decoder in PyTorch, as the inference copy
  (:mod:`mit_semseg.accel`: BatchNorm folded, fused convolutions,
  channels-last, optional bf16) by default, or the modules as given
  (``exact``: the original's operations).
* ``OnnxBackend``: a file written by ``python -m mit_semseg export``, run by
  onnxruntime (``TEST.backend onnxruntime TEST.onnx model.onnx``).

Both are callables ``backend(img)``: ``[1, 3, h, w]`` float32 -> ``[1, C, h', w']``
float32 scores before the softmax, with a ``num_class`` attribute; the engine
keeps everything else (multi-scale copies, flip, fusion, sliding windows).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import contextlib
import warnings

import numpy as np
import torch
import torch.nn as nn

from ..accel import (mkldnn_bf16_available, optimize_for_inference, precision_dtype,
                     prepare_input)
from ..config import ConfigError
from ..errors import InputNotFoundError

__all__ = ["TorchBackend", "OnnxBackend", "BACKENDS", "decode_metadata", "make_backend"]

BACKENDS = ("pytorch", "onnxruntime")


class TorchBackend:
    """``backend(img)``: class scores of encoder + decoder on ``device``.

    ``precision``: "fp32", or "bf16"/"fp16" for the network (bf16 casts the
    inference copy, class layers kept float32; fp16 and the exact path use
    autocast). ``exact``: run ``encoder`` and ``decoder`` as given (NCHW,
    unfused) instead of an inference copy. ``channels_last`` / ``fuse``: parts
    of the inference copy (see ``accel.optimize_for_inference``).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, device: torch.device, *,
                 precision: str = "fp32", exact: bool = False, channels_last: bool = True,
                 fuse: bool = True) -> None:
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
    """

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
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        channels = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        if "num_class" in self.metadata:
            self.num_class = int(self.metadata["num_class"])
        elif isinstance(channels, int):
            self.num_class = channels
        else:
            raise ValueError(f"{self.path}: no num_class in the metadata and no fixed class "
                             "axis in the output; was it written by mit_semseg.export?")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[0] != 1 or img.shape[1] != 3:
            raise ValueError(f"expected an image of shape [1, 3, h, w], got {tuple(img.shape)}")
        x = np.ascontiguousarray(img.detach().to("cpu", torch.float32).numpy())
        (scores,) = self.session.run([self._output], {self._input: x})
        return torch.from_numpy(scores)

    def __repr__(self) -> str:
        return f"OnnxBackend({self.path!r}, num_class={self.num_class})"


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """ONNX metadata_props (strings) with JSON values decoded."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def make_backend(name: str, onnx_path: str, num_class: int | None = None) -> OnnxBackend | None:
    """None for ``"pytorch"`` (the engine runs encoder + decoder); an ``OnnxBackend``
    for ``"onnxruntime"``, checked to have ``num_class`` classes. ``name`` and
    ``onnx_path`` come from the config keys ``TEST.backend``/``TEST.onnx`` (or VAL.*);
    bad values raise ``ConfigError`` (a missing file FileNotFoundError)."""
    key = str(name or "pytorch").lower()
    if key not in BACKENDS:
        raise ConfigError(f"backend: unknown backend {name!r}; expected one of {list(BACKENDS)}")
    if key == "pytorch":
        return None
    if not onnx_path:
        raise ConfigError("backend 'onnxruntime' needs the path of an exported model "
                          "(TEST.onnx / VAL.onnx, or onnx_path=...)")
    try:
        backend = OnnxBackend(onnx_path)
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if num_class is not None and backend.num_class != int(num_class):
        raise ConfigError(f"{onnx_path}: the model has {backend.num_class} classes, the config "
                          f"DATASET.num_class {num_class}")
    return backend
