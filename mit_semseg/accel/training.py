"""Memory-layout and layer changes of the default training step (``TRAIN.exact``
keeps NCHW and the modules as built); the fused SGD is in
:mod:`mit_semseg.training.optim`."""
from __future__ import annotations

import torch
import torch.nn as nn

from .depthwise import use_fast_depthwise_
from .inference import factorize_pyramids_

__all__ = ["channels_last_", "fast_training_"]


def channels_last_(module: nn.Module | None = None,
                   batch: dict[str, torch.Tensor] | None = None) -> None:
    """Convert ``module``'s 4-D parameters and ``batch['img_data']`` to channels-last,
    in place. Training results equal the contiguous layout's up to float rounding."""
    if module is not None:
        module.to(memory_format=torch.channels_last)
    if batch is not None and "img_data" in batch and batch["img_data"].dim() == 4:
        batch["img_data"] = batch["img_data"].contiguous(memory_format=torch.channels_last)


def fast_training_(module: nn.Module) -> nn.Module:
    """The default training step's changes to ``module``, in place: channels-last
    parameters, factorized PPM/UPerNet heads (``factorize_pyramids_``) and the
    fast CPU backward of dilated depthwise convolutions (``use_fast_depthwise_``).
    Losses and gradients equal the unchanged module's up to float rounding;
    parameters and state-dict keys are unchanged. Feed channels-last batches
    (``channels_last_(None, batch)``)."""
    channels_last_(module)
    factorize_pyramids_(module)
    use_fast_depthwise_(module)
    _out_of_place_relu6_(module)
    return module


def _out_of_place_relu6_(module: nn.Module) -> None:
    """In training, an in-place ReLU6 first copies its input (autograd keeps it), then
    clamps: twice the memory traffic of the out-of-place form, whose values and
    gradients are the same bits (MobileNetV2: ~15 ms of a 250 ms step)."""
    for m in module.modules():
        if type(m) is nn.ReLU6 and m.inplace:
            m.inplace = False
