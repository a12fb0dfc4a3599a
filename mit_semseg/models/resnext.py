"""ResNeXt-101 (32 groups) with the deep stem of the MIT scene-parsing ResNets.

Shares the network and stage builder of :mod:`mit_semseg.models.resnet`; only the
block (expansion 2, grouped 3x3) and the stage widths differ. As in the original,
the segmentation encoder is the plain :class:`~mit_semseg.models.resnet.Resnet`.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from mit_semseg.nn import SynchronizedBatchNorm2d  # noqa: F401 (the original's name here)
from mit_semseg.models.resnet import BatchNorm2d, Bottleneck, ResNet, Resnet, conv3x3  # noqa: F401
from mit_semseg.models.weights import DEFAULT_PRETRAINED_DIR, load_pretrained
from mit_semseg.models.weights import load_url  # noqa: F401
from mit_semseg.models.registry import EncoderSpec, register_encoder

__all__ = ["GroupBottleneck", "ResNeXt", "Resnet", "resnext101"]

model_urls = {
    "resnext101": "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/"
                  "resnext101-imagenet.pth",
}

_WIDTHS = (128, 256, 512, 1024)


class GroupBottleneck(Bottleneck):
    """Bottleneck whose 3x3 conv is grouped and whose output is 2x its width."""

    expansion = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__(inplanes, planes, stride=stride, downsample=downsample, groups=groups)


class ResNeXt(ResNet):
    """ImageNet ResNeXt: :class:`ResNet` with grouped bottlenecks and doubled widths."""

    def __init__(self, block: type[Bottleneck] = GroupBottleneck,
                 layers: tuple[int, ...] = (3, 4, 23, 3), groups: int = 32,
                 num_classes: int = 1000) -> None:
        super().__init__(block, layers, num_classes=num_classes, widths=_WIDTHS, groups=groups)


def resnext101(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
               mirrors: Sequence[str] = ()) -> ResNeXt:
    """ResNeXt-101 32-group, ImageNet weights if ``pretrained``."""
    model = ResNeXt(GroupBottleneck, (3, 4, 23, 3), groups=32)
    if pretrained:
        load_pretrained(model, model_urls["resnext101"], model_dir, mirrors=mirrors)
    return model


# GroupBottleneck and ResNeXt inherit the fusable declarations of Bottleneck and ResNet.
@register_encoder("resnext101")
def _resnext101(spec: EncoderSpec) -> Resnet:
    return Resnet(resnext101(spec.pretrained, spec.model_dir, spec.mirrors))
