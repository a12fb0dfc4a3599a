"""Inference copies (mit_semseg.accel): the same function as the model to
float32 rounding, on every CPU. Bit-identity of oneDNN's fused convolution
with the separate ops depends on the CPU; it is asserted only where
``fused_conv_exact()`` says this machine provides it."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.models import ModelBuilder
from mit_semseg import accel as ic

from _support import rule_state_dict

PAIRS = [
    ("mobilenetv2dilated", "c1_deepsup", 320),
    ("resnet18dilated", "ppm_deepsup", 512),
    ("resnet18", "c1", 512),
    ("resnet50", "upernet", 2048),
    ("hrnetv2", "c1", 720),
]

_cache: dict = {}


def _model(enc_arch: str, dec_arch: str, fc_dim: int, num_class: int = 150):
    key = (enc_arch, dec_arch, fc_dim, num_class)
    if key not in _cache:
        enc = ModelBuilder.build_encoder(enc_arch, fc_dim, pretrained=False)
        dec = ModelBuilder.build_decoder(dec_arch, fc_dim, num_class, use_softmax=True)
        for net in (enc, dec):
            net.load_state_dict(rule_state_dict(
                [(k, v.shape) for k, v in net.state_dict().items()]))
            net.eval()
        _cache[key] = (enc, dec)
    return _cache[key]


def _logits(enc, dec, x):
    with torch.inference_mode():
        return dec.logits(enc(x, return_feature_maps=True)).float()


# ------------------------------------------------------------------ BatchNorm folding

def test_fold_conv_bn_equals_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2, bias=True)
    bn = SynchronizedBatchNorm2d(10)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    conv.eval(), bn.eval()
    x = torch.randn(2, 6, 17, 23)
    fused = ic.fold_conv_bn(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enc_arch,dec_arch,fc_dim", PAIRS)
def test_optimized_model_gives_the_same_labels(enc_arch, dec_arch, fc_dim):
    enc, dec = _model(enc_arch, dec_arch, fc_dim)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    ref = _logits(enc, dec, x)
    for channels_last in ((True, False) if enc_arch.startswith("mobilenet") else (True,)):
        oe = ic.optimize_for_inference(enc, channels_last=channels_last)
        od = ic.optimize_for_inference(dec, channels_last=channels_last)
        got = _logits(oe, od, ic.prepare_input(x, channels_last=channels_last))
        assert not any(isinstance(m, _BatchNorm) for m in list(oe.modules()) + list(od.modules()))
        assert any(isinstance(m, ic.FusedConv2d) for m in oe.modules())
        scale = ref.abs().max()
        assert (got - ref).abs().max() <= 2e-5 * scale
        assert torch.equal(got.argmax(1), ref.argmax(1))
    # the source modules are untouched
    assert any(isinstance(m, _BatchNorm) for m in enc.modules())
    assert torch.equal(_logits(enc, dec, x), ref)


def test_fuse_bn_keeps_unpaired_batchnorm_and_original():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), SynchronizedBatchNorm2d(4))
    net[2].running_mean.fill_(0.5)
    fused = ic.fuse_bn(net)
    assert isinstance(fused[2], _BatchNorm) and not fused.training
    assert net.training  # the input is not modified


# ------------------------------------------------------------------ conv post-op fusion

_U32 = 2.0 ** -24  # float32 unit roundoff
_UBF16 = 2.0 ** -8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation,groups,with_other", [
    ("relu", 1, False), ("relu6", 8, False), ("none", 1, True), ("relu", 1, True),
])
def test_fused_conv_equals_separate_ops(dtype, activation, groups, with_other):
    """Within the float32 error bound of the dot products on every CPU (oneDNN
    may sum in another order); bit-identical where this CPU's probe says so."""
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=groups, bias=True).to(dtype)
    x = torch.randn(1, 8, 13, 11, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last)
    other = torch.randn(1, 8, 13, 11, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last) if with_other else None
    fused = ic.FusedConv2d(conv, activation).to(memory_format=torch.channels_last)
    act = {"none": lambda t: t, "relu": F.relu, "relu6": lambda t: F.hardtanh(t, 0, 6)}[activation]
    with torch.inference_mode():
        got = fused(x, other)
        # float64 truth and the float32 error bound: (terms + 2) * u * sum of |products|
        w64, b64, x64 = conv.weight.double(), conv.bias.double(), x.double()
        truth = F.conv2d(x64, w64, b64, 1, 2, 2, groups)
        bound = F.conv2d(x64.abs(), w64.abs(), b64.abs(), 1, 2, 2, groups)
        if other is not None:
            truth, bound = truth + other.double(), bound + other.double().abs()
        terms = w64.shape[1] * w64.shape[2] * w64.shape[3] + 2
        tol = (terms * _U32) * bound
        if dtype == torch.bfloat16:
            # one or two roundings to bf16: of the result, and (where oneDNN has no bf16
            # convolution, as on AVX2-only CPUs) of the convolution before the add
            tol = tol + 2 * _UBF16 * bound
        assert ((got.double() - act(truth)).abs() <= tol + 1e-30).all()
        ref = act(conv(x) + (other if other is not None else 0))
        if dtype == torch.float32 and ic.fused_conv_exact():
            assert torch.equal(got, ref)
        # the fallback path (contiguous input) computes the same thing
        slow = fused(x.contiguous(), None if other is None else other.contiguous())
        torch.testing.assert_close(slow.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_fused_conv_exact_probe_is_consistent():
    """The probe's answer is what the fused path does on this CPU."""
    conv = nn.Conv2d(24, 32, 3, padding=1)
    x = torch.randn(1, 24, 19, 23).contiguous(memory_format=torch.channels_last)
    fused = ic.FusedConv2d(conv, "relu").to(memory_format=torch.channels_last)
    with torch.inference_mode():
        same = torch.equal(fused(x), F.relu(conv(x)))
    if ic.fused_conv_exact():
        assert same


def test_fused_conv_nchw_route_for_large_convolutions(monkeypatch):
    g = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=True)
    fused = ic.FusedConv2d(conv, "relu").to(memory_format=torch.channels_last)
    monkeypatch.setattr(ic.FusedConv2d, "nchw_min_k", 16 * 9)
    monkeypatch.setattr(ic.FusedConv2d, "nchw_min_pixels", 1)
    x = torch.randn(1, 16, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 8, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused._prefers_nchw(x)
        got = fused(x, other)
        ref = F.relu(conv(x.contiguous()) + other)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, ref)


def test_keep_fp32_class_layer_in_bf16_copy():
    _, dec = _model("resnet18dilated", "ppm_deepsup", 512)
    od = ic.optimize_for_inference(dec, dtype=torch.bfloat16)
    last = od.get_submodule("conv_last.4")
    assert isinstance(last, ic.KeepFloat32)
    assert last.module.weight.dtype == torch.float32
    assert od.get_submodule("conv_last.0").weight.dtype == torch.bfloat16


class _BatchNormThenReLU(nn.BatchNorm2d):
    """A BatchNorm that does more than normalise (as timm's BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


def test_batchnorm_subclasses_that_do_more_are_not_folded():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _BatchNormThenReLU(4),
                        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).eval()
    for m in net.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-1, 1)
    folded = ic.fuse_bn(net)
    assert type(folded[1]) is _BatchNormThenReLU and isinstance(folded[3], nn.Identity)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(folded(x), net(x), atol=1e-5)
