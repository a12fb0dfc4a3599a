"""Speedups that keep the predictions: inference copies of models, a faster
band-wise fusion kernel for the inference engine, reduced precision (opt-in)
and training helpers.

Inference model (``optimize_for_inference``)
    An eval-mode copy with every BatchNorm folded into the convolution before
    it (``fuse_bn``), convolution + ReLU/ReLU6 (and the residual add of ResNet,
    HRNet and MobileNetV2 blocks) run as one oneDNN primitive with post-ops
    (CPU, channels-last; elsewhere the same module falls back to plain ops),
    channels-last memory, no autograd state. Class scores equal the original
    model's to float32 rounding (about 1e-6 relative; folding changes the
    order of operations); the label maps are identical except at pixels whose
    two best classes tie to that precision, which the tests check for every
    architecture.

Fusion kernel (``fuse_banded_fast``)
    Same signature and bit-identical results as ``inference.fuse_full`` /
    ``inference.fuse_banded``, with memory bounded by ``band_bytes``. Faster
    because it keeps every band tensor in reused buffers (no page faults on
    fresh memory, no allocator traffic), uses cache-sized bands, does the
    horizontal resize with the channels-last kernel (class-last output
    directly, no transposition; checked per size against the NCHW kernel),
    and does the vertical resize with broadcast multiply-adds over groups of
    rows that share their source rows instead of row gathers.

Reduced precision (opt-in)
    ``optimize_for_inference(dtype=torch.bfloat16)`` keeps the class layers in
    float32 (on bf16 features) so that only the trunk runs in bf16; the
    label agreement with float32 is reported by the benchmark.

Training
    ``make_sgd`` picks the fused (else foreach) SGD implementation;
    ``channels_last_`` converts a model and batch. BatchNorm cannot be folded
    in training, so the training-side gain is memory format, optimizer and
    the absence of host/device round trips (see docs/benchmark.md).
"""
from __future__ import annotations

import copy
import math
import threading
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "fold_conv_bn", "fuse_bn", "FusedConv2d", "FusedResidual", "KeepFloat32",
    "optimize_for_inference", "prepare_input", "precision_dtype", "mkldnn_fusion_available",
    "fuse_banded_fast", "release_workspace", "FAST_BAND_BYTES", "FastInferenceEngine",
    "make_sgd", "channels_last_", "confusion_counts", "factorize_pyramids_",
]

# Size of one band tensor (float32, rows x W x C) in fuse_banded_fast. Three
# such buffers plus the horizontal rows of every scale are alive at once.
# Measured on a 2-core AVX-512 machine (640x480, 150 classes, 5 scales): 1-2 MiB
# is best with one thread or OpenMP's default (spinning) wait, 16 MiB with
# OMP_WAIT_POLICY=passive (fewer, larger parallel regions); 4 MiB is within
# about 10% of the best of both.
FAST_BAND_BYTES = 4 * 2 ** 20

_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def precision_dtype(precision: str | None) -> torch.dtype | None:
    """``"fp32"`` (or None) -> None; ``"bf16"`` -> torch.bfloat16; ``"fp16"`` -> torch.float16."""
    key = (precision or "fp32").lower()
    if key not in _PRECISIONS:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return _PRECISIONS[key]


# ============================================================================ BatchNorm folding

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


def _named_pair_owners() -> tuple[type, ...]:
    """Model classes whose ``conv{k}`` feeds ``bn{k}`` directly (and nothing else)."""
    from .models import hrnet, resnet
    return (resnet._ResidualBlock, resnet.ResNet, resnet.Resnet,
            hrnet.BasicBlock, hrnet.Bottleneck, hrnet.HRNetV2)


def _foldable(conv: Any, bn: Any) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, _BatchNorm)
            and bn.track_running_stats and bn.running_mean is not None
            and conv.out_channels == bn.num_features)


