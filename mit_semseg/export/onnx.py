"""Export a trained encoder + decoder as one ONNX graph.

    python -m mit_semseg export --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \
        --checkpoint-dir ckpt/ade20k-resnet50dilated-ppm_deepsup --onnx model.onnx

The graph (see docs/deployment.md):

* input ``image``: float32 ``[1, 3, H, W]``, RGB in [0, 1] normalised with
  the ImageNet mean/std by the preprocessing rule (``data.transforms``); H and W are dynamic;
* output ``scores``: float32 ``[1, num_class, h, w]``, the decoder's class
  scores before the softmax at feature resolution (``decoder.logits`` of the
  encoder's feature maps: what ``InferenceEngine.scores`` returns), so the
  resize / softmax / multi-scale fusion stays the engine's;
* metadata (``metadata_props``, every value a JSON string): see ``metadata``.

Adaptive average pooling (PPM, UPerNet) is exported through ``ExportPool``, an
equivalent formulation whose bins follow the input size at run time (the
exporters bake the example's bin boundaries into the graph otherwise, which
gives wrong scores or errors at other sizes). After writing, the file is run
in onnxruntime on a test input of odd size and compared with PyTorch; a
difference above ``--tolerance`` is an error (exit code 1).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.classes import class_colors, class_names
from ..errors import MitSemsegError
from ..data.transforms import Preprocess
from ..inference.backends import OnnxBackend, decode_metadata
from ..models import SegmentationNetwork, build_model

__all__ = ["ExportPool", "ScoreNetwork", "exportable", "metadata", "export_onnx",
           "read_metadata", "compare_onnx", "build_network", "EXPORTERS", "DEFAULT_OPSET",
           "DEFAULT_TOLERANCE"]

DEFAULT_OPSET = 17
# Largest |onnxruntime - PyTorch| class score accepted by the check, relative to
# the largest |score| of the test input (float32 rounding of a deep network
# with different summation orders stays around 1e-6 of it).
DEFAULT_TOLERANCE = 1e-4
# "torchscript": torch.onnx.export(dynamo=False), no extra dependency, seconds
# per model; "dynamo": the torch.export-based exporter (needs onnxscript, tens
# of seconds per model). "auto": torchscript while torch still ships it.
EXPORTERS = ("auto", "torchscript", "dynamo")
FORMAT_VERSION = "1"


# ============================================================================ exportable modules

def _pool_matrix(n: Any, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``[bins, n]`` averaging weights of adaptive average pooling along one axis:
    bin ``i`` covers ``floor(i*n/bins) <= j < ceil((i+1)*n/bins)``."""
    i = torch.arange(bins, device=like.device)
    j = torch.arange(n, device=like.device)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class ExportPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two matrix products whose weights
    are computed from the input's size inside the graph, so the exported model
    pools correctly at every input size. Same values as the PyTorch module up to
    float rounding (summation order)."""

    def __init__(self, output_size: int | Sequence[int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def _bins(self, x: torch.Tensor) -> tuple[Any, Any]:
        size = self.output_size
        sh, sw = (size, size) if isinstance(size, int) else tuple(size)
        return (x.shape[-2] if sh is None else sh), (x.shape[-1] if sw is None else sw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins_h, bins_w = self._bins(x)
        rows = _pool_matrix(x.shape[-2], bins_h, x)
        cols = _pool_matrix(x.shape[-1], bins_w, x)
        return torch.matmul(rows, torch.matmul(x, cols.t()))


def exportable(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``module`` with every ``nn.AdaptiveAvgPool2d``
    replaced by ``ExportPool`` and the factorized pyramid heads switched off
    (the plain resize + concatenate + conv form exports as standard ops)."""
    out = copy.deepcopy(module).eval()
    for parent in list(out.modules()):
        if getattr(parent, "factorized_pyramid", False):
            parent.factorized_pyramid = False
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, ExportPool(child.output_size))
    return out


# The exported function is the network's forward without segSize: normalised image ->
# class scores at feature resolution (the name of earlier versions kept).
ScoreNetwork = SegmentationNetwork


# ============================================================================ metadata

def metadata(cfg: Any) -> dict[str, str]:
    """The model's metadata: every value a JSON string.

    ``num_class``, ``class_names`` (list, index = 0-based class), ``class_colors``
    (list of [r, g, b]), ``mean``/``std`` (RGB, applied to pixels in [0, 1]),
    ``imgSizes`` (short sides of the multi-scale copies), ``imgMaxSize`` (cap of
    the long side), ``padding_constant`` (copy sides rounded up to a multiple),
    ``arch_encoder``, ``arch_decoder``, ``fc_dim``, ``input``/``output`` (their
    layout in words) and ``mit_semseg_format``.
    """
    n = int(cfg.DATASET.num_class)
    rule = Preprocess.from_config(cfg.DATASET).metadata()  # the preprocessing rule
    names = class_names(cfg)  # DATASET.class_table if set, else ADE20K's / generated
    colors = np.asarray(class_colors(cfg))[:n].astype(int).tolist()
    values: dict[str, Any] = {
        "mit_semseg_format": FORMAT_VERSION,
        "num_class": n,
        "class_names": [names.get(k, f"class_{k}") for k in range(n)],
        "class_colors": colors,
        **{key: rule[key] for key in ("mean", "std", "imgSizes", "imgMaxSize",
                                      "padding_constant")},
        "arch_encoder": str(cfg.MODEL.arch_encoder).lower(),
        "arch_decoder": str(cfg.MODEL.arch_decoder).lower(),
        "fc_dim": int(cfg.MODEL.fc_dim),
        "input": "image: float32 [1, 3, H, W], RGB / 255, minus mean, divided by std",
        "output": "scores: float32 [1, num_class, h, w], class scores before softmax "
                  "at feature resolution; resize bilinearly to H x W, argmax over classes",
    }
    return {k: json.dumps(v) for k, v in values.items()}


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata of an exported file, JSON values decoded."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return decode_metadata({prop.key: prop.value for prop in model.metadata_props})


