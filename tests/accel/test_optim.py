"""Training helpers (mit_semseg.optim) and the default training step: the same
updates as PyTorch's defaults up to float rounding."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import ModelBuilder
from mit_semseg.accel import channels_last_, fast_training_
from mit_semseg.training.optim import make_sgd


def test_make_sgd_implementations_agree():
    torch.manual_seed(0)
    base = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in base] for _ in range(3)]
    results = {}
    for impl in ("loop", "foreach", "fused", "auto"):
        params = [nn.Parameter(p.clone()) for p in base]
        opt = make_sgd([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                            lr=0.1, momentum=0.9, weight_decay=1e-4, impl=impl)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results[impl] = [p.detach() for p in params]
    for impl in ("foreach", "fused", "auto"):
        for a, b in zip(results[impl], results["loop"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("enc_arch,dec_arch,fc_dim", [
    ("resnet18dilated", "c1", 512),
    ("resnet18dilated", "ppm_deepsup", 512),
    ("mobilenetv2dilated", "c1_deepsup", 320),  # dilated depthwise convolutions
])
def test_fast_training_steps_match(enc_arch, dec_arch, fc_dim):
    """``fast_training_`` (channels-last, factorized pyramid, fast dilated
    depthwise backward) and fused SGD compute the training step of the default
    layout and optimizer: both are compared with the same step in float64
    (batch-2 BatchNorm on a 1x1 pooled branch makes float32 updates of some
    parameters accurate to ~1% only, whichever path)."""
    import copy
    from mit_semseg.models import SegmentationModule
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder(enc_arch, fc_dim, pretrained=False)
    dec = ModelBuilder.build_decoder(dec_arch, fc_dim, 5)
    batch = {"img_data": torch.randn(2, 3, 64, 64),
             "seg_label": torch.randint(-1, 5, (2, 8, 8))}
    start = [p.detach().double() for p in list(enc.parameters()) + list(dec.parameters())]

    def step(speedups: bool, dtype: torch.dtype):
        module = SegmentationModule(copy.deepcopy(enc), copy.deepcopy(dec),
                                    nn.NLLLoss(ignore_index=-1),
                                    0.4 if dec_arch.endswith("deepsup") else None)
        module.train().to(dtype)
        feed = dict(batch, img_data=batch["img_data"].to(dtype))
        if speedups:
            fast_training_(module)
            channels_last_(None, feed)
            assert feed["img_data"].is_contiguous(memory_format=torch.channels_last)
        opt = make_sgd(module.parameters(), lr=0.01, momentum=0.9,
                            impl="auto" if speedups else "loop")
        losses = []
        for i in range(2):
            torch.manual_seed(i)  # the same dropout masks
            opt.zero_grad(set_to_none=True)
            loss, _ = module(feed)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if i == 0:
                moved = [p.detach().double() - s for p, s in zip(module.parameters(), start)]
        return losses, moved

    exact_losses, exact_moves = step(False, torch.float64)
    plain_losses, plain_moves = step(False, torch.float32)
    fast_losses, fast_moves = step(True, torch.float32)
    for losses in (plain_losses, fast_losses):
        # a float32 forward through ~20 layers: a few units of rounding (6e-8) per layer,
        # more with ATen's scalar kernels (plain path 1.4e-6 there)
        assert abs(losses[0] - exact_losses[0]) <= 1e-5 * exact_losses[0]
    # after one update: no further from float64 than 0.1% (3% per parameter
    # tensor) or, where float32 itself strays more (MobileNetV2's 8x8 BatchNorm
    # maps), than 3x the plain float32 step
    plain_err = abs(plain_losses[1] - exact_losses[1])
    assert abs(fast_losses[1] - exact_losses[1]) <= max(1e-3 * exact_losses[1], 3 * plain_err)
    for got, plain, want in zip(fast_moves, plain_moves, exact_moves):
        assert (got - want).norm() <= max(0.03 * want.norm(), 3 * (plain - want).norm())


def test_fast_training_runs_relu6_out_of_place_with_the_same_bits():
    """In-place ReLU6 copies its input in training; out of place is the same step."""
    import copy
    from mit_semseg.models import SegmentationModule
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    dec = ModelBuilder.build_decoder("c1_deepsup", 320, 5)
    base = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1), 0.4).train()
    feed = {"img_data": torch.randn(2, 3, 48, 48), "seg_label": torch.randint(-1, 5, (2, 6, 6))}
    channels_last_(None, feed)
    results = []
    for restore_inplace in (True, False):
        module = fast_training_(copy.deepcopy(base))
        relu6 = [m for m in module.modules() if type(m) is nn.ReLU6]
        assert relu6 and not any(m.inplace for m in relu6)
        for m in relu6:
            m.inplace = restore_inplace
        torch.manual_seed(1)
        loss, _ = module(feed)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in module.parameters()]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
