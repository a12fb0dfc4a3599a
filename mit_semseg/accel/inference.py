"""The inference copy of a model: the same function, fewer and faster operations.

``optimize_for_inference(module)`` returns an eval-mode copy with every
BatchNorm folded into the convolution before it (``fold``), convolution +
ReLU/ReLU6 (and the residual add of ResNet, HRNet and MobileNetV2 blocks) run
as one operation (``fused``), wide 3x3 convolutions as Winograd F(2x2, 3x3)
(``winograd``), channels-last memory, the factorized pyramid heads and no
autograd state. Class scores equal the original model's to float32 rounding
(folding changes the order of operations; the tests bound the difference by
the float32 error of the dot products), so labels are identical except at
pixels whose two best classes tie to that precision.

Reduced precision (opt-in): ``optimize_for_inference(dtype=torch.bfloat16)``
keeps the class layers in float32 (on bf16 features) so that only the trunk
runs in bf16; the benchmark reports the label agreement with float32.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn as nn

from ..models.fusable import fusable_spec
from .fold import fuse_bn
from .fused import fuse_activations_

__all__ = ["optimize_for_inference", "prepare_input", "precision_dtype", "KeepFloat32",
           "factorize_pyramids_"]

_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def precision_dtype(precision: str | None) -> torch.dtype | None:
    """``"fp32"`` (or None) -> None; ``"bf16"`` -> torch.bfloat16; ``"fp16"`` -> torch.float16."""
    key = (precision or "fp32").lower()
    if key not in _PRECISIONS:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return _PRECISIONS[key]


def factorize_pyramids_(module: nn.Module, enable: bool = True) -> nn.Module:
    """Switch every pyramid head in ``module`` (PPM, UPerNet: ``Fusable.pyramid``) to
    the factorized form (``models.decoders.pyramid_conv``; same function up to float
    rounding, fewer operations), in place."""
    for m in module.modules():
        spec = fusable_spec(m)
        if spec is not None and spec.pyramid:
            m.factorized_pyramid = bool(enable)
    return module


class KeepFloat32(nn.Module):
    """Runs ``module`` in float32 on float32 copies of its inputs (for the class
    layers of a reduced-precision model)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    owner._modules[name] = value


def optimize_for_inference(module: nn.Module, *, channels_last: bool = True, fuse: bool = True,
                           dtype: torch.dtype | None = None,
                           keep_fp32: Iterable[str] | None = None,
                           factorize: bool = True) -> nn.Module:
    """An inference copy of ``module`` (which is left unchanged).

    ``fuse``: fold BatchNorms (``fuse_bn``) and fuse convolutions with their
    activation / residual add (``FusedConv2d``). ``channels_last``: convert
    4-D parameters to channels-last (feed channels-last input, see
    ``prepare_input``). ``dtype``: cast parameters (e.g. torch.bfloat16); the
    submodules named in ``keep_fp32`` (default: a decoder's ``class_layers``)
    stay float32 and get float32 input. ``factorize``: PPM heads through
    ``factorize_pyramids_``. Parameters never require grad.
    """
    net = fuse_bn(module) if fuse else copy.deepcopy(module).eval()
    factorize_pyramids_(net, factorize)
    if fuse:
        fuse_activations_(net)
    if dtype is not None and dtype != torch.float32:
        names = list(keep_fp32) if keep_fp32 is not None else list(getattr(net, "class_layers", ()))
        kept = {name: _get(net, name) for name in names}
        net.to(dtype)
        for name, sub in kept.items():
            sub.float()
            _set(net, name, KeepFloat32(sub))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def prepare_input(img: torch.Tensor, *, channels_last: bool = True,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """``img`` in the memory format and dtype an ``optimize_for_inference`` copy expects."""
    if dtype is not None and img.dtype != dtype:
        img = img.to(dtype)
    if channels_last and img.dim() == 4:
        img = img.contiguous(memory_format=torch.channels_last)
    return img
