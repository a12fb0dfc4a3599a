"""Decoders: C1, PPM (PSPNet head) and UPerNet, with deep-supervision variants.

Contract shared by every decoder: ``forward(conv_out, segSize=None)`` takes the
encoder's list of feature maps (the last one has ``fc_dim`` channels). With
``use_softmax`` it returns class probabilities bilinearly resized to
``segSize``; otherwise log-probabilities at feature resolution, and the
``*_deepsup`` decoders return ``(main, deepsup)`` where ``deepsup`` is
predicted from the second-to-last map (``fc_dim // 2`` channels).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.lib.nn import SynchronizedBatchNorm2d

from ._layers import conv3x3_bn_relu

PPM_CHANNELS = 512  # width of every pyramid-pooling branch


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _conv1x1_bn_relu(in_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
        SynchronizedBatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


class _Decoder(nn.Module):
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


class C1(_Decoder):
    """One 3x3 conv-BN-ReLU on the last feature map, then a 1x1 class layer."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, use_softmax: bool = False,
                 deep_sup: bool = False) -> None:
        super().__init__(num_class, fc_dim, use_softmax, deep_sup)
        width = fc_dim // 4
        self.cbr = conv3x3_bn_relu(fc_dim, width)
        if deep_sup:
            self.cbr_deepsup = conv3x3_bn_relu(fc_dim // 2, width)
        self.conv_last = nn.Conv2d(width, num_class, kernel_size=1)
        if deep_sup:
            self.conv_last_deepsup = nn.Conv2d(width, num_class, kernel_size=1)
        self.class_layers = ("conv_last", "conv_last_deepsup") if deep_sup else ("conv_last",)

    def logits(self, conv_out):
        return self.conv_last(self.cbr(conv_out[-1]))

    def deepsup_logits(self, conv_out):
        return self.conv_last_deepsup(self.cbr_deepsup(conv_out[-2]))


class C1DeepSup(C1):
    """C1 with an auxiliary C1 head on the second-to-last feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, use_softmax: bool = False) -> None:
        super().__init__(num_class, fc_dim, use_softmax, deep_sup=True)


class PPM(_Decoder):
    """Pyramid pooling (PSPNet): pooled branches at 1, 2, 3, 6 joined to the map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), deep_sup: bool = False) -> None:
        super().__init__(num_class, fc_dim, use_softmax, deep_sup)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), *_conv1x1_bn_relu(fc_dim, PPM_CHANNELS))
            for s in pool_scales)
        if deep_sup:
            self.cbr_deepsup = conv3x3_bn_relu(fc_dim // 2, fc_dim // 4)
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
        size = top.shape[2:]
        pyramid = [top] + [_resize(branch(top), size) for branch in self.ppm]
        return self.conv_last(torch.cat(pyramid, dim=1))

    def deepsup_logits(self, conv_out):
        return self.conv_last_deepsup(self.dropout_deepsup(self.cbr_deepsup(conv_out[-2])))


class PPMDeepsup(PPM):
    """PPM with an auxiliary head on the second-to-last feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__(num_class, fc_dim, use_softmax, pool_scales, deep_sup=True)


class UPerNet(_Decoder):
    """Unified perceptual parsing: pyramid pooling on the top map + an FPN fused
    at the resolution of the first feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 4096, use_softmax: bool = False,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_inplanes: Sequence[int] = (256, 512, 1024, 2048), fpn_dim: int = 256) -> None:
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

        size = levels[0].shape[2:]
        fused = [levels[0]] + [_resize(level, size) for level in levels[1:]]
        return self.conv_last(torch.cat(fused, dim=1))
