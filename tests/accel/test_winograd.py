"""Winograd F(2x2, 3x3) convolution (models.winograd) and its use by the
inference copy: float32 accuracy against a float64 convolution on every CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.accel import fused as ic
from mit_semseg.accel.winograd import transform_weight, winograd_conv3x3, winograd_eligible

_U32 = 2.0 ** -24  # float32 unit roundoff


def _case(cin, cout, h, w, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g)
    other = torch.randn(n, cout, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    return x, weight, bias, other


def _bound(x, weight, bias, d, other=None):
    """Float32 error bound of the direct convolution's dot products, times 4:
    the transforms add at most 4 (input) and 3 (output) terms with coefficients
    0, +-1/2, +-1 (the kernel transform is rounded once from float64)."""
    terms = weight.shape[1] * 9 + 2
    mag = F.conv2d(x.double().abs(), weight.double().abs(), bias.double().abs(), 1, d, d)
    if other is not None:
        mag = mag + other.double().abs()
    return 4 * terms * _U32 * mag


@pytest.mark.parametrize("h,w,d,n", [(13, 11, 1, 1), (16, 16, 2, 2), (17, 9, 3, 1), (7, 20, 4, 1)])
@pytest.mark.parametrize("activation,with_other", [("none", False), ("relu", True), ("relu6", False)])
def test_equals_direct_convolution_to_float32_rounding(h, w, d, n, activation, with_other):
    x, weight, bias, other = _case(24, 40, h, w, n, seed=h * w + d)
    other = other if with_other else None
    act = {"none": lambda t: t, "relu": F.relu, "relu6": lambda t: F.hardtanh(t, 0, 6)}[activation]
    with torch.inference_mode():
        got = winograd_conv3x3(x, transform_weight(weight), bias, d, other, activation)
        truth = F.conv2d(x.double(), weight.double(), bias.double(), 1, d, d)
        if other is not None:
            truth = truth + other.double()
    assert got.shape == (n, 40, h, w) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    err = (got.double() - act(truth)).abs()
    assert (err <= _bound(x, weight, bias, d, other)).all()
    # and as accurate as a float32 direct convolution in practice
    direct = F.conv2d(x, weight, bias, 1, d, d) + (other if other is not None else 0)
    assert err.max() <= 4 * (direct.double() - truth).abs().max() + 1e-6


def test_bands_give_the_same_result_as_one_piece():
    x, weight, bias, _ = _case(32, 16, 37, 29, seed=4)
    u = transform_weight(weight)
    with torch.inference_mode():
        whole = winograd_conv3x3(x, u, bias, 2, band_bytes=1 << 40)
        banded = winograd_conv3x3(x, u, bias, 2, band_bytes=1)  # one tile row per band
    torch.testing.assert_close(banded, whole, rtol=0, atol=4 * _U32 * whole.abs().max().item())


def test_input_layout_does_not_matter():
    x, weight, bias, _ = _case(8, 8, 10, 12, seed=5)
    u = transform_weight(weight)
    with torch.inference_mode():
        assert torch.equal(winograd_conv3x3(x, u, bias), winograd_conv3x3(x.contiguous(), u, bias))


def test_refuses_what_it_does_not_compute():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    assert winograd_eligible(conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)
    for kwargs in (dict(stride=2, padding=1), dict(padding=2), dict(padding=1, groups=2),
                   dict(padding=(1, 2), dilation=(1, 2))):
        c = nn.Conv2d(8, 8, 3, **kwargs)
        assert not winograd_eligible(c.weight, c.stride, c.padding, c.dilation, c.groups)
    c = nn.Conv2d(8, 8, 1)
    assert not winograd_eligible(c.weight, c.stride, c.padding, c.dilation, c.groups)
    with pytest.raises(ValueError, match="3, 3"):
        transform_weight(c.weight)
    with pytest.raises(ValueError, match="does not take 4 channels"):
        winograd_conv3x3(torch.zeros(1, 4, 5, 5), transform_weight(conv.weight))


def test_fused_conv_routes_wide_convolutions_through_winograd(monkeypatch):
    """FusedConv2d takes the Winograd path from winograd_min_channels (harmonic mean
    of the channel counts) up, and only
    for float32 without autograd; 0 switches it off."""
    calls = []
    real = ic.winograd_conv3x3
    monkeypatch.setattr(ic, "winograd_conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = nn.Conv2d(16, 24, 3, padding=2, dilation=2)
    fused = ic.FusedConv2d(conv, "relu").to(memory_format=torch.channels_last)
    x, _, _, other = _case(16, 24, 11, 13, seed=6)
    with torch.inference_mode():
        ref = F.relu(conv(x) + other)
        monkeypatch.setattr(ic.FusedConv2d, "winograd_min_channels", 32)
        fused(x, other)
        assert calls == []  # 16 in, 24 out: harmonic mean 19.2, below the threshold
        monkeypatch.setattr(ic.FusedConv2d, "winograd_min_channels", 16)
        got = fused(x, other)
        assert calls == [1]
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert ((got.double() - ref.double()).abs() <= 1e-5 * ref.abs().max()).all()
        fused.to(torch.bfloat16)(x.bfloat16(), other.bfloat16())
        assert calls == [1]  # bf16 keeps oneDNN
    fused.float()
    monkeypatch.setattr(ic.FusedConv2d, "winograd_min_channels", 0)
    with torch.inference_mode():
        fused(x, other)
    assert calls == [1]
