"""Decoders: C1, PPM (PSPNet head) and UPerNet, with deep-supervision variants.

Contract shared by every decoder: ``forward(conv_out, segSize=None)`` takes the
encoder's list of feature maps (the last one has ``fc_dim`` channels). With
``use_softmax`` it returns class probabilities bilinearly resized to
``segSize``; otherwise log-probabilities at feature resolution, and the
``*_deepsup`` decoders return ``(main, deepsup)`` where ``deepsup`` is
predicted from the second-to-last map (``fc_dim // 2`` channels).

``in_channels`` (every decoder; optional): the channels of each feature map,
as an encoder that declares ``out_channels`` reports them. Given, it replaces
``fc_dim`` (the last entry) and the widths the original derives from it (the
deep-supervision input, UPerNet's ``fpn_inplanes``); the state-dict keys stay
the same.

``factorized_pyramid`` (PPM and UPerNet; off in a freshly built decoder, so
the module computes the original's operations; switched on by the inference
copy and by the default training step, off with ``VAL/TEST/TRAIN.exact``)
computes the same head with fewer operations: see ``pyramid_conv``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn import SynchronizedBatchNorm2d

from ._layers import conv3x3_bn_relu
from .fusable import Fusable
from .registry import register_decoder

PPM_CHANNELS = 512  # width of every pyramid-pooling branch


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _conv1x1_bn_relu(in_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
        SynchronizedBatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


def _resize_matrix(size_in: int, size_out: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """``(size_out, size_in)`` weights of the 1-D bilinear resize used by ``_resize``
    (taken from F.interpolate itself, so the same coefficients)."""
    eye = torch.eye(size_in, dtype=dtype, device=device).view(1, size_in, size_in, 1)
    return _resize(eye, (size_out, 1))[0, :, :, 0].t()


def _tap_matrix(resize: torch.Tensor, taps: int, padding: int, dilation: int,
                size_out: int) -> torch.Tensor:
    """``(size_out, taps * size_in)``: column ``t * size_in + a`` holds the weight of
    source sample ``a`` in the resized row that kernel tap ``t`` of output row ``i``
    reads (zero where that row is padding)."""
    size_resized, size_in = resize.shape
    out = resize.new_zeros(taps, size_out, size_in)
    for t in range(taps):
        shift = t * dilation - padding
        lo, hi = max(0, -shift), min(size_out, size_resized - shift)
        if hi > lo:
            out[t, lo:hi] = resize[lo + shift:hi + shift]
    return out.transpose(0, 1).reshape(size_out, taps * size_in)


def pyramid_term(branches: Sequence[torch.Tensor],
                 weight: torch.Tensor | Sequence[torch.Tensor],
                 size: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                 channels_last: bool = False) -> torch.Tensor:
    """``conv2d(cat([_resize(b, size) for b in branches]), weight)`` (stride 1, zero
    padding, no bias) computed at the branches' own resolution.

    Resizing and the convolution are both linear, so each kernel tap is applied
    to the small map first (``weight`` times ``branch``) and the resize, shifted
    by the tap, afterwards, as two small matrix products per axis. Equal to the
    direct computation up to float rounding; differentiable. ``weight`` may
    also be given per branch (a sequence of kernels with each branch's input
    channels, e.g. from one ``torch.split``: its backward is one concatenation,
    where every slice of a kernel would write a zero-filled kernel-size gradient).
    """
    height, width = int(size[0]), int(size[1])
    if isinstance(weight, torch.Tensor):
        sizes = [int(b.shape[1]) for b in branches]
        if sum(sizes) != weight.shape[1]:
            raise ValueError(f"the branches have {sum(sizes)} channels, the weight "
                             f"{weight.shape[1]}")
        weight = torch.split(weight, sizes, dim=1)
    if len(weight) != len(branches):
        raise ValueError(f"{len(branches)} branches but {len(weight)} kernels")
    out_ch, _, kh, kw = weight[0].shape
    out_h = height + 2 * int(padding[0]) - int(dilation[0]) * (kh - 1)
    out_w = width + 2 * int(padding[1]) - int(dilation[1]) * (kw - 1)
    firsts, seconds = [], []
    for b, w in zip(branches, weight):
        n, c, bh, bw = b.shape
        if w.shape[1] != c:
            raise ValueError(f"a branch has {c} channels, its kernel {w.shape[1]}")
        rows = _tap_matrix(_resize_matrix(bh, height, b.dtype, b.device),
                           kh, int(padding[0]), int(dilation[0]), out_h)
        cols = _tap_matrix(_resize_matrix(bw, width, b.dtype, b.device),
                           kw, int(padding[1]), int(dilation[1]), out_w)
        if channels_last:  # columns first, then rows: the result comes out N, H, W, C
            z = torch.einsum("ocde,ncab->ndaebo", w, b).reshape(n, kh * bh, kw * bw, out_ch)
            firsts.append(torch.matmul(cols, z).reshape(n, kh * bh, out_w * out_ch))
            seconds.append(rows)
        else:  # rows first, then columns: the result comes out N, C, H, W
            z = torch.einsum("ocde,ncab->nodaeb", w, b).reshape(n, out_ch, kh * bh, kw * bw)
            firsts.append(torch.matmul(rows, z))
            seconds.append(cols)
    if channels_last:
        y = torch.matmul(torch.cat(seconds, 1), torch.cat(firsts, 1))
        return y.view(-1, out_h, out_w, out_ch).permute(0, 3, 1, 2)
    return torch.matmul(torch.cat(firsts, -1), torch.cat(seconds, 1).t())


def pyramid_conv(conv: nn.Module, top: torch.Tensor,
                 branches: Sequence[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat([top] + [_resize(b, top.shape[2:]) for b in branches], 1))``
    without the resized maps: ``top`` through the first input channels of the
    kernel, the branches through ``pyramid_term``.

    In a PPM head 80% (ResNet-18) / 50% (ResNet-50) of this convolution's input
    channels are resized branches of 1x1 to 6x6, so this removes that share of
    its operations; in UPerNet's fusion three of the four FPN levels come from
    2-8x smaller maps (about 60% fewer operations). ``conv``: a stride-1, zero-padded ``nn.Conv2d``, or a module
    with ``split_forward(top, term)`` (``accel.FusedConv2d``) that adds
    the term before its fused activation.
    """
    channels_last = (top.is_contiguous(memory_format=torch.channels_last)
                     and not top.is_contiguous())
    split_forward = getattr(conv, "split_forward", None)
    if split_forward is None and (tuple(conv.stride) != (1, 1) or conv.groups != 1
                                  or conv.padding_mode != "zeros"):
        raise ValueError("pyramid_conv needs a stride-1, ungrouped, zero-padded convolution")
    sizes = [int(top.shape[1])] + [int(b.shape[1]) for b in branches]
    if sum(sizes) != conv.weight.shape[1]:
        raise ValueError(f"pyramid_conv: the inputs have {sum(sizes)} channels, the "
                         f"convolution {conv.weight.shape[1]}")
    top_w, *branch_w = torch.split(conv.weight, sizes, dim=1)
    term = pyramid_term(branches, branch_w, top.shape[2:], conv.padding, conv.dilation,
                        channels_last)
    if split_forward is not None:
        return split_forward(top, term)
    y = F.conv2d(top, top_w, conv.bias, 1, conv.padding, conv.dilation)
    return y + term


