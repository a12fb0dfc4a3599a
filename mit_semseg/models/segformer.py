"""SegFormer (Xie et al., NeurIPS 2021): the Mix Transformer (MiT) encoder and the
all-MLP decoder head.

Reads top to bottom: stochastic depth, the overlapping patch embedding, efficient
self-attention (keys and values from a map shrunk by ``sr_ratio``), the Mix-FFN
(an MLP with a 3x3 depthwise convolution inside), a block, a stage, the MiT-B0..B5
sizes and the encoder, the all-MLP head, the key map from the released weights in
their Hugging Face form, and the registrations.

Encoders ``mit_b0`` .. ``mit_b5`` return the four stage outputs (strides 4, 8, 16,
32) and declare ``out_channels``. Decoders ``segformer_head`` (256 channels: B0,
B1) and ``segformer_head_768`` (B2..B5) give class scores at stride 4.

``MODEL.encoder_options`` of a MiT encoder: ``drop_path_rate`` (stochastic depth,
rising linearly over the blocks; 0.1 in the paper's training, default 0),
``layer_norm_eps`` (of the block and stage norms; default 1e-6, the eps the
released weights were trained with; transformers uses 1e-5), and, for small test
models, ``embed_dims``, ``depths``, ``num_heads``, ``sr_ratios``, ``mlp_ratio``.

Weights: ``mit_semseg.models.segformer.convert_hf_segformer`` maps a state dict of
transformers' ``SegformerForSemanticSegmentation`` (``nvidia/segformer-b0-finetuned-
ade-512-512``: ``segformer.encoder.*``, ``decode_head.*``) or of the ImageNet
``SegformerForImageClassification`` (``nvidia/mit-b0``: ``segformer.encoder.*`` and
an ImageNet classifier) onto these modules; ``python -m mit_semseg models
import-segformer`` writes the files. With ``MODEL.pretrained`` an encoder starts
from the ImageNet weights of ``nvidia/mit-b<k>`` on the Hugging Face Hub (the
``[hub]`` extra; ``HF_HUB_OFFLINE=1`` uses the cache only).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn import SynchronizedBatchNorm2d

from .decoders import Decoder
from .registry import EncoderSpec, register_decoder, register_encoder
from .weights import WeightsError, load_weights

__all__ = ["MIT_SIZES", "MixTransformer", "SegFormerHead", "convert_hf_segformer",
           "HFSegFormerWeights", "read_hf_state", "mit_imagenet_repo"]


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability
    ``p`` (scaling the kept ones by ``1 / (1 - p)``); the identity in evaluation."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """A strided convolution whose patches overlap (kernel > stride), then LayerNorm;
    ``[B, C, H, W] -> ([B, h*w, D], h, w)``."""

    def __init__(self, in_channels: int, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=stride,
                              padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the token map
    shrunk ``sr_ratio`` times per side (a strided convolution + LayerNorm), which
    cuts the cost from ``N^2`` to ``N^2 / sr_ratio^2``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MiT: {dim} channels do not split into {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self._split(self.q(x))
        if self.sr_ratio > 1:
            small = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
            x = self.sr_norm(small.flatten(2).transpose(1, 2))
        out = F.scaled_dot_product_attention(q, self._split(self.k(x)), self._split(self.v(x)))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear (``ratio`` x wider), 3x3 depthwise convolution over the token map
    (the position information of MiT, which has no position embedding), GELU, linear."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class MixBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``,
    each residual branch under stochastic depth ``drop_path``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float,
                 drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, mlp_ratio)
        self.drop_path = float(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + _drop_path(self.attn(self.norm1(x), h, w), self.drop_path, self.training)
        return x + _drop_path(self.ffn(self.norm2(x), h, w), self.drop_path, self.training)


class MiTStage(nn.Module):
    """Patch embedding, ``depth`` blocks, LayerNorm; returns the ``[B, D, h, w]`` map."""

    def __init__(self, in_channels: int, dim: int, patch: int, stride: int, depth: int,
                 heads: int, sr_ratio: int, mlp_ratio: float, drop_paths: Sequence[float],
                 eps: float) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, patch, stride)
        self.blocks = nn.ModuleList(MixBlock(dim, heads, sr_ratio, mlp_ratio, drop_paths[j], eps)
                                    for j in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


@dataclass(frozen=True)
class MiTSize:
    """One MiT variant: channels and blocks per stage (heads, reductions, patch sizes
    and strides are shared by B0..B5)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    patch_sizes: tuple[int, ...] = field(default=(7, 3, 3, 3))
    strides: tuple[int, ...] = field(default=(4, 2, 2, 2))