# ============================================================================ export + check

def _pick_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {list(EXPORTERS)}")
    if exporter != "auto":
        return exporter
    try:
        from torch.onnx._internal import torchscript_exporter  # noqa: F401
        return "torchscript"
    except ImportError:
        return "dynamo"


@contextlib.contextmanager
def _c_output_held() -> Iterator[Any]:
    """File descriptors 1 and 2 (what C++ code prints) go to one temporary file for
    the block, which is yielded (binary, to read before the block ends)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as held:
        for fd in saved:
            os.dup2(held.fileno(), fd)
        try:
            yield held
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy_ in saved.items():
                os.dup2(copy_, fd)
                os.close(copy_)


class OnnxExportError(MitSemsegError, RuntimeError):
    """The exporter cannot write the network (the message names the operator)."""


def export_onnx(network: nn.Module, path: str, *, props: Mapping[str, str] | None = None,
                opset: int = DEFAULT_OPSET, exporter: str = "auto",
                example_size: tuple[int, int] = (64, 64)) -> None:
    """Write ``network`` (an ``exportable`` ``ScoreNetwork``) to ``path`` with a
    dynamic height and width, and the metadata ``props``."""
    import onnx
    kind = _pick_exporter(exporter)
    example = torch.randn(1, 3, *example_size)
    network = network.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # the torchscript exporter warns that it is deprecated, tracing that
        # shapes are used as values; both are expected here
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            # the exporter prints its whole graph (hundreds of lines) from C++ before
            # raising: held, and shown (on stderr) only when the export succeeds
            with _c_output_held() as held:
                try:
                    torch.onnx.export(network, (example,), path, dynamo=False,
                                      opset_version=opset, input_names=["image"],
                                      output_names=["scores"],
                                      dynamic_axes={"image": {2: "height", 3: "width"},
                                                    "scores": {2: "score_height",
                                                               3: "score_width"}})
                except torch.onnx.errors.UnsupportedOperatorError as exc:
                    # e.g. DINOv2: timm resamples its position embeddings for each input
                    # size with antialiased bicubic (aten::_upsample_bicubic2d_aa)
                    raise OnnxExportError(
                        f"{path}: cannot export this network at dynamic sizes: {exc}. Run it "
                        f"with the PyTorch backend (TEST.backend torch), or try --exporter "
                        f"dynamo (needs onnxscript)") from None
                held.seek(0)
                shown = held.read()
            if shown:
                sys.stderr.write(shown.decode(errors="replace"))
        else:
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ImportError("the dynamo exporter needs onnxscript: pip install onnxscript")
            dims = {2: torch.export.Dim("height", min=8, max=16384),
                    3: torch.export.Dim("width", min=8, max=16384)}
            program = torch.onnx.export(network, (example,), dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=["scores"],
                                        dynamic_shapes={"image": dims}, verbose=False)
            program.save(path)
    model = onnx.load(path)
    for key, value in (props or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)


def compare_onnx(path: str, network: nn.Module, sizes: Sequence[tuple[int, int]] = ((97, 75),),
                 seed: int = 0) -> tuple[float, float]:
    """Largest |onnxruntime - PyTorch| score over random inputs of ``sizes``: absolute,
    and relative to the largest |score| of PyTorch (one tolerance fits any weights)."""
    backend = OnnxBackend(path)
    gen = torch.Generator().manual_seed(seed)
    worst_abs = worst = 0.0
    for h, w in sizes:
        img = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = network.eval()(img)
        got = backend(img)
        if got.shape != ref.shape:
            raise RuntimeError(f"{path}: onnxruntime gives scores of shape {tuple(got.shape)} "
                               f"for a {h}x{w} input, PyTorch {tuple(ref.shape)}")
        diff = float((got - ref).abs().max())
        worst_abs = max(worst_abs, diff)
        worst = max(worst, diff / max(float(ref.abs().max()), 1e-12))
    return worst_abs, worst


# ============================================================================ building

def build_network(cfg: Any, encoder_weights: str, decoder_weights: str) -> SegmentationNetwork:
    """The network of ``cfg`` with these weight files (``models.build_model``), in eval mode."""
    return build_model(cfg, (encoder_weights, decoder_weights)).eval()