def _widths(fc_dim: int, in_channels: Sequence[int] | None) -> tuple[int, int]:
    """(channels of the last map, of the second-to-last map) for deep supervision."""
    if in_channels is None:
        return fc_dim, fc_dim // 2
    if len(in_channels) < 1:
        raise ValueError("in_channels must list at least one feature map")
    last = int(in_channels[-1])
    return last, int(in_channels[-2]) if len(in_channels) > 1 else last


class Decoder(nn.Module):
    """Turns raw class scores into the contract's outputs.

    Subclasses implement ``logits(conv_out)`` (scores at feature resolution)
    and, if deeply supervised, ``deepsup_logits(conv_out)``. ``class_layers``
    names the modules whose output channels are the classes.
    """

    class_layers: tuple[str, ...] = ()

    def __init__(self, num_class: int, fc_dim: int, use_softmax: bool, deep_sup: bool) -> None:
        super().__init__()
        self.num_class = num_class
        self.fc_dim = fc_dim
        self.use_softmax = use_softmax
        self.deep_sup = deep_sup

    def logits(self, conv_out: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def deepsup_logits(self, conv_out: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, conv_out: list[torch.Tensor], segSize: Sequence[int] | None = None):
        x = self.logits(conv_out)
        if self.use_softmax:
            if segSize is not None:
                x = _resize(x, segSize)
            return F.softmax(x, dim=1)
        x = F.log_softmax(x, dim=1)
        if self.deep_sup:
            return x, F.log_softmax(self.deepsup_logits(conv_out), dim=1)
        return x


_Decoder = Decoder  # the name of earlier versions


@register_decoder("c1")
class C1(Decoder):
    """One 3x3 conv-BN-ReLU on the last feature map, then a 1x1 class layer."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, use_softmax: bool = False,
                 deep_sup: bool = False, in_channels: Sequence[int] | None = None) -> None:
        fc_dim, below = _widths(fc_dim, in_channels)
        super().__init__(num_class, fc_dim, use_softmax, deep_sup)
        width = fc_dim // 4
        self.cbr = conv3x3_bn_relu(fc_dim, width)
        if deep_sup:
            self.cbr_deepsup = conv3x3_bn_relu(below, width)
        self.conv_last = nn.Conv2d(width, num_class, kernel_size=1)
        if deep_sup:
            self.conv_last_deepsup = nn.Conv2d(width, num_class, kernel_size=1)
        self.class_layers = ("conv_last", "conv_last_deepsup") if deep_sup else ("conv_last",)

    def logits(self, conv_out):
        return self.conv_last(self.cbr(conv_out[-1]))

    def deepsup_logits(self, conv_out):
        return self.conv_last_deepsup(self.cbr_deepsup(conv_out[-2]))


@register_decoder("c1_deepsup")
class C1DeepSup(C1):
    """C1 with an auxiliary C1 head on the second-to-last feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, use_softmax: bool = False,
                 in_channels: Sequence[int] | None = None) -> None:
        super().__init__(num_class, fc_dim, use_softmax, deep_sup=True, in_channels=in_channels)


