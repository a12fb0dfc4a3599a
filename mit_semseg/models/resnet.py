"""ResNet with the deep 3x3 stem used by the MIT scene-parsing models.

Reads top to bottom: residual blocks, the ImageNet network, the segmentation
encoder wrappers (``Resnet``, ``ResnetDilated``), then the builders. Module
attribute names equal the original toolkit's, so state-dict keys do too.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn as nn

from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.models._layers import dilate_conv_
from mit_semseg.models.weights import DEFAULT_PRETRAINED_DIR, load_pretrained
from mit_semseg.models.weights import load_url  # noqa: F401 (the original's name here)
from mit_semseg.models.fusable import Fusable, residual_block
from mit_semseg.models.registry import EncoderSpec, register_encoder

BatchNorm2d = SynchronizedBatchNorm2d  # the original's name

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "Resnet", "ResnetDilated",
           "resnet18", "resnet50", "resnet101"]

_URL_ROOT = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/"
model_urls = {name: f"{_URL_ROOT}{name}-imagenet.pth"
              for name in ("resnet18", "resnet50", "resnet101")}

# (in, out, stride) of the three 3x3 stem convolutions conv1..conv3.
_STEM = ((3, 64, 2), (64, 64, 1), (64, 128, 1))
_STEM_CHANNELS = _STEM[-1][1]
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with 'same' padding for odd kernels."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2,
                     groups=groups, bias=False)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias."""
    return _conv(in_planes, out_planes, 3, stride)


# --------------------------------------------------------------------------- blocks

class _ResidualBlock(nn.Module):
    """Shared residual logic: conv{i} -> bn{i} (-> ReLU except after the last), + shortcut.

    Subclasses register ``conv1, bn1, ..., conv{depth}, bn{depth}`` then ``downsample``.
    """

    expansion = 1
    depth = 2

    def _init_tail(self, downsample: nn.Module | None, stride: int) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = self.relu(out)
        # The shortcut after the body, as the original: autograd sums the gradients
        # that reach x in the reverse order of its uses, and float sums depend on order.
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1
    depth = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError("BasicBlock does not support grouped convolutions")
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = SynchronizedBatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = SynchronizedBatchNorm2d(planes)
        self._init_tail(downsample, stride)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided, optionally grouped), 1x1 expand by ``expansion``."""

    expansion = 4
    depth = 3

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1) -> None:
        super().__init__()
        width_out = planes * self.expansion
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = SynchronizedBatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, groups=groups)
        self.bn2 = SynchronizedBatchNorm2d(planes)
        self.conv3 = _conv(planes, width_out, 1)
        self.bn3 = SynchronizedBatchNorm2d(width_out)
        self._init_tail(downsample, stride)


def _make_stage(block: type[_ResidualBlock], in_ch: int, planes: int, count: int,
                stride: int, groups: int) -> tuple[nn.Sequential, int]:
    """``count`` blocks; the first one strides and gets a 1x1 projection if needed."""
    out_ch = planes * block.expansion
    projection = None
    if stride != 1 or in_ch != out_ch:
        projection = nn.Sequential(_conv(in_ch, out_ch, 1, stride),
                                   SynchronizedBatchNorm2d(out_ch))
    blocks = [block(in_ch, planes, stride=stride, downsample=projection, groups=groups)]
    blocks += [block(out_ch, planes, groups=groups) for _ in range(count - 1)]
    return nn.Sequential(*blocks), out_ch


def _stem_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv/bn/relu 1..3 then max-pool: stride 4 overall."""
    for i in range(1, len(_STEM) + 1):
        x = getattr(net, f"relu{i}")(getattr(net, f"bn{i}")(getattr(net, f"conv{i}")(x)))
    return net.maxpool(x)


# --------------------------------------------------------------------------- model

