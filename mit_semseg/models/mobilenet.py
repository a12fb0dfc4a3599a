"""MobileNetV2 (after tonylins/pytorch-mobilenet-v2) and its dilated segmentation encoder.

Reads top to bottom: conv/BN/ReLU6 helper, the inverted-residual block, the
ImageNet network, the ``MobileNetV2Dilated`` encoder, then the builder. Module
layout (``features.N`` / ``features.N.conv.M`` / ``classifier.1``) equals the
original toolkit's, so state-dict keys do too.
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
from mit_semseg.models.fusable import Fusable, Residual
from mit_semseg.models.registry import EncoderSpec, register_encoder

BatchNorm2d = SynchronizedBatchNorm2d  # the original's name

__all__ = ["InvertedResidual", "MobileNetV2", "MobileNetV2Dilated", "mobilenetv2"]

model_urls = {
    "mobilenetv2": "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/"
                   "mobilenet_v2.pth.tar",
}

# Inverted-residual stages: (expand ratio t, output channels c, repeats n, first stride s).
_STAGE_SPEC = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             relu6: bool = True) -> list[nn.Module]:
    """[Conv (no bias, 'same' padding), BN] plus ReLU6 when ``relu6``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        SynchronizedBatchNorm2d(out_ch),
    ]
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return layers


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU6 (the stem)."""
    return nn.Sequential(*_conv_bn(inp, oup, 3, stride))


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    """1x1 conv, BatchNorm, ReLU6 (the head)."""
    return nn.Sequential(*_conv_bn(inp, oup, 1))


# --------------------------------------------------------------------------- block

class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ratio is 1), 3x3 depthwise, 1x1 linear projection.

    Adds the input back when the block keeps both stride and channel count.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = round(inp * expand_ratio)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn(inp, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, oup, 1, relu6=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


# --------------------------------------------------------------------------- model

class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2: ``features`` (stem, 17 inverted residuals, 1x1 head) + classifier."""

    def __init__(self, n_class: int = 1000, input_size: int = 224, width_mult: float = 1.0) -> None:
        """``input_size`` (a multiple of 32) is checked only; the network takes any size."""
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        channels = int(_STEM_CHANNELS * width_mult)
        self.last_channel = (int(_HEAD_CHANNELS * width_mult) if width_mult > 1.0
                             else _HEAD_CHANNELS)
        blocks: list[nn.Module] = [conv_bn(3, channels, 2)]
        for t, c, n, s in _STAGE_SPEC:
            out_ch = int(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_ch, s if i == 0 else 1, t))
                channels = out_ch
        blocks.append(conv_1x1_bn(channels, self.last_channel))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, n_class))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, SynchronizedBatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(x)


# --------------------------------------------------------------------------- encoder

class MobileNetV2Dilated(nn.Module):
    """Segmentation encoder: ``features`` without the 1x1 head, last stages dilated.

    With ``return_feature_maps`` the outputs of ``features[i]`` for ``i`` in
    ``down_idx`` are returned, followed by the final output.
    """

    def __init__(self, orig_net: MobileNetV2, dilate_scale: int = 8) -> None:
        super().__init__()
        self.features = orig_net.features[:-1]
        self.total_idx = len(self.features)
        self.down_idx = [2, 4, 7, 14]
        # (first block, last block + 1, dilation) ranges to convert.
        third, fourth = self.down_idx[-2], self.down_idx[-1]
        plans = {
            8: ((third, fourth, 2), (fourth, self.total_idx, 4)),
            16: ((fourth, self.total_idx, 2),),
        }
        if dilate_scale not in plans:
            raise ValueError(f"dilate_scale must be 8 or 16, got {dilate_scale}")
        for start, stop, dilation in plans[dilate_scale]:
            for i in range(start, stop):
                self.features[i].apply(functools.partial(dilate_conv_, dilation=dilation))

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        """Maps after ``features[down_idx]`` plus the last one, or ``[features(x)]``."""
        if not return_feature_maps:
            return [self.features(x)]
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.down_idx:
                maps.append(x)
        maps.append(x)
        return maps


# --------------------------------------------------------------------------- builders

def mobilenetv2(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
                mirrors: Sequence[str] = ()) -> MobileNetV2:
    """MobileNetV2 (width 1.0), ImageNet weights if ``pretrained``."""
    model = MobileNetV2(n_class=1000)
    if pretrained:
        load_pretrained(model, model_urls["mobilenetv2"], model_dir, mirrors=mirrors)
    return model


@register_encoder("mobilenetv2dilated", fusable={InvertedResidual: Fusable(
    residual=Residual(sequence="conv", activation="none", enabled_by="use_res_connect"))})
def _mobilenetv2dilated(spec: EncoderSpec) -> MobileNetV2Dilated:
    net = mobilenetv2(spec.pretrained, spec.model_dir, spec.mirrors)
    return MobileNetV2Dilated(net, dilate_scale=8)
