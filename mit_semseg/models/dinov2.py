"""DINOv2 (Oquab et al., 2023) ViT encoders from timm, and the paper's linear heads.

Encoders ``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vitl14``, ``dinov2_vitg14``
wrap timm's ``vit_{small,base,large,giant}_patch14_dinov2`` (timm is imported only
when one is built: the ``[timm]`` extra). The pretrained (LVD-142M) weights come
through timm's own pretrained mechanism (the Hugging Face cache;
``HF_HUB_OFFLINE=1`` uses the cache only) when ``MODEL.pretrained`` is set.

The encoder returns the patch tokens of the last ``layers`` blocks as maps at
stride 14 (each through the final LayerNorm, as DINOv2's evaluation takes them),
each with the class token of its block appended to every position when
``cls_token``: the paper's "linear" setting is ``layers 1``, its "+ms" setting
``layers 4, cls_token True`` (and multi-scale evaluation). An input whose sides
are not multiples of 14 is padded at the bottom and right, and the token maps are
resampled back onto the unpadded area, so any size (slide-mode tiles, odd photos)
gives maps aligned with the input.

``MODEL.encoder_options``: ``layers`` (default 1), ``cls_token`` (default False),
``model_args`` (keyword arguments for ``timm.create_model``, e.g. a small
``depth``/``embed_dim`` for tests).

Decoders: ``linear`` (the paper's linear head: the maps concatenated, BatchNorm, a
1x1 convolution; scores at the maps' resolution) and ``dinov2_linear`` (the same,
scores bilinearly upsampled 7x to stride 2, so that the loss is taken on labels
at ``DATASET.segm_downsampling_rate 2`` as the paper's head upsamples its logits
to the labels).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn import SynchronizedBatchNorm2d

from .decoders import Decoder
from .registry import EncoderSpec, register_decoder, register_encoder
from .timm_encoder import import_timm, timm_weights_path
from .weights import WeightsError

__all__ = ["DINOV2_TIMM_NAMES", "PATCH", "DinoV2Encoder", "LinearHead", "crop_back"]

PATCH = 14

DINOV2_TIMM_NAMES = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}


def crop_back(maps: torch.Tensor, height: int, width: int, patch: int = PATCH) -> torch.Tensor:
    """Token maps of an input padded at the bottom/right to multiples of ``patch``,
    resampled (bilinear) so that the same number of cells covers only the
    unpadded ``height x width`` area: cell ``i`` of the result is the map's value
    at the centre of the ``i``-th of ``h`` equal parts of the unpadded rows."""
    h, w = maps.shape[-2:]
    scale_y, scale_x = height / float(h * patch), width / float(w * patch)
    if scale_y == 1.0 and scale_x == 1.0:
        return maps
    # in float32 whatever the maps' precision: bf16 sample positions would be ~1% off
    theta = torch.tensor([[scale_x, 0.0, scale_x - 1.0], [0.0, scale_y, scale_y - 1.0]],
                         dtype=torch.float32, device=maps.device)
    grid = F.affine_grid(theta.expand(maps.shape[0], 2, 3), list(maps.shape),
                         align_corners=False)
    out = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.to(maps.dtype)


class DinoV2Encoder(nn.Module):
    """A timm DINOv2 ViT as an encoder (see the module docstring).

    ``forward(x, return_feature_maps=False)``: one ``[B, C', H/14, W/14]`` map per
    block taken (``C' = C`` or ``2C`` with the class token), else only the last.
    ``out_channels``: the maps' widths. ``vit``: the timm model (its state-dict keys
    under ``vit.``).
    """

    def __init__(self, vit: nn.Module, layers: int = 1, cls_token: bool = False) -> None:
        super().__init__()
        depth = len(vit.blocks)
        if not 1 <= int(layers) <= depth:
            raise ValueError(f"DINOv2 encoder: layers must be 1..{depth} (the blocks of this "
                             f"ViT), got {layers}")
        self.vit = vit
        self.layers = int(layers)
        self.cls_token = bool(cls_token)
        width = int(vit.embed_dim) * (2 if self.cls_token else 1)
        self.out_channels = (width,) * self.layers
        self.patch = int(vit.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = -height % self.patch, -width % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        outs = self.vit.forward_intermediates(
            x, indices=self.layers, return_prefix_tokens=self.cls_token, norm=True,
            stop_early=True, output_fmt="NCHW", intermediates_only=True)
        maps = []
        for out in outs:
            if self.cls_token:
                patches, prefix = out
                cls = prefix[:, 0, :, None, None].expand(-1, -1, *patches.shape[-2:])
                out = torch.cat([patches, cls], dim=1)
            if pad_h or pad_w:
                out = crop_back(out, height, width, self.patch)
            maps.append(out)
        return maps if return_feature_maps else maps[-1:]


def build_dinov2(arch: str, pretrained: bool = False, layers: int = 1, cls_token: bool = False,
                 model_args: Mapping[str, Any] | None = None) -> DinoV2Encoder:
    """The DINOv2 encoder ``arch`` (``dinov2_vits14`` ...); ``pretrained``: timm's
    LVD-142M weights (downloaded into the Hugging Face cache once)."""
    timm = import_timm("DINOv2 encoders")
    name = DINOV2_TIMM_NAMES[arch]
    kwargs = dict(num_classes=0, dynamic_img_size=True, **dict(model_args or {}))
    try:
        vit = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = " (HF_HUB_OFFLINE is set: the file must be in the cache)" \
            if os.environ.get("HF_HUB_OFFLINE") else ""
        raise WeightsError(
            f"{arch}: cannot get timm's pretrained weights for {name} ({first}){offline}. "
            f"timm keeps them in {timm_weights_path(name)} (repo timm/{name}."
            f"lvd142m); download them there on a connected machine, or set MODEL.pretrained "
            f"False for random weights.") from None
    return DinoV2Encoder(vit, layers=layers, cls_token=cls_token)


_OPTIONS = ("layers", "cls_token", "model_args")


@register_encoder(*DINOV2_TIMM_NAMES)
def _dinov2(spec: EncoderSpec) -> DinoV2Encoder:
    options = dict(spec.options or {})
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"MODEL.encoder_options {unknown} are not options of {spec.arch}; it "
                         f"takes {list(_OPTIONS)}")
    return build_dinov2(spec.arch, spec.pretrained, int(options.get("layers", 1)),
                        _flag(options.get("cls_token", False)),
                        dict(options.get("model_args", {}) or {}))


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


# --------------------------------------------------------------------------- the head

class LinearHead(Decoder):
    """DINOv2's linear head: the feature maps resized to the first one's size and
    concatenated, BatchNorm (synchronised, momentum 0.1 as mmsegmentation's SyncBN),
    a 1x1 convolution to the classes; scores upsampled ``upsample`` times
    (bilinear). Nothing else learns, so on a frozen encoder this is a linear probe.
    """

    def __init__(self, num_class: int = 150, fc_dim: int = 384, use_softmax: bool = False,
                 in_channels: Sequence[int] | None = None, upsample: int = 1) -> None:
        in_channels = (int(fc_dim),) if in_channels is None else tuple(int(c) for c in in_channels)
        super().__init__(num_class, in_channels[-1], use_softmax, deep_sup=False)
        width = sum(in_channels)
        self.bn = SynchronizedBatchNorm2d(width, momentum=0.1)
        self.conv_seg = nn.Conv2d(width, num_class, kernel_size=1)
        self.upsample = int(upsample)
        self.class_layers = ("conv_seg",)

    def logits(self, conv_out: list[torch.Tensor]) -> torch.Tensor:
        size = conv_out[0].shape[2:]
        maps = [x if x.shape[2:] == size else
                F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                for x in conv_out]
        x = self.conv_seg(self.bn(torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]))
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return x


register_decoder("linear", upsample=1)(LinearHead)
register_decoder("dinov2_linear", upsample=7)(LinearHead)
