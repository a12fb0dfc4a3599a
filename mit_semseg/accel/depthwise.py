"""Dilated depthwise convolution with a fast CPU backward (default training step).

On CPU, PyTorch's backward of a *dilated* depthwise convolution (MobileNetV2's
dilated stages) takes 10-30x its forward: oneDNN has no fast kernel for it.
``DilatedDepthwiseConv2d`` keeps the forward and computes the backward from
fast pieces:

- input gradient: the same dilated depthwise convolution, forward, with the
  kernel flipped (a stride-1 "same" convolution is its own transpose, up to
  the flip);
- weight gradient: the dilated convolution on an ``HxW`` map equals an
  undilated one on its ``d*d`` interleaved sub-maps (rows and columns taken
  every ``d``-th; "space to batch"), whose weight gradient is fast.

Both equal PyTorch's up to float summation order. Modules whose layout does
not fit (stride, groups, padding) or that run off CPU use ``nn.Conv2d``'s own
forward. ``use_fast_depthwise_`` switches a network's eligible convolutions in
place; state-dict keys and parameters are unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DilatedDepthwiseConv2d", "use_fast_depthwise_"]


def _eligible(conv: nn.Conv2d) -> bool:
    """Stride-1, zero-padded "same" depthwise convolution (one filter per
    channel) with an odd kernel and a dilation above 1."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    return (conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
            and tuple(conv.stride) == (1, 1) and conv.padding_mode == "zeros"
            and kh % 2 == 1 and kw % 2 == 1 and max(dh, dw) > 1
            and tuple(conv.padding) == (dh * (kh // 2), dw * (kw // 2)))


def _space_to_batch(x: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    """``(N, C, H, W)`` to ``(N*dh*dw, C, ceil(H/dh), ceil(W/dw))``: sub-map
    ``(i, j)`` holds rows ``i::dh`` and columns ``j::dw`` (zero-filled past the
    edge), channels-last."""
    n, c, h, w = x.shape
    hp, wp = -(-h // dh) * dh, -(-w // dw) * dw
    v = x.permute(0, 2, 3, 1)
    if (hp, wp) != (h, w):
        v = F.pad(v, (0, 0, 0, wp - w, 0, hp - h))
    v = v.reshape(n, hp // dh, dh, wp // dw, dw, c).permute(0, 2, 4, 1, 3, 5)
    return v.reshape(n * dh * dw, hp // dh, wp // dw, c).permute(0, 3, 1, 2)


class _DilatedDepthwise(torch.autograd.Function):

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                dilation: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.padding, ctx.has_bias = dilation, padding, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        channels = x.shape[1]
        dh, dw = ctx.dilation
        # Under autocast the forward ran in the autocast dtype; so does this.
        grad = grad.contiguous(memory_format=torch.channels_last)
        w = weight.to(grad.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, w.flip(2, 3), None, 1, ctx.padding, ctx.dilation, channels)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[2:]
            grad_w = torch.ops.aten.convolution_backward(
                _space_to_batch(grad, dh, dw), _space_to_batch(x.to(grad.dtype), dh, dw), w,
                None, [1, 1], [kh // 2, kw // 2], [1, 1], False, [0, 0], channels,
                [False, True, False])[1].to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


class DilatedDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward on CPU, for dilated depthwise layouts, is
    ``_DilatedDepthwise``'s; everywhere else plain ``nn.Conv2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.device.type == "cpu" and torch.is_grad_enabled()
                and (input.requires_grad or self.weight.requires_grad) and _eligible(self)):
            return _DilatedDepthwise.apply(input, self.weight, self.bias,
                                           tuple(self.dilation), tuple(self.padding))
        return super().forward(input)


def use_fast_depthwise_(module: nn.Module, enable: bool = True) -> int:
    """Switch every eligible ``nn.Conv2d`` in ``module`` to
    ``DilatedDepthwiseConv2d`` (``enable=False``: back to ``nn.Conv2d``), in
    place; returns how many modules were switched."""
    count = 0
    for m in module.modules():
        if enable and type(m) is nn.Conv2d and _eligible(m):
            m.__class__ = DilatedDepthwiseConv2d
            count += 1
        elif not enable and type(m) is DilatedDepthwiseConv2d:
            m.__class__ = nn.Conv2d
            count += 1
    return count