def fuse_bn(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Eval-mode copy of ``module`` (``module`` itself if ``inplace``) with every
    BatchNorm that directly follows a Conv2d folded into it and replaced by
    ``nn.Identity``.

    Pairs: consecutive (Conv2d, BatchNorm) children of an ``nn.Sequential``, and
    ``conv{k}`` / ``bn{k}`` children of this package's ResNet and HRNet modules.
    Other BatchNorms are kept (in eval mode). The copy is for inference: its
    state-dict keys differ from the original's.
    """
    net = module if inplace else copy.deepcopy(module)
    net.eval()
    owners = _named_pair_owners()
    for parent in list(net.modules()):
        children = parent._modules
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = [(a, b) for a, b in zip(names, names[1:]) if _foldable(children[a], children[b])]
        elif isinstance(parent, owners):
            for name in list(children):
                if name.startswith("conv") and name[4:].isdigit():
                    bn_name = "bn" + name[4:]
                    if _foldable(children.get(name), children.get(bn_name)):
                        pairs.append((name, bn_name))
        for conv_name, bn_name in pairs:
            children[conv_name] = fold_conv_bn(children[conv_name], children[bn_name])
            children[bn_name] = nn.Identity()
    return net


# ============================================================================ conv + post-op fusion

def mkldnn_fusion_available() -> bool:
    """Whether this PyTorch build has oneDNN convolutions with post-ops."""
    try:
        ops = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available()
                and hasattr(ops, "_convolution_pointwise")
                and hasattr(ops._convolution_pointwise, "binary"))
    except (AttributeError, RuntimeError):
        return False


_MKLDNN = mkldnn_fusion_available()

# activation name -> (oneDNN unary attr, scalars, eager function)
_ACTIVATIONS: dict[str, tuple[str, list, Callable[[torch.Tensor], torch.Tensor] | None]] = {
    "none": ("none", [], None),
    "relu": ("relu", [], F.relu),
    "relu6": ("hardtanh", [0.0, 6.0], lambda t: F.hardtanh(t, 0.0, 6.0)),
}


def _activation_name(m: nn.Module) -> str | None:
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.ReLU6:
        return "relu6"
    return None


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    """Contiguous copy of a channels-last [1, C, H, W] tensor (a 2-D transpose,
    which PyTorch does about 2.5x faster than the generic 4-D copy)."""
    n, c, h, w = x.shape
    if n != 1:
        return x.contiguous()
    return x.permute(0, 2, 3, 1).reshape(h * w, c).t().contiguous().view(1, c, h, w)


def _to_channels_last(y: torch.Tensor) -> torch.Tensor:
    n, c, h, w = y.shape
    if n != 1:
        return y.contiguous(memory_format=torch.channels_last)
    return y.reshape(c, h * w).t().contiguous().view(1, h, w, c).permute(0, 3, 1, 2)


class FusedConv2d(nn.Module):
    """``act(conv(x) [+ other])`` for an inference copy.

    On CPU, for float32/bfloat16 channels-last input with no autograd, one
    oneDNN convolution with the add and the activation as post-ops (the same
    numbers as the separate ops); otherwise ``F.conv2d``, ``+ other``, activation.
    ``activation``: "none", "relu" or "relu6".
    """

    # Convolutions with at least this many inputs per output (Cin/groups*kh*kw) on at
    # least this many pixels run in NCHW through F.conv2d: for them oneDNN's blocked
    # NCHW kernel beats its channels-last one by 25-35% (the PPM head's 3x3
    # 4096->512 conv at 66x88: 572 vs 786 ms on a 2-core AVX-512/AMX Xeon), more
    # than the two layout changes cost (~65 ms there); below ~5000 pixels the two
    # kernels are within 10%. Measured with oneDNN 3.x; nchw_min_k = 0 disables it.
    nchw_min_k = 32768
    nchw_min_pixels = 5000

    def __init__(self, conv: nn.Conv2d, activation: str = "none") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {activation!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d needs numeric zero padding")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = (nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
                     if conv.bias is not None else None)
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.activation = activation
        self._attr, self._scalars, self._act = _ACTIVATIONS[activation]
        self._packed: torch.Tensor | None = None  # oneDNN-blocked weight, made on first use
        self._packed_key: tuple | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = state["_packed_key"] = None  # a cache (opaque tensors do not copy)
        state.pop("_nchw_weight", None)
        state.pop("_nchw_key", None)
        state.pop("_split", None)
        return state

    def _mkldnn_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into oneDNN's blocked layout (chosen for the
        first input size; valid for every size, same results as the plain weight)."""
        w = self.weight
        key = (w.dtype, w.data_ptr(), w._version)
        if self._packed_key != key:
            try:
                self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w.detach(), self.padding, self.stride, self.dilation, self.groups,
                    list(x.shape))
            except (RuntimeError, AttributeError):
                self._packed = w
            self._packed_key = key
        assert self._packed is not None
        return self._packed

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
                f"kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, "
                f"groups={self.groups}, activation={self.activation}")

    def _use_mkldnn(self, x: torch.Tensor, other: torch.Tensor | None) -> bool:
        if not _MKLDNN or x.device.type != "cpu" or x.dim() != 4:
            return False
        if x.dtype not in (torch.float32, torch.bfloat16) or x.dtype != self.weight.dtype:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        if not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if other is not None and (other.dtype != x.dtype
                                  or not other.is_contiguous(memory_format=torch.channels_last)
                                  or (other.requires_grad and torch.is_grad_enabled())):
            return False
        return True

    def _prefers_nchw(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (0 < self.nchw_min_k <= w.shape[1] * w.shape[2] * w.shape[3]
                and x.shape[2] * x.shape[3] >= self.nchw_min_pixels)

    def _nchw_forward(self, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        w = self.weight
        key = (w.dtype, w.data_ptr(), w._version)
        if getattr(self, "_nchw_key", None) != key:
            self._nchw_weight = w.detach().contiguous()
            self._nchw_key = key
        y = F.conv2d(_to_nchw(x), self._nchw_weight, self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        if other is not None:
            y = y + other
        y = y if self._act is None else self._act(y)
        return _to_channels_last(y)

    def split_forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``act(conv(x) + bias + other)`` with only the first ``x.shape[1]`` input
        channels of the kernel (``models.decoders.pyramid_conv`` supplies the
        rest as ``other``)."""
        channels = x.shape[1]
        cache = self.__dict__.setdefault("_split", {})
        key = (channels, self.weight.dtype, self.weight.data_ptr(), self.weight._version)
        part = cache.get(key)
        if part is None:
            cache.clear()
            view = SimpleNamespace(
                weight=self.weight[:, :channels], bias=self.bias, stride=self.stride,
                padding=self.padding, dilation=self.dilation, groups=self.groups,
                padding_mode="zeros")
            with torch.inference_mode(False):  # a normal tensor even when first called there
                part = FusedConv2d(view, self.activation)  # type: ignore[arg-type]
            cache[key] = part
        return part(x, other=other.contiguous(memory_format=torch.channels_last)
                    if x.is_contiguous(memory_format=torch.channels_last) else other)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if self._use_mkldnn(x, other):
            if self._prefers_nchw(x):
                return self._nchw_forward(x, other)
            ops = torch.ops.mkldnn
            weight = self._mkldnn_weight(x)
            if other is None:
                return ops._convolution_pointwise(
                    x, weight, self.bias, self.padding, self.stride, self.dilation,
                    self.groups, self._attr, self._scalars, "")
            out = ops._convolution_pointwise.binary(
                x, other, weight, self.bias, self.padding, self.stride, self.dilation,
                self.groups, "add", None, None if self._attr == "none" else self._attr,
                self._scalars, None)
            if out.shape == other.shape:
                return out
            raise ValueError(f"residual of shape {tuple(other.shape)} does not match the "
                             f"convolution output {tuple(out.shape)}")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        if other is not None:
            y = y + other
        return y if self._act is None else self._act(y)


class FusedResidual(nn.Module):
    """A residual block as ``body[-1](body[-2](...body[0](x)), other=shortcut(x))``.

    ``shortcut`` None means identity. The last convolution adds the shortcut
    before its own activation (ReLU for ResNet/HRNet blocks, none for MobileNetV2).
    """

    def __init__(self, body: Sequence[FusedConv2d], shortcut: nn.Module | None) -> None:
        super().__init__()
        self.body = nn.ModuleList(body)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        y = x
        for conv in self.body[:-1]:
            y = conv(y)
        return self.body[-1](y, other=residual)


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Conv2d [Identity...] ReLU/ReLU6 -> FusedConv2d(act) [Identity...] Identity, in place."""
    names = list(seq._modules)
    for i, name in enumerate(names):
        conv = seq._modules[name]
        if type(conv) is not nn.Conv2d:
            continue
        j = i + 1
        while j < len(names) and type(seq._modules[names[j]]) is nn.Identity:
            j += 1
        act = _activation_name(seq._modules[names[j]]) if j < len(names) else None
        if act is not None:
            seq._modules[name] = FusedConv2d(conv, act)
            seq._modules[names[j]] = nn.Identity()


def _as_fused(m: nn.Module, activation: str) -> FusedConv2d:
    if isinstance(m, FusedConv2d):
        return m
    if type(m) is not nn.Conv2d:
        raise TypeError(f"expected a Conv2d, got {type(m).__name__}")
    return FusedConv2d(m, activation)


def _block_to_fused(block: nn.Module) -> nn.Module | None:
    """FusedResidual for a known residual block whose BatchNorms are folded, else None."""
    from .models import hrnet, mobilenet, resnet
    if isinstance(block, (resnet._ResidualBlock, hrnet.BasicBlock, hrnet.Bottleneck)):
        depth = 3 if hasattr(block, "conv3") else 2
        if any(type(getattr(block, f"bn{i}")) is not nn.Identity for i in range(1, depth + 1)):
            return None
        body = [_as_fused(getattr(block, f"conv{i}"), "relu") for i in range(1, depth + 1)]
        return FusedResidual(body, block.downsample)
    if isinstance(block, mobilenet.InvertedResidual) and block.use_res_connect:
        layers = list(block.conv)
        if any(type(m) not in (nn.Conv2d, FusedConv2d, nn.Identity) for m in layers):
            return None  # an unfolded BatchNorm or an activation that was not fused
        convs = [m for m in layers if type(m) is not nn.Identity]
        if not convs or type(convs[-1]) is not nn.Conv2d:
            return None
        body = [_as_fused(m, "none") for m in convs]
        return FusedResidual(body, None)
    return None


def _fuse_stems(net: nn.Module) -> None:
    """ResNet stems (conv{i} -> bn{i} -> relu{i}) and the HRNetV2 stem (shared relu)."""
    from .models import hrnet, resnet
    for m in net.modules():
        if isinstance(m, (resnet.ResNet, resnet.Resnet)):
            for i in range(1, 4):
                conv, bn, relu = (getattr(m, f"{k}{i}", None) for k in ("conv", "bn", "relu"))
                if type(conv) is nn.Conv2d and type(bn) is nn.Identity and type(relu) is nn.ReLU:
                    setattr(m, f"conv{i}", FusedConv2d(conv, "relu"))
                    setattr(m, f"relu{i}", nn.Identity())
        elif isinstance(m, hrnet.HRNetV2):
            stem = [(getattr(m, f"conv{i}"), getattr(m, f"bn{i}")) for i in (1, 2)]
            if all(type(c) is nn.Conv2d and type(b) is nn.Identity for c, b in stem) \
                    and type(m.relu) is nn.ReLU:
                m.conv1 = FusedConv2d(stem[0][0], "relu")
                m.conv2 = FusedConv2d(stem[1][0], "relu")
                m.relu = nn.Identity()  # used by the stem only


def _fuse_conv_activations(net: nn.Module) -> None:
    """Rewrite a fuse_bn'd network in place with FusedConv2d / FusedResidual."""
    for m in list(net.modules()):
        if isinstance(m, nn.Sequential):
            _fuse_sequential(m)
    _fuse_stems(net)

    def replace_blocks(parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            fused = _block_to_fused(child)
            if fused is not None:
                parent._modules[name] = fused
                child = fused
            replace_blocks(child)

    replace_blocks(net)


# ============================================================================ precision

class KeepFloat32(nn.Module):
    """Runs ``module`` in float32 on float32 copies of its inputs (for the class
    layers of a reduced-precision model)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    owner._modules[name] = value


# ============================================================================ inference copy

def factorize_pyramids_(module: nn.Module, enable: bool = True) -> nn.Module:
    """Switch every PPM head and UPerNet fusion in ``module`` to
    ``models.decoders.pyramid_conv`` (same function up to float rounding,
    fewer operations), in place."""
    from .models.decoders import PPM, UPerNet
    for m in module.modules():
        if isinstance(m, (PPM, UPerNet)):
            m.factorized_pyramid = bool(enable)
    return module


def optimize_for_inference(module: nn.Module, *, channels_last: bool = True, fuse: bool = True,
                           dtype: torch.dtype | None = None,
                           keep_fp32: Iterable[str] | None = None,
                           factorize: bool = True) -> nn.Module:
    """An inference copy of ``module`` (which is left unchanged).

    ``fuse``: fold BatchNorms (``fuse_bn``) and fuse convolutions with their
    activation / residual add (``FusedConv2d``). ``channels_last``: convert
    4-D parameters to channels-last (feed channels-last input, see
    ``prepare_input``). ``dtype``: cast parameters (e.g. torch.bfloat16); the
    submodules named in ``keep_fp32`` (default: a decoder's ``class_layers``)
    stay float32 and get float32 input. ``factorize``: PPM heads through
    ``factorize_pyramids_``. Parameters never require grad.
    """
    net = fuse_bn(module) if fuse else copy.deepcopy(module).eval()
    factorize_pyramids_(net, factorize)
    if fuse:
        _fuse_conv_activations(net)
    if dtype is not None and dtype != torch.float32:
        names = list(keep_fp32) if keep_fp32 is not None else list(getattr(net, "class_layers", ()))
        kept = {name: _get(net, name) for name in names}
        net.to(dtype)
        for name, sub in kept.items():
            sub.float()
            _set(net, name, KeepFloat32(sub))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def prepare_input(img: torch.Tensor, *, channels_last: bool = True,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """``img`` in the memory format and dtype an ``optimize_for_inference`` copy expects."""
    if dtype is not None and img.dtype != dtype:
        img = img.to(dtype)
    if channels_last and img.dim() == 4:
        img = img.contiguous(memory_format=torch.channels_last)
    return img


# ============================================================================ fusion kernel

class _Workspace(threading.local):
    """Per-thread reusable buffers (grown on demand, never shrunk)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # usable in and outside inference mode
                buf = torch.empty(n, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[:n].view(tuple(shape))


_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's reusable fusion buffers."""
    _workspace.buffers.clear()


_cl_checked: dict[tuple, bool] = {}


def _horizontal_cl_exact(channels: int, in_w: int, out_w: int, device: torch.device) -> bool:
    """Whether the channels-last bilinear kernel resizes rows (height kept) to the
    same bits as the NCHW kernel for this size on this device (probe, cached)."""
    key = (channels, in_w, out_w, str(device), torch.get_num_threads())
    if key not in _cl_checked:
        gen = torch.Generator().manual_seed(channels * 7919 + in_w * 31 + out_w)
        probe = (torch.randn(1, channels, 3, in_w, generator=gen) * 8).to(device)
        ref = F.interpolate(probe, size=(3, out_w), mode="bilinear", align_corners=False)
        got = F.interpolate(probe.contiguous(memory_format=torch.channels_last), size=(3, out_w),
                            mode="bilinear", align_corners=False)
        if len(_cl_checked) > 4096:
            _cl_checked.clear()
        _cl_checked[key] = bool(torch.equal(ref, got))
    return _cl_checked[key]


class _Horizontal:
    """Class-last horizontally resized source rows of one scale, computed in chunks."""

    def __init__(self, x: torch.Tensor, width: int, chunk_rows: int, slot: int) -> None:
        self.x = x
        self.width = width
        self.chunk_rows = chunk_rows
        self.slot = slot
        C, _, w = x.shape[1:]
        self.use_cl = _horizontal_cl_exact(C, w, width, x.device)
        self.xcl = x.contiguous(memory_format=torch.channels_last) if self.use_cl else None
        self.lo = self.hi = -1
        self.rows: torch.Tensor | None = None

    def get(self, s0: int, s1: int) -> tuple[torch.Tensor, int]:
        """Rows covering source rows s0:s1 as a [k, W, C] tensor and its first row index."""
        if not (self.lo <= s0 and s1 <= self.hi):
            from .inference import _SMALL_OUTPUT_SIDES
            h, C = self.x.shape[2], self.x.shape[1]
            lo, hi = s0, min(h, max(s1, s0 + self.chunk_rows))
            if self.use_cl:
                assert self.xcl is not None
                horiz = F.interpolate(self.xcl[:, :, lo:hi], size=(hi - lo, self.width),
                                      mode="bilinear", align_corners=False)
                self.rows = horiz[0].permute(1, 2, 0)  # class-last storage already
            else:
                # NCHW kernel (as inference._resize_rows_cl, including its padding of
                # short row sets onto the general kernel), then one transposition.
                rows = self.x[:, :, lo:hi]
                need = max(2, _SMALL_OUTPUT_SIDES + 1 - self.width)
                if rows.shape[2] < need:
                    rows = torch.cat(
                        [rows, rows[:, :, -1:].expand(-1, -1, need - rows.shape[2], -1)], dim=2)
                horiz = F.interpolate(rows.contiguous(), size=(rows.shape[2], self.width),
                                      mode="bilinear", align_corners=False)
                out = _workspace.get(f"horiz{self.slot}", (hi - lo, self.width, C),
                                     torch.float32, self.x.device)
                out.copy_(horiz[0, :, :hi - lo].permute(1, 2, 0))
                self.rows = out
            self.lo, self.hi = lo, hi
        assert self.rows is not None
        return self.rows, self.lo


def fuse_banded_fast(logits: Sequence[torch.Tensor], out_size: tuple[int, int],
                     return_probs: bool = False, band_bytes: int = FAST_BAND_BYTES,
                     softmax: bool = True):
    """``inference.fuse_banded`` with the same arguments and bit-identical results
    (equal to ``inference.fuse_full``), faster and with reused buffers.

    Memory: about three ``band_bytes`` buffers plus, per scale, horizontally
    resized source rows for two bands; plus the labels (and ``return_probs``'
    full map). Falls back to ``fuse_full`` where the engine's row plans cannot
    reproduce this platform's interpolation.

    ``softmax=False`` with a single score map and no probabilities: labels are
    the argmax of the resized scores themselves (softmax is monotonic, so they
    equal the softmax's argmax except where rounding makes two probabilities
    exactly equal); saves the softmax pass. Ignored otherwise.
    """
    from . import inference as inf
    logits = inf._as_nchw(logits)
    H, W = (int(s) for s in out_size)
    if inf._needs_full(logits, (H, W), band_bytes):
        return inf.fuse_full(logits, (H, W), return_probs)
    device = logits[0].device
    plans = [inf._row_plan(x.shape[2], H, device) for x in logits]
    if any(p is None for p in plans):
        return inf.fuse_full(logits, (H, W), return_probs)
    C, n = logits[0].shape[1], len(logits)
    argmax_only = not softmax and n == 1 and not return_probs
    row_bytes = C * W * 4
    rows_per_band = max(1, int(band_bytes) // row_bytes)
    scales = [_Horizontal(x, W, max(2, 2 * rows_per_band), k) for k, x in enumerate(logits)]
    starts = [p.i0.tolist() for p in plans]
    ends = [p.i1.tolist() for p in plans]
    w0 = [p.l0.view(-1, 1, 1) for p in plans]
    w1 = [p.l1.view(-1, 1, 1) for p in plans]

    labels = torch.empty((H, W), dtype=torch.int64, device=device)
    probs = torch.empty((H, W, C), dtype=torch.float32, device=device) if return_probs else None
    f32 = torch.float32
    for r0 in range(0, H, rows_per_band):
        r1 = min(H, r0 + rows_per_band)
        rr = r1 - r0
        acc = probs[r0:r1] if probs is not None else _workspace.get("acc", (rr, W, C), f32, device)
        band = _workspace.get("band", (rr, W, C), f32, device)
        for k in range(n):
            i0, i1 = starts[k], ends[k]
            src, base = scales[k].get(i0[r0], i1[r1 - 1] + 1)
            # vertical resize: rows sharing source rows (a, b) in one broadcast step;
            # bottom * l1 then fused multiply-add of top * l0, as the kernel rounds.
            s = r0
            while s < r1:
                a, b = i0[s], i1[s]
                e = s + 1
                while e < r1 and i0[e] == a:
                    e += 1
                dst = band[s - r0:e - r0]
                torch.mul(src[b - base:b - base + 1], w1[k][s:e], out=dst)
                dst.addcmul_(src[a - base:a - base + 1], w0[k][s:e])
                s = e
            if argmax_only:
                acc = band
            elif k == 0:
                torch._softmax(band, -1, False, out=acc)
                acc.div_(n)
            else:
                torch._softmax(band, -1, False, out=band)
                band.div_(n)
                acc.add_(band)
        values = _workspace.get("max", (rr, W), f32, device)
        torch.max(acc, -1, out=(values, labels[r0:r1]))
    return inf._finish(labels, probs)


_fast_checked: dict[tuple[str, int, int], bool] = {}


def _fast_banding_verified(device: torch.device, num_class: int) -> bool:
    """Compare fuse_banded_fast with fuse_full on random scores once per device,
    class count and thread count."""
    from . import inference as inf
    key = (str(device), int(num_class), torch.get_num_threads())
    if key not in _fast_checked:
        gen = torch.Generator().manual_seed(4321)
        logits = [(torch.randn(1, num_class, h, w, generator=gen) * 4).to(device)
                  for h, w in ((11, 9), (17, 13), (70, 150))]
        ok = True
        for size in ((67, 75), (41, 131)):
            ref = inf.fuse_full(logits, size, return_probs=True)
            got = fuse_banded_fast(logits, size, return_probs=True,
                                   band_bytes=num_class * size[1] * 4 * 5)
            ok = ok and bool((ref.labels == got.labels).all()) and torch.equal(ref.probs, got.probs)
        _fast_checked[key] = ok
    return _fast_checked[key]


# ============================================================================ engine

def _engine_base() -> type:
    from .inference import InferenceEngine
    return InferenceEngine


class FastInferenceEngine(_engine_base()):  # type: ignore[misc]
    """``inference.InferenceEngine`` with an ``optimize_for_inference`` model and
    ``fuse_banded_fast``; same constructor arguments plus ``channels_last`` and
    ``fuse``.

    Fusion results are bit-identical to the engine's. Class scores equal the
    plain model's to float32 rounding (see the module docstring). With
    ``precision="bf16"`` the model itself is cast (class layers kept float32),
    which is faster on CPU than autocast; ``"fp16"`` uses autocast.
    ``single_scale_softmax=False``: a single copy's labels are the argmax of its
    resized scores, without the softmax (same labels up to exact float ties).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *,
                 device: Any = "auto", flip: bool = False, precision: str = "fp32",
                 band_bytes: int = FAST_BAND_BYTES, channels_last: bool = True,
                 fuse: bool = True, single_scale_softmax: bool = True) -> None:
        super().__init__(encoder, decoder, device=device, flip=flip, precision=precision,
                         band_bytes=band_bytes)
        self.single_scale_softmax = bool(single_scale_softmax)
        dtype = precision_dtype(precision)
        self.model_dtype = dtype if dtype == torch.bfloat16 else None
        self.channels_last = bool(channels_last)
        self.encoder = optimize_for_inference(self.encoder, channels_last=self.channels_last,
                                              fuse=fuse, dtype=self.model_dtype)
        self.decoder = optimize_for_inference(self.decoder, channels_last=self.channels_last,
                                              fuse=fuse, dtype=self.model_dtype)

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        x = prepare_input(img, channels_last=self.channels_last, dtype=self.model_dtype)
        if self.model_dtype is not None:
            features = self.encoder(x, return_feature_maps=True)
            out = self.decoder.logits(features)
        else:
            from .inference import _autocast
            with _autocast(self.device, self.precision):
                features = self.encoder(x, return_feature_maps=True)
                out = self.decoder.logits(features)
        return out.float().contiguous()

    @torch.inference_mode()
    def fuse(self, logits: Sequence[torch.Tensor], out_size: tuple[int, int],
             return_probs: bool = False):
        from .inference import fuse_full
        if self.band_bytes <= 0 or not _fast_banding_verified(self.device, logits[0].shape[1]):
            return fuse_full(logits, out_size, return_probs)
        return fuse_banded_fast(logits, out_size, return_probs, self.band_bytes,
                                softmax=self.single_scale_softmax)


# ============================================================================ metrics

def confusion_counts(pred: Any, label: Any, num_class: int) -> "np.ndarray | None":
    """``num_class x num_class`` int64 counts (rows: label, columns: prediction)
    over the pixels with ``label >= 0``, or None where this fast path does not
    apply; the caller then counts the straightforward way (which also raises
    the right errors).

    One fused pass builds ``(label + 1) * k + pred`` (unlabeled pixels land in
    a row that is dropped, so no masking) into a reused buffer, then one
    ``bincount``. Applies when ``pred`` and ``label`` are integer numpy arrays
    or tensors of the same number of elements, every prediction (labeled or
    not) is in ``0..k-1`` and every label in ``-1..k-1``.
    """
    import numpy as np
    k = int(num_class)
    for x in (pred, label):
        if not torch.is_tensor(x) and not (isinstance(x, np.ndarray) and x.flags.writeable):
            return None  # lists, read-only arrays (torch would warn): the slow path
    try:
        p = pred if torch.is_tensor(pred) else torch.from_numpy(np.ascontiguousarray(pred))
        t = label if torch.is_tensor(label) else torch.from_numpy(np.ascontiguousarray(label))
    except (TypeError, ValueError):
        return None
    if (p.dtype.is_floating_point or t.dtype.is_floating_point or p.dtype == torch.bool
            or t.dtype == torch.bool or p.is_complex() or t.is_complex()
            or p.numel() != t.numel() or p.numel() == 0 or p.device != t.device):
        return None
    p = p.reshape(-1).to(torch.int64)
    t = t.reshape(-1).to(torch.int64)
    lo, hi = torch.aminmax(p)
    if int(lo) < 0 or int(hi) >= k:
        return None
    idx = _workspace.get("confusion", (p.numel(),), torch.int64, p.device)
    torch.add(p, t, alpha=k, out=idx)
    idx.add_(k)
    try:
        counts = torch.bincount(idx, minlength=(k + 1) * k)
    except RuntimeError:  # a label below -1
        return None
    if counts.numel() != (k + 1) * k:  # a label >= k
        return None
    return counts[k:].view(k, k).cpu().numpy()


# ============================================================================ training

def make_sgd(params: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
             impl: str = "auto", **kwargs: Any) -> torch.optim.SGD:
    """``torch.optim.SGD`` with a multi-tensor implementation.

    ``impl``: "fused" (one kernel for all parameters), "foreach" (multi-tensor
    ops), "loop" (PyTorch's per-parameter loop; PyTorch's own default on CPU) or
    "auto" (fused where this PyTorch supports it for the parameters' device,
    else foreach). All give the same update up to float rounding.
    """
    if impl not in ("auto", "fused", "foreach", "loop"):
        raise ValueError(f"impl must be auto, fused, foreach or loop, got {impl!r}")
    if impl == "loop":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               foreach=False, **kwargs)
    if impl in ("auto", "fused"):
        params = list(params)
        try:
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            if impl == "fused":
                raise
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           foreach=True, **kwargs)


def channels_last_(module: nn.Module | None = None,
                   batch: dict[str, torch.Tensor] | None = None) -> None:
    """Convert ``module``'s 4-D parameters and ``batch['img_data']`` to channels-last,
    in place. Training results equal the contiguous layout's up to float rounding."""
    if module is not None:
        module.to(memory_format=torch.channels_last)
    if batch is not None and "img_data" in batch and batch["img_data"].dim() == 4:
        batch["img_data"] = batch["img_data"].contiguous(memory_format=torch.channels_last)