_WIDE = (64, 128, 320, 512)
MIT_SIZES: dict[str, MiTSize] = {
    "mit_b0": MiTSize((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSize(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTSize(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTSize(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTSize(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTSize(_WIDE, (3, 6, 40, 3)),
}


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32.

    ``forward(x, return_feature_maps=False)``: the four stage maps with the flag,
    else ``[last]``. Any input size works (each stage's side is the ceiling of the
    previous side over its stride). ``out_channels``: the stages' widths.
    """

    def __init__(self, size: MiTSize, drop_path_rate: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        n = len(size.depths)
        for name in ("embed_dims", "num_heads", "sr_ratios", "patch_sizes", "strides"):
            if len(getattr(size, name)) != n:
                raise ValueError(f"MiT: {name} has {len(getattr(size, name))} entries, depths {n}")
        rates = torch.linspace(0, float(drop_path_rate), sum(size.depths)).tolist()
        stages, first, in_ch = [], 0, 3
        for i in range(n):
            stages.append(MiTStage(in_ch, size.embed_dims[i], size.patch_sizes[i], size.strides[i],
                                   size.depths[i], size.num_heads[i], size.sr_ratios[i],
                                   size.mlp_ratio, rates[first:first + size.depths[i]], eps))
            first += size.depths[i]
            in_ch = size.embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(size.embed_dims)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps if return_feature_maps else [maps[-1]]


def _init_weights(m: nn.Module) -> None:
    """Random init for training from scratch: truncated normal (std 0.02) linears,
    fan-out normal convolutions, unit LayerNorms; zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- the head

class SegFormerHead(Decoder):
    """The all-MLP decoder: a linear layer per stage to ``embed_dim`` channels, every
    map resized (bilinear) to the first one's size, concatenated from the deepest
    stage to the shallowest, a 1x1 convolution + BatchNorm + ReLU fusing them,
    dropout, and a 1x1 class layer. Scores come out at the first map's resolution
    (stride 4 on MiT)."""

    def __init__(self, num_class: int = 150, fc_dim: int = 256, use_softmax: bool = False,
                 in_channels: Sequence[int] | None = None, embed_dim: int = 256,
                 dropout: float = 0.1) -> None:
        if in_channels is None:
            raise ValueError("segformer_head needs an encoder that declares out_channels "
                             "(a MiT encoder, or a timm: backbone)")
        in_channels = tuple(int(c) for c in in_channels)
        super().__init__(num_class, in_channels[-1], use_softmax, deep_sup=False)
        self.mlps = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, kernel_size=1, bias=False)
        # mmsegmentation's SyncBN momentum (0.1), not the original toolkit's 0.001
        self.bn = SynchronizedBatchNorm2d(embed_dim, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_class, kernel_size=1)
        self.class_layers = ("classifier",)

    def logits(self, conv_out: list[torch.Tensor]) -> torch.Tensor:
        if len(conv_out) != len(self.mlps):
            raise ValueError(f"segformer_head was built for {len(self.mlps)} feature maps, "
                             f"got {len(conv_out)}")
        size = conv_out[0].shape[2:]
        maps = []
        for x, mlp in zip(conv_out, self.mlps):
            b, _, h, w = x.shape
            y = mlp(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            maps.append(y)
        x = self.relu(self.bn(self.fuse(torch.cat(maps[::-1], dim=1))))
        return self.classifier(self.dropout(x))


# --------------------------------------------------------------------------- released weights

# transformers' names -> ours (regular expressions over the whole key)
_ENCODER_KEYS = (
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.proj\.", r"stages.\1.embed.proj."),
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"stages.\1.embed.norm."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.layer_norm_1\.", r"stages.\1.blocks.\2.norm1."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.layer_norm_2\.", r"stages.\1.blocks.\2.norm2."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.query\.",
     r"stages.\1.blocks.\2.attn.q."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.key\.",
     r"stages.\1.blocks.\2.attn.k."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.value\.",
     r"stages.\1.blocks.\2.attn.v."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.sr\.",
     r"stages.\1.blocks.\2.attn.sr."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.layer_norm\.",
     r"stages.\1.blocks.\2.attn.sr_norm."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.output\.dense\.",
     r"stages.\1.blocks.\2.attn.proj."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dense1\.", r"stages.\1.blocks.\2.ffn.fc1."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.",
     r"stages.\1.blocks.\2.ffn.dwconv."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dense2\.", r"stages.\1.blocks.\2.ffn.fc2."),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.", r"stages.\1.norm."),
)
_DECODER_KEYS = (
    (r"decode_head\.linear_c\.(\d+)\.proj\.", r"mlps.\1."),
    (r"decode_head\.linear_fuse\.", r"fuse."),
    (r"decode_head\.batch_norm\.", r"bn."),
    (r"decode_head\.classifier\.", r"classifier."),
)
# keys of the released files that no module here has: the ImageNet classifier of
# the mit-b* encoders (reported to the user, never loaded)
_NOT_USED = re.compile(r"classifier\.(weight|bias)$")


@dataclass
class HFSegFormerWeights:
    """A transformers SegFormer state dict in this package's names: ``encoder``
    (MiT keys), ``decoder`` (``segformer_head`` keys; None for an encoder-only file)
    and ``not_used`` (the file's keys no module here takes, e.g. an ImageNet
    classifier)."""

    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor] | None
    not_used: list[str]


def _rename(key: str, table: Sequence[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        new, count = re.subn("^" + pattern, repl, key)
        if count:
            return new
    return None


def convert_hf_segformer(state: Mapping[str, torch.Tensor], source: str = "weights"
                         ) -> HFSegFormerWeights:
    """Map transformers' SegFormer keys (``segformer.encoder.*``, ``decode_head.*``)
    onto the MiT encoder and ``segformer_head``; every key is accounted for: an
    unknown key is a ``WeightsError`` naming it, the ImageNet classifier of an
    encoder-only file is listed in ``not_used``. The head's BatchNorm gets the
    synchronised BatchNorm's bookkeeping buffers for its statistics (weight 1).
    """
    encoder: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    not_used, unknown = [], []
    for key, value in state.items():
        if (new := _rename(key, _ENCODER_KEYS)) is not None:
            encoder[new] = value
        elif (new := _rename(key, _DECODER_KEYS)) is not None:
            decoder[new] = value
        elif _NOT_USED.match(key):
            not_used.append(key)
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... (+{len(unknown) - 8} more)" if len(unknown) > 8
                                           else "")
        raise WeightsError(f"{source}: keys that are not a transformers SegFormer's: {shown}")
    if not encoder:
        raise WeightsError(f"{source}: no segformer.encoder.* keys; this is not a transformers "
                           f"SegFormer (nvidia/segformer-* or nvidia/mit-b*) state dict")
    if decoder and "bn.running_mean" in decoder:
        decoder["bn._tmp_running_mean"] = decoder["bn.running_mean"].clone()
        decoder["bn._tmp_running_var"] = decoder["bn.running_var"].clone()
        decoder["bn._running_iter"] = torch.ones(1)
    return HFSegFormerWeights(encoder, decoder or None, not_used)


def read_hf_state(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a transformers checkpoint file (``model.safetensors``, or
    ``pytorch_model.bin`` read with ``weights_only=True``)."""
    from .weights import read_state_dict
    return read_state_dict(path)


def mit_imagenet_repo(arch: str) -> str:
    """The Hugging Face Hub repo of a MiT encoder's ImageNet weights (nvidia/mit-b0 ...)."""
    return "nvidia/" + arch.replace("mit_", "mit-")


def _fetch_imagenet(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    repo = mit_imagenet_repo(arch)
    hint = (f"or download {repo}'s weights yourself, convert them with `python -m mit_semseg "
            f"models import-segformer FILE --out DIR` and set MODEL.weights_encoder, or start "
            f"from random init with MODEL.pretrained False")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(f"{arch}: ImageNet weights come from the Hugging Face Hub ({repo}) and "
                           f"need huggingface_hub: pip install -e \".[hub]\"; {hint}") from None
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = hf_hub_download(repo, filename)
        except Exception as exc:  # offline, missing file, no access: try the next, then report
            errors.append(f"{filename}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
            continue
        return read_hf_state(path), f"{repo}/{filename}"
    raise WeightsError(f"{arch}: cannot get ImageNet weights from the Hugging Face Hub ({repo}: "
                       f"{'; '.join(errors)}); with HF_HUB_OFFLINE=1 the file must be in the Hub "
                       f"cache already; {hint}")


# --------------------------------------------------------------------------- registration

_OPTION_KEYS = ("drop_path_rate", "layer_norm_eps", "embed_dims", "depths", "num_heads",
                "sr_ratios", "mlp_ratio")


def _size(arch: str, options: Mapping[str, Any]) -> MiTSize:
    unknown = sorted(set(options) - set(_OPTION_KEYS))
    if unknown:
        raise ValueError(f"MODEL.encoder_options {unknown} are not options of {arch}; "
                         f"it takes {list(_OPTION_KEYS)}")
    base = MIT_SIZES[arch]
    changes: dict[str, Any] = {}
    for name in ("embed_dims", "depths", "num_heads", "sr_ratios"):
        if name in options:
            changes[name] = tuple(int(v) for v in options[name])
    if "mlp_ratio" in options:
        changes["mlp_ratio"] = float(options["mlp_ratio"])
    return MiTSize(**{**base.__dict__, **changes})


@register_encoder(*MIT_SIZES)
def _mit(spec: EncoderSpec) -> MixTransformer:
    options = dict(spec.options or {})
    net = MixTransformer(_size(spec.arch, options),
                         drop_path_rate=float(options.get("drop_path_rate", 0.0)),
                         eps=float(options.get("layer_norm_eps", 1e-6)))
    if spec.pretrained:
        state, source = _fetch_imagenet(spec.arch)
        converted = convert_hf_segformer(state, source)
        load_weights(net, converted.encoder, source)
    return net


register_decoder("segformer_head", embed_dim=256)(SegFormerHead)
register_decoder("segformer_head_768", embed_dim=768)(SegFormerHead)