@register_decoder("ppm", fusable=Fusable(pyramid=True))
class PPM(Decoder):
    """Pyramid pooling (PSPNet): pooled branches at 1, 2, 3, 6 joined to the map."""

    # True: the head's first convolution through ``pyramid_conv`` (same function,
    # float rounding apart); False: the original's resize + concatenate + conv.
    factorized_pyramid = False

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), deep_sup: bool = False,
                 in_channels: Sequence[int] | None = None) -> None:
        fc_dim, below = _widths(fc_dim, in_channels)
        super().__init__(num_class, fc_dim, use_softmax, deep_sup)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), *_conv1x1_bn_relu(fc_dim, PPM_CHANNELS))
            for s in pool_scales)
        if deep_sup:
            self.cbr_deepsup = conv3x3_bn_relu(below, fc_dim // 4)
        self.conv_last = nn.Sequential(
            *conv3x3_bn_relu(fc_dim + len(pool_scales) * PPM_CHANNELS, PPM_CHANNELS),
            nn.Dropout2d(0.1),
            nn.Conv2d(PPM_CHANNELS, num_class, kernel_size=1),
        )
        if deep_sup:
            self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_class, kernel_size=1)
            self.dropout_deepsup = nn.Dropout2d(0.1)
        self.class_layers = ("conv_last.4", "conv_last_deepsup") if deep_sup else ("conv_last.4",)

    def logits(self, conv_out):
        top = conv_out[-1]
        branches = [branch(top) for branch in self.ppm]
        if self.factorized_pyramid:
            return self.conv_last[1:](pyramid_conv(self.conv_last[0], top, branches))
        size = top.shape[2:]
        pyramid = [top] + [_resize(b, size) for b in branches]
        return self.conv_last(torch.cat(pyramid, dim=1))

    def deepsup_logits(self, conv_out):
        return self.conv_last_deepsup(self.dropout_deepsup(self.cbr_deepsup(conv_out[-2])))


@register_decoder("ppm_deepsup")
class PPMDeepsup(PPM):
    """PPM with an auxiliary head on the second-to-last feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 in_channels: Sequence[int] | None = None) -> None:
        super().__init__(num_class, fc_dim, use_softmax, pool_scales, deep_sup=True,
                         in_channels=in_channels)


@register_decoder("upernet", fpn_dim=512)
@register_decoder("upernet_lite", fpn_dim=256, fusable=Fusable(pyramid=True))
class UPerNet(Decoder):
    """Unified perceptual parsing: pyramid pooling on the top map + an FPN fused
    at the resolution of the first feature map."""

    # True: the fusion convolution through ``pyramid_conv`` (see PPM).
    factorized_pyramid = False

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_inplanes: Sequence[int] = (256, 512, 1024, 2048), fpn_dim: int = 256,
                 in_channels: Sequence[int] | None = None) -> None:
        if in_channels is not None:
            fc_dim, fpn_inplanes = int(in_channels[-1]), tuple(int(c) for c in in_channels)
        super().__init__(num_class, fc_dim, use_softmax, deep_sup=False)
        # Unlike PPM, pooled maps are resized back before their 1x1 conv.
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in pool_scales)
        self.ppm_conv = nn.ModuleList(
            _conv1x1_bn_relu(fc_dim, PPM_CHANNELS) for _ in pool_scales)
        self.ppm_last_conv = conv3x3_bn_relu(fc_dim + len(pool_scales) * PPM_CHANNELS, fpn_dim)
        lateral = fpn_inplanes[:-1]  # the top level comes from the pooling module
        self.fpn_in = nn.ModuleList(_conv1x1_bn_relu(c, fpn_dim) for c in lateral)
        self.fpn_out = nn.ModuleList(
            nn.Sequential(conv3x3_bn_relu(fpn_dim, fpn_dim)) for _ in lateral)
        self.conv_last = nn.Sequential(
            conv3x3_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim),
            nn.Conv2d(fpn_dim, num_class, kernel_size=1),
        )
        self.class_layers = ("conv_last.1",)

    def logits(self, conv_out):
        top = conv_out[-1]
        size = top.shape[2:]
        pooled = [conv(_resize(pool(top), size))
                  for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat([top] + pooled, dim=1))

        levels = [f]  # top-down: coarsest first
        for i in range(len(conv_out) - 2, -1, -1):
            lateral = self.fpn_in[i](conv_out[i])
            f = lateral + _resize(f, lateral.shape[2:])
            levels.append(self.fpn_out[i](f))
        levels.reverse()

        if self.factorized_pyramid:
            cbr = self.conv_last[0]
            x = cbr[1:](pyramid_conv(cbr[0], levels[0], levels[1:]))
            return self.conv_last[1:](x)
        size = levels[0].shape[2:]
        fused = [levels[0]] + [_resize(level, size) for level in levels[1:]]
        return self.conv_last(torch.cat(fused, dim=1))

