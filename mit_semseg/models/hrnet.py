"""HRNetV2-W48 encoder (high-resolution network, as adapted by the MIT toolkit).

HRNet keeps a full-resolution branch through the whole network and adds a
branch of half the resolution at every stage; after each multi-resolution
module every branch receives the sum of all branches (resampled to its size).
The encoder returns a single feature map: the four final branches upsampled to
1/4 of the input and concatenated (48 + 96 + 192 + 384 = 720 channels).

State-dict keys equal the original's (and those of the released checkpoints);
every BatchNorm uses HRNet's running-statistics momentum 0.1.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.models.resnet import conv3x3  # noqa: F401 (the original's name here)
from mit_semseg.models.weights import DEFAULT_PRETRAINED_DIR, load_pretrained
from mit_semseg.models.weights import load_url  # noqa: F401
from mit_semseg.models.fusable import Fusable, residual_block
from mit_semseg.models.registry import EncoderSpec, register_encoder

__all__ = ["BasicBlock", "Bottleneck", "HighResolutionModule", "HRNetV2", "hrnetv2"]

IMAGENET_URL = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/hrnetv2_w48-imagenet.pth"

model_urls = {"hrnetv2": IMAGENET_URL}

BN_MOMENTUM = 0.1  # HRNet's running-statistics momentum
BatchNorm2d = SynchronizedBatchNorm2d  # the original's name
logger = logging.getLogger(__name__)

# W48 layout of stages 2-4: (multi-resolution modules, blocks per branch,
# channels per branch). Every branch of these stages is made of BasicBlocks.
_W48_STAGES: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = (
    (1, (4, 4), (48, 96)),
    (4, (4, 4, 4), (48, 96, 192)),
    (3, (4, 4, 4, 4), (48, 96, 192, 384)),
)


def _bn(channels: int) -> SynchronizedBatchNorm2d:
    return SynchronizedBatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
             relu: bool = False) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU); keys ``0.weight`` and ``1.*``."""
    parts: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        _bn(out_ch),
    ]
    if relu:
        parts.append(nn.ReLU(inplace=True))
    return nn.Sequential(*parts)


# --------------------------------------------------------------------------- blocks

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        # the shortcut after the body, as the original (the order of gradient sums)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        wide = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, wide, 1, bias=False)
        self.bn3 = _bn(wide)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


def _residual_stack(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int,
                    depth: int, stride: int = 1) -> nn.Sequential:
    """``depth`` blocks; the first one projects the shortcut when shapes change."""
    out_ch = planes * block.expansion
    projection = None
    if stride != 1 or inplanes != out_ch:
        projection = _conv_bn(inplanes, out_ch, 1, stride=stride)
    stack = [block(inplanes, planes, stride, projection)]
    stack += [block(out_ch, planes) for _ in range(depth - 1)]
    return nn.Sequential(*stack)


blocks_dict = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}  # the original's block names


# -------------------------------------------------------- multi-resolution module

def _fuse_path(channels: Sequence[int], src: int, dst: int) -> nn.Module | None:
    """Map branch ``src`` onto branch ``dst``'s channels (resolution fixed in forward).

    Lower-resolution sources get a 1x1 conv (upsampled afterwards); higher-resolution
    ones a chain of stride-2 3x3 convs, the last of which changes the channels and
    has no ReLU.
    """
    if src == dst:
        return None
    if src > dst:
        return _conv_bn(channels[src], channels[dst], 1)
    hops = dst - src
    chain = [_conv_bn(channels[src], channels[src], 3, stride=2, relu=True)
             for _ in range(hops - 1)]
    chain.append(_conv_bn(channels[src], channels[dst], 3, stride=2))
    return nn.Sequential(*chain)


