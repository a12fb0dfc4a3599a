"""The fast CPU backward of dilated depthwise convolutions (models.depthwise):
the same forward bits, gradients equal to PyTorch's up to float rounding, and
a switch that touches only the layouts it handles."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import ModelBuilder
from mit_semseg.accel.depthwise import DilatedDepthwiseConv2d, use_fast_depthwise_

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(channels: int, dilation: int, bias: bool) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ref = nn.Conv2d(channels, channels, 3, 1, dilation, dilation, groups=channels, bias=bias)
    fast = copy.deepcopy(ref)
    assert use_fast_depthwise_(fast) == 1
    assert type(fast) is DilatedDepthwiseConv2d
    return ref, fast


def _grads(net: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().requires_grad_()
    y = net(x)
    return (y,) + torch.autograd.grad(y, (x,) + tuple(net.parameters()), upstream)


@pytest.mark.parametrize("channels,dilation,size,bias,channels_last", [
    (16, 2, (16, 16), False, True),
    (24, 4, (13, 18), True, False),   # sizes that are no multiple of the dilation
    (8, 3, (7, 5), True, True),       # the kernel reaches past the map
])
def test_gradients_equal_pytorch_up_to_rounding(channels, dilation, size, bias, channels_last):
    ref, fast = _pair(channels, dilation, bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, *size, generator=g)
    upstream = torch.randn(2, channels, *size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        ref.to(memory_format=torch.channels_last)
        fast.to(memory_format=torch.channels_last)
    want, got = _grads(ref, x, upstream), _grads(fast, x, upstream)
    assert torch.equal(got[0], want[0])  # the forward is PyTorch's own
    for a, b in zip(got[1:], want[1:]):
        assert a.shape == b.shape and a.dtype == b.dtype
        # float32 sums of at most N*H*W products: a few ulps of the largest term
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_bf16_autocast_gradients_stay_float32_and_accurate():
    ref, fast = _pair(32, 4, False)
    x = torch.randn(2, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    want = _grads(ref, x, torch.ones(2, 32, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xg = x.detach().requires_grad_()
        y = fast(xg)
        assert y.dtype == torch.bfloat16
        got = torch.autograd.grad(y.float().sum(), (xg, fast.weight))
    for a, b in zip(got, want[1:]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02 * b.abs().max().item())


def test_without_grad_it_is_plain_conv2d():
    ref, fast = _pair(8, 2, True)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(fast(x), ref(x))


def test_switch_touches_only_dilated_depthwise_layers_and_keeps_keys():
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    eligible = [m for m in convs if m.groups > 1 and m.dilation != (1, 1)]
    assert eligible  # the dilated stages of MobileNetV2
    assert use_fast_depthwise_(enc) == len(eligible)
    assert all(type(m) is DilatedDepthwiseConv2d for m in eligible)
    assert all(type(m) is nn.Conv2d for m in convs if m not in eligible)
    after = enc.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert use_fast_depthwise_(enc, enable=False) == len(eligible)
    assert all(type(m) is nn.Conv2d for m in convs)
    # ResNet's dilated convolutions are dense: nothing to switch
    assert use_fast_depthwise_(ModelBuilder.build_encoder("resnet18dilated", 512,
                                                          pretrained=False)) == 0


def test_inference_copy_of_a_switched_encoder_is_the_plain_one():
    """Validation during training builds the inference copy from the switched
    modules: their BatchNorms fold as before and the copy holds plain convolutions."""
    from mit_semseg.accel import optimize_for_inference
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False).eval()
    switched = copy.deepcopy(enc)
    assert use_fast_depthwise_(switched) > 0
    plain_copy = optimize_for_inference(enc)
    switched_copy = optimize_for_inference(switched)
    assert not any(isinstance(m, DilatedDepthwiseConv2d) for m in switched_copy.modules())
    assert [type(m) for m in switched_copy.modules()] == [type(m) for m in plain_copy.modules()]
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(switched_copy(x)[-1], plain_copy(x)[-1])