class ResNet(nn.Module):
    """ImageNet ResNet/ResNeXt with the deep stem (conv1..3), layer1..4, avgpool, fc.

    ``widths`` are the per-stage ``planes`` (bottleneck widths); ``groups`` > 1
    gives ResNeXt.
    """

    def __init__(self, block: type[_ResidualBlock], layers: Sequence[int],
                 num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512),
                 groups: int = 1) -> None:
        super().__init__()
        for i, (cin, cout, stride) in enumerate(_STEM, start=1):
            setattr(self, f"conv{i}", _conv(cin, cout, 3, stride))
            setattr(self, f"bn{i}", SynchronizedBatchNorm2d(cout))
            setattr(self, f"relu{i}", nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        channels = _STEM_CHANNELS
        for idx, (name, planes, count) in enumerate(zip(_STAGES, widths, layers)):
            stage, channels = _make_stage(block, channels, planes, count,
                                          stride=1 if idx == 0 else 2, groups=groups)
            setattr(self, name, stage)
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(channels, num_classes)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # He init with fan-out (per group), BN to identity; fc keeps torch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, SynchronizedBatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _stem_forward(self, x)
        for name in _STAGES:
            x = getattr(self, name)(x)
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- encoders

class Resnet(nn.Module):
    """Segmentation encoder: a ResNet/ResNeXt trunk without avgpool and fc (stride 32)."""

    _TAKEN = tuple(f"{kind}{i}" for i in range(1, len(_STEM) + 1)
                   for kind in ("conv", "bn", "relu")) + ("maxpool",) + _STAGES

    def __init__(self, orig_resnet: nn.Module) -> None:
        super().__init__()
        for name in self._TAKEN:
            setattr(self, name, getattr(orig_resnet, name))

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        """Return the outputs of layer1..4 if ``return_feature_maps``, else ``[layer4 output]``."""
        x = _stem_forward(self, x)
        maps = []
        for name in _STAGES:
            x = getattr(self, name)(x)
            maps.append(x)
        return maps if return_feature_maps else [x]


class ResnetDilated(Resnet):
    """Resnet whose last stages trade stride for dilation (output stride 8 or 16)."""

    # Dilation applied per stage for each output stride.
    _DILATIONS = {8: {"layer3": 2, "layer4": 4}, 16: {"layer4": 2}}

    def __init__(self, orig_resnet: nn.Module, dilate_scale: int = 8) -> None:
        if dilate_scale not in self._DILATIONS:
            raise ValueError(f"dilate_scale must be 8 or 16, got {dilate_scale}")
        for name, dilation in self._DILATIONS[dilate_scale].items():
            getattr(orig_resnet, name).apply(functools.partial(dilate_conv_, dilation=dilation))
        super().__init__(orig_resnet)


# --------------------------------------------------------------------------- builders

def _build(block: type[_ResidualBlock], layers: Sequence[int], name: str, pretrained: bool,
           model_dir: str, mirrors: Sequence[str] = ()) -> ResNet:
    model = ResNet(block, layers)
    if pretrained:
        load_pretrained(model, model_urls[name], model_dir, mirrors=mirrors)
    return model


def resnet18(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
             mirrors: Sequence[str] = ()) -> ResNet:
    """ResNet-18 (deep stem), ImageNet weights if ``pretrained``."""
    return _build(BasicBlock, (2, 2, 2, 2), "resnet18", pretrained, model_dir, mirrors)


def resnet50(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
             mirrors: Sequence[str] = ()) -> ResNet:
    """ResNet-50 (deep stem), ImageNet weights if ``pretrained``."""
    return _build(Bottleneck, (3, 4, 6, 3), "resnet50", pretrained, model_dir, mirrors)


def resnet101(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
              mirrors: Sequence[str] = ()) -> ResNet:
    """ResNet-101 (deep stem), ImageNet weights if ``pretrained``."""
    return _build(Bottleneck, (3, 4, 23, 3), "resnet101", pretrained, model_dir, mirrors)


# --------------------------------------------------------------------------- registration

_STEM_LAYERS = tuple((f"conv{i}", f"bn{i}", f"relu{i}") for i in range(1, len(_STEM) + 1))
_STEM_SPEC = Fusable(pairs=tuple(s[:2] for s in _STEM_LAYERS), stem=_STEM_LAYERS)
_TRUNKS = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101}


@register_encoder("resnet18", "resnet50", "resnet101",
                  fusable={BasicBlock: residual_block(2), Bottleneck: residual_block(3),
                           ResNet: _STEM_SPEC, Resnet: _STEM_SPEC})
def _resnet(spec: EncoderSpec) -> Resnet:
    trunk = _TRUNKS[spec.arch](spec.pretrained, spec.model_dir, spec.mirrors)
    return Resnet(trunk)


@register_encoder("resnet18dilated", "resnet50dilated", "resnet101dilated")
def _resnet_dilated(spec: EncoderSpec) -> ResnetDilated:
    trunk = _TRUNKS[spec.arch[:-len("dilated")]](spec.pretrained, spec.model_dir, spec.mirrors)
    return ResnetDilated(trunk, dilate_scale=8)
