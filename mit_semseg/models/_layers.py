"""Small pieces shared by the model families."""
from __future__ import annotations

import torch.nn as nn

from mit_semseg.nn import SynchronizedBatchNorm2d


def conv3x3_bn_relu(in_planes: int, out_planes: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias), BatchNorm, ReLU; keys ``0.weight``, ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False),
        SynchronizedBatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


def dilate_conv_(module: nn.Module, dilation: int) -> None:
    """Turn a stride-2 network stage into a dilated stride-1 one, in place.

    Applied to every module of a stage (``stage.apply``). A stride-2 conv loses its
    stride and, if 3x3, gets dilation ``dilation // 2``; every other 3x3 conv gets
    ``dilation``. Padding follows dilation so spatial sizes are kept.
    """
    if not isinstance(module, nn.Conv2d):
        return
    if module.stride == (2, 2):
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            half = dilation // 2
            module.dilation, module.padding = (half, half), (half, half)
    elif module.kernel_size == (3, 3):
        module.dilation, module.padding = (dilation, dilation), (dilation, dilation)
