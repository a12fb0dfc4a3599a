"""Convolution + activation (+ residual add) as one operation, for inference copies.

``FusedConv2d`` runs ``act(conv(x) [+ other])`` as one oneDNN primitive with
post-ops on CPU (channels-last, no autograd), Winograd F(2x2, 3x3) for wide
3x3 float32 convolutions (``winograd``), else the plain ops.
``fuse_activations_`` rewrites a network whose BatchNorms are folded: conv ->
activation chains of ``nn.Sequential``s, the stems and residual blocks that
model families declare in :mod:`mit_semseg.models.fusable`.

Whether a fused oneDNN convolution gives the same bits as the separate ops
depends on the CPU's kernels (it does on some Intel machines, not on AMD
Zen); nothing relies on it. ``fused_conv_exact()`` reports it for this
machine.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.fusable import Residual, fusable_spec
from .winograd import transform_weight, winograd_conv3x3, winograd_eligible

__all__ = ["FusedConv2d", "FusedResidual", "fuse_activations_", "mkldnn_fusion_available",
           "mkldnn_bf16_available", "fused_conv_exact"]


def mkldnn_fusion_available() -> bool:
    """Whether this PyTorch build has oneDNN convolutions with post-ops."""
    try:
        ops = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available()
                and hasattr(ops, "_convolution_pointwise")
                and hasattr(ops._convolution_pointwise, "binary"))
    except (AttributeError, RuntimeError):
        return False


def mkldnn_bf16_available() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or
    AMX; not AVX2-only CPUs such as AMD Zen 2/3, nor where ONEDNN_MAX_CPU_ISA caps it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_MKLDNN = mkldnn_fusion_available()
_MKLDNN_BF16 = _MKLDNN and mkldnn_bf16_available()

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
    numbers as the separate ops up to float summation order), or for wide 3x3
    float32 convolutions Winograd F(2x2, 3x3) (``accel.winograd``; float32
    accuracy); otherwise ``F.conv2d``, ``+ other``, activation.
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
    # 3x3 "same" convolutions (stride 1, one group) whose input and output channel
    # counts have a harmonic mean of at least this run as Winograd F(2x2, 3x3)
    # (accel/winograd.py) on CPU in float32. The batched product grows with
    # Cin * Cout, the transforms with Cin + Cout; measured against oneDNN's direct
    # kernel (2-core Xeon): PPM head 2048->512 at 64x64 430 -> 210 ms, HRNet's C1
    # 720->180 at 128x128 200 -> 159 ms, 512->128 even, 128->128 at 128x128 23 vs
    # 52 ms. As accurate as the direct kernel. winograd_min_channels = 0 disables it.
    winograd_min_channels = 256

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
        state.pop("_winograd_weight", None)
        state.pop("_winograd_key", None)
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
        if x.dtype == torch.bfloat16 and not _MKLDNN_BF16:
            return False  # torch's own bf16 convolution (slow, but it runs everywhere)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        if not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if other is not None and (other.dtype != x.dtype
                                  or not other.is_contiguous(memory_format=torch.channels_last)
                                  or (other.requires_grad and torch.is_grad_enabled())):
            return False
        return True

    def _use_winograd(self, x: torch.Tensor) -> bool:
        w = self.weight
        cout, cin = w.shape[0], w.shape[1]
        return (0 < self.winograd_min_channels <= 2 * cin * cout / (cin + cout)
                and x.dtype == torch.float32 and w.dtype == torch.float32
                and winograd_eligible(w, self.stride, self.padding, self.dilation, self.groups))

    def _winograd_forward(self, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version)
        if getattr(self, "_winograd_key", None) != key:
            self._winograd_weight = transform_weight(w)
            self._winograd_key = key
        if other is not None and other.shape != (x.shape[0], w.shape[0]) + x.shape[2:]:
            raise ValueError(f"residual of shape {tuple(other.shape)} does not match the "
                             f"convolution output {(x.shape[0], w.shape[0]) + x.shape[2:]}")
        return winograd_conv3x3(x, self._winograd_weight, self.bias, self.dilation[0], other,
                                self.activation)

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
            if self._use_winograd(x):
                return self._winograd_forward(x, other)
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


def _residual_body(block: nn.Module, res: Residual) -> list[nn.Module] | None:
    """The body convolutions of a declared residual block, fused with their
    activations, or None when its BatchNorms are not folded (or it adds nothing)."""
    if res.enabled_by and not getattr(block, res.enabled_by):
        return None
    if res.sequence:
        layers = list(getattr(block, res.sequence))
        if any(type(m) not in (nn.Conv2d, FusedConv2d, nn.Identity) for m in layers):
            return None  # an unfolded BatchNorm or an activation that was not fused
        convs = [m for m in layers if type(m) is not nn.Identity]
        if not convs or type(convs[-1]) is not nn.Conv2d:
            return None
        return [_as_fused(m, "none") for m in convs[:-1]] + [_as_fused(convs[-1], res.activation)]
    if any(type(getattr(block, n)) is not nn.Identity for n in res.norms):
        return None
    return [_as_fused(getattr(block, n), "relu") for n in res.convs[:-1]] + \
        [_as_fused(getattr(block, res.convs[-1]), res.activation)]


def _block_to_fused(block: nn.Module) -> nn.Module | None:
    """FusedResidual for a declared residual block whose BatchNorms are folded, else None."""
    spec = fusable_spec(block)
    if spec is None or spec.residual is None:
        return None
    body = _residual_body(block, spec.residual)
    if body is None:
        return None
    shortcut = getattr(block, spec.residual.shortcut) if spec.residual.shortcut else None
    return FusedResidual(body, shortcut)


def _fuse_stem(m: nn.Module, stem: Sequence[tuple[str, str, str]]) -> None:
    """conv -> (folded) BatchNorm -> ReLU triples of a declared stem, all or none."""
    layers = [(getattr(m, c, None), getattr(m, b, None), getattr(m, a, None)) for c, b, a in stem]
    if not all(type(c) is nn.Conv2d and type(b) is nn.Identity and type(a) is nn.ReLU
               for c, b, a in layers):
        return
    for conv_name, _, _ in stem:
        setattr(m, conv_name, FusedConv2d(getattr(m, conv_name), "relu"))
    for _, _, act_name in stem:
        setattr(m, act_name, nn.Identity())


def fuse_activations_(net: nn.Module) -> nn.Module:
    """Rewrite a ``fuse_bn``'d network in place with FusedConv2d / FusedResidual."""
    for m in list(net.modules()):
        if isinstance(m, nn.Sequential):
            _fuse_sequential(m)
    for m in list(net.modules()):
        spec = fusable_spec(m)
        if spec is not None and spec.stem:
            _fuse_stem(m, spec.stem)

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
    return net


_exact_probe: dict[int, bool] = {}


def fused_conv_exact() -> bool:
    """Whether ``FusedConv2d``'s oneDNN path gives the same bits as separate
    conv, add and ReLU ops on this CPU (probed once per thread count)."""
    threads = torch.get_num_threads()
    if threads not in _exact_probe:
        gen = torch.Generator().manual_seed(77)
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, wherever called
            conv = nn.Conv2d(24, 32, 3, padding=1)
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
            conv.bias.copy_(torch.randn(32, generator=gen))
            fused = FusedConv2d(conv, "relu").to(memory_format=torch.channels_last)
        x = torch.randn(1, 24, 19, 23, generator=gen).contiguous(memory_format=torch.channels_last)
        other = torch.randn(1, 32, 19, 23, generator=gen).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1) + other)
            ok = torch.equal(fused(x, other=other), ref) and \
                torch.equal(fused(x), F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)))
        _exact_probe[threads] = bool(ok)
    return _exact_probe[threads]