class HighResolutionModule(nn.Module):
    """Parallel residual branches followed by an all-to-all sum across resolutions.

    Branch ``i`` works at 1/2**i of branch 0's resolution; ``blocks`` is the
    residual block class of every branch. Needs two branches or more (as every
    module of HRNetV2 has). Without ``multi_scale_output`` only branch 0's sum
    is produced. ``fuse_method`` must be "SUM" (the only one HRNetV2 uses).
    """

    def __init__(self, num_branches: int, blocks: type[BasicBlock] | type[Bottleneck],
                 num_blocks: Sequence[int], num_inchannels: Sequence[int],
                 num_channels: Sequence[int], fuse_method: str = "SUM",
                 multi_scale_output: bool = True) -> None:
        super().__init__()
        if (not num_branches == len(num_blocks) == len(num_inchannels) == len(num_channels)
                or num_branches < 2):
            raise ValueError(
                f"HighResolutionModule: inconsistent branch spec ({num_branches} branches, "
                f"blocks {tuple(num_blocks)}, in_channels {tuple(num_inchannels)}, "
                f"channels {tuple(num_channels)})")
        if fuse_method != "SUM":
            raise ValueError(f"HighResolutionModule: fuse_method must be 'SUM', got {fuse_method!r}")
        self.branches = nn.ModuleList(
            _residual_stack(blocks, cin, c, n)
            for n, cin, c in zip(num_blocks, num_inchannels, num_channels))
        self.out_channels = [c * blocks.expansion for c in num_channels]
        count = num_branches
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_path(self.out_channels, src, dst) for src in range(count))
            for dst in range(count if multi_scale_output else 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [branch(t) for branch, t in zip(self.branches, xs)]
        fused = []
        for dst, paths in enumerate(self.fuse_layers):
            size = feats[dst].shape[-2:]
            total = None
            for src, (path, t) in enumerate(zip(paths, feats)):
                if path is not None:
                    t = path(t)
                    if src > dst:
                        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                total = t if total is None else total + t
            fused.append(self.relu(total))
        return fused


def _transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapt the outputs of one stage to the branches of the next.

    Existing branches get a 3x3 conv only where the width changes; each new branch
    is grown from the lowest-resolution one by stride-2 3x3 convs.
    """
    paths: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            paths.append(None if prev[i] == c else _conv_bn(prev[i], c, 3, relu=True))
            continue
        hops = i + 1 - len(prev)
        widths = [prev[-1]] * hops + [c]
        paths.append(nn.Sequential(*(
            _conv_bn(widths[k], widths[k + 1], 3, stride=2, relu=True) for k in range(hops))))
    return nn.ModuleList(paths)


# ----------------------------------------------------------------------------- model

class HRNetV2(nn.Module):
    """HRNetV2-W48 without its classifier: a 720-channel map at 1/4 resolution."""

    def __init__(self, n_class: int = 1000, **kwargs) -> None:
        """``n_class`` and ``kwargs`` are accepted for the original's signature and unused."""
        super().__init__()
        # stem: two stride-2 3x3 convs, then four bottlenecks at 1/4 resolution
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _residual_stack(Bottleneck, 64, 64, 4)

        widths: list[int] = [64 * Bottleneck.expansion]
        self._num_stages = len(_W48_STAGES)
        for idx, (modules, depths, channels) in enumerate(_W48_STAGES, start=1):
            setattr(self, f"transition{idx}", _transition(widths, channels))
            stage = []
            widths = list(channels)
            for _ in range(modules):
                stage.append(HighResolutionModule(len(channels), BasicBlock, depths, widths,
                                                  channels))
                widths = stage[-1].out_channels
            setattr(self, f"stage{idx + 1}", nn.Sequential(*stage))
        self.out_channels = sum(widths)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        """Return ``[features]`` (one map) whatever ``return_feature_maps`` says."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for idx in range(1, self._num_stages + 1):
            transition = getattr(self, f"transition{idx}")
            xs = []
            for i, path in enumerate(transition):
                src = ys[i] if i < len(ys) else ys[-1]
                xs.append(src if path is None else path(src))
            ys = getattr(self, f"stage{idx + 1}")(xs)

        size = ys[0].shape[-2:]
        upsampled = [ys[0]] + [
            F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys[1:]]
        return [torch.cat(upsampled, dim=1)]


# --------------------------------------------------------------------------- builder

def hrnetv2(pretrained: bool = False, model_dir: str = DEFAULT_PRETRAINED_DIR,
            mirrors: Sequence[str] = ()) -> nn.Module:
    """Build the HRNetV2-W48 encoder, optionally with ImageNet weights (cached in ``model_dir``)."""
    model = HRNetV2()
    if pretrained:
        load_pretrained(model, IMAGENET_URL, model_dir, mirrors=mirrors)
    return model


@register_encoder("hrnetv2", fusable={
    BasicBlock: residual_block(2), Bottleneck: residual_block(3),
    HRNetV2: Fusable(pairs=(("conv1", "bn1"), ("conv2", "bn2")),
                     stem=(("conv1", "bn1", "relu"), ("conv2", "bn2", "relu")))})
def _hrnetv2(spec: EncoderSpec) -> nn.Module:
    return hrnetv2(spec.pretrained, spec.model_dir, spec.mirrors)
