"""BatchNorm folding: a convolution followed by a BatchNorm in eval mode is one
convolution with changed weights and bias.

Pairs come from plain ``nn.Sequential`` chains (a Conv2d directly followed by a
BatchNorm) and from what each model family declares in
:mod:`mit_semseg.models.fusable` (``Fusable.pairs``).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.fusable import fusable_spec
from ..nn import SynchronizedBatchNorm2d
from .depthwise import DilatedDepthwiseConv2d

__all__ = ["fold_conv_bn", "fuse_bn"]


def fold_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new Conv2d (with bias) computing ``bn(conv(x))`` with ``bn``'s running statistics.

    The folded weights are computed in float64 and rounded once to ``conv``'s dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels, BatchNorm "
                         f"{bn.num_features} features")
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=True,
                          padding_mode=conv.padding_mode, device=conv.weight.device,
                          dtype=conv.weight.dtype)
        w = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        fused.weight.copy_(w.to(conv.weight.dtype))
        fused.bias.copy_(((bias - mean) * scale + beta).to(conv.weight.dtype))
    fused.train(conv.training)
    return fused


# forwards that are the plain normalisation in eval mode; a subclass that does more
# (timm's BatchNormAct2d: BatchNorm, then an activation) is left unfolded
_PLAIN_BN_FORWARDS = (_BatchNorm.forward, SynchronizedBatchNorm2d.forward)


def _foldable(conv: Any, bn: Any) -> bool:
    # DilatedDepthwiseConv2d: a module switched for training (fast_training_);
    # the folded copy is a plain nn.Conv2d again.
    return (type(conv) in (nn.Conv2d, DilatedDepthwiseConv2d) and isinstance(bn, _BatchNorm)
            and type(bn).forward in _PLAIN_BN_FORWARDS
            and bn.track_running_stats and bn.running_mean is not None
            and conv.out_channels == bn.num_features)


def fuse_bn(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Eval-mode copy of ``module`` (``module`` itself if ``inplace``) with every
    BatchNorm that directly follows a Conv2d folded into it and replaced by
    ``nn.Identity``.

    Pairs: consecutive (Conv2d, BatchNorm) children of an ``nn.Sequential``, and the
    (conv, BatchNorm) children a model family declares (``Fusable.pairs``). Other
    BatchNorms are kept (in eval mode). The copy is for inference: its state-dict
    keys differ from the original's.
    """
    net = module if inplace else copy.deepcopy(module)
    net.eval()
    for parent in list(net.modules()):
        children = parent._modules
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = [(a, b) for a, b in zip(names, names[1:]) if _foldable(children[a], children[b])]
        else:
            spec = fusable_spec(parent)
            if spec is not None:
                pairs = [(c, b) for c, b in spec.pairs if _foldable(children.get(c), children.get(b))]
        for conv_name, bn_name in pairs:
            children[conv_name] = fold_conv_bn(children[conv_name], children[bn_name])
            children[bn_name] = nn.Identity()
    return net
