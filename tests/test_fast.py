"""Speedups in mit_semseg.fast give the predictions of the straightforward code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg import fast
from mit_semseg.inference import InferenceEngine, fuse_banded, fuse_full
from mit_semseg.lib.nn import SynchronizedBatchNorm2d
from mit_semseg.models import ModelBuilder

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
    fused = fast.fold_conv_bn(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enc_arch,dec_arch,fc_dim", PAIRS)
def test_optimized_model_gives_the_same_labels(enc_arch, dec_arch, fc_dim):
    enc, dec = _model(enc_arch, dec_arch, fc_dim)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    ref = _logits(enc, dec, x)
    for channels_last in ((True, False) if enc_arch.startswith("mobilenet") else (True,)):
        oe = fast.optimize_for_inference(enc, channels_last=channels_last)
        od = fast.optimize_for_inference(dec, channels_last=channels_last)
        got = _logits(oe, od, fast.prepare_input(x, channels_last=channels_last))
        assert not any(isinstance(m, _BatchNorm) for m in list(oe.modules()) + list(od.modules()))
        assert any(isinstance(m, fast.FusedConv2d) for m in oe.modules())
        scale = ref.abs().max()
        assert (got - ref).abs().max() <= 2e-5 * scale
        assert torch.equal(got.argmax(1), ref.argmax(1))
    # the source modules are untouched
    assert any(isinstance(m, _BatchNorm) for m in enc.modules())
    assert torch.equal(_logits(enc, dec, x), ref)


def test_fuse_bn_keeps_unpaired_batchnorm_and_original():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), SynchronizedBatchNorm2d(4))
    net[2].running_mean.fill_(0.5)
    fused = fast.fuse_bn(net)
    assert isinstance(fused[2], _BatchNorm) and not fused.training
    assert net.training  # the input is not modified


# ------------------------------------------------------------------ conv post-op fusion

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation,groups,with_other", [
    ("relu", 1, False), ("relu6", 8, False), ("none", 1, True), ("relu", 1, True),
])
def test_fused_conv_equals_separate_ops(dtype, activation, groups, with_other):
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=groups, bias=True).to(dtype)
    x = torch.randn(1, 8, 13, 11, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last)
    other = torch.randn(1, 8, 13, 11, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last) if with_other else None
    fused = fast.FusedConv2d(conv, activation).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = conv(x)
        if other is not None:
            ref = ref + other
        ref = {"none": ref, "relu": F.relu(ref), "relu6": F.hardtanh(ref, 0, 6)}[activation]
        got = fused(x, other)
        if dtype == torch.float32 or other is None:
            assert torch.equal(got, ref)
        else:  # bf16: the fused add rounds once instead of twice
            exact = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), 1, 2, 2, groups)
            exact = exact + other.float()
            exact = exact if activation == "none" else F.relu(exact)
            assert torch.equal(got, exact.to(dtype))
        # the fallback path (contiguous input) computes the same thing
        slow = fused(x.contiguous(), None if other is None else other.contiguous())
        torch.testing.assert_close(slow.float(), ref.float(), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ fusion kernel

@pytest.mark.parametrize("seed", range(6))
def test_fast_banded_fusion_is_bit_identical(seed):
    rng = np.random.default_rng(seed)
    num_class = int(rng.integers(4, 40))
    out = (int(rng.integers(20, 90)), int(rng.integers(60, 170)))
    n = int(rng.integers(1, 4))
    logits = [torch.randn(1, num_class, int(rng.integers(3, 30)), int(rng.integers(3, 30)),
                          generator=torch.Generator().manual_seed(seed * 10 + k)) * 4
              for k in range(n)]
    band_rows = int(rng.integers(1, 9))
    ref = fuse_full(logits, out, return_probs=True)
    got = fast.fuse_banded_fast(logits, out, return_probs=True,
                                band_bytes=band_rows * num_class * out[1] * 4)
    assert np.array_equal(got.labels, ref.labels)
    assert torch.equal(got.probs, ref.probs)
    # without probabilities, and against the engine's own banded kernel
    assert np.array_equal(fast.fuse_banded_fast(logits, out, band_bytes=4096).labels, ref.labels)
    assert np.array_equal(fuse_banded(logits, out, band_bytes=4096).labels, ref.labels)


def test_single_scale_argmax_without_softmax_gives_the_same_labels():
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        logits = [torch.randn(1, 30, 11, 13, generator=g) * 5]
        ref = fuse_full(logits, (57, 70)).labels
        got = fast.fuse_banded_fast(logits, (57, 70), band_bytes=30 * 70 * 4 * 6, softmax=False)
        assert np.array_equal(got.labels, ref)


def test_fast_banded_fusion_reuses_buffers():
    logits = [torch.randn(1, 20, 12, 16) * 3]
    fast.release_workspace()
    fast.fuse_banded_fast(logits, (96, 128), band_bytes=20 * 128 * 4 * 4)
    first = {k: v.data_ptr() for k, v in fast._workspace.buffers.items()}
    fast.fuse_banded_fast(logits, (96, 128), band_bytes=20 * 128 * 4 * 4)
    assert first and {k: v.data_ptr() for k, v in fast._workspace.buffers.items()} == first


def test_fast_banded_fusion_in_and_outside_inference_mode():
    logits = [torch.randn(1, 12, 10, 14) * 3]
    fast.release_workspace()
    with torch.inference_mode():
        first = fast.fuse_banded_fast(logits, (40, 130), band_bytes=12 * 130 * 4 * 3).labels
    second = fast.fuse_banded_fast(logits, (40, 130), band_bytes=12 * 130 * 4 * 3).labels
    assert np.array_equal(first, second)


def test_fast_banding_self_check_passes_on_cpu():
    assert fast._fast_banding_verified(torch.device("cpu"), 150)


# ------------------------------------------------------------------ engine

def _images(sizes=((64, 80), (80, 104), (96, 120))):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(1, 3, h, w, generator=g) for h, w in sizes]


@pytest.mark.parametrize("pair,flip", [(("mobilenetv2dilated", "c1_deepsup", 320), False),
                                       (("mobilenetv2dilated", "c1_deepsup", 320), True),
                                       (("resnet18dilated", "ppm_deepsup", 512), False)])
def test_fast_engine_equals_engine(pair, flip):
    """Multi-scale through both engines (the PPM head factorized in the fast one)."""
    enc, dec = _model(*pair)
    imgs = _images()
    plain = InferenceEngine(enc, dec, device="cpu", flip=flip, band_bytes=0)
    quick = fast.FastInferenceEngine(enc, dec, device="cpu", flip=flip,
                                     band_bytes=150 * 90 * 4 * 5)
    ref = plain.predict(imgs, (70, 90), return_probs=True)
    got = quick.predict(imgs, (70, 90), return_probs=True)
    assert np.array_equal(got.labels, ref.labels)
    torch.testing.assert_close(got.probs, ref.probs, rtol=0, atol=1e-4)
    # fusion alone is bit-identical
    logits = quick.scale_logits(imgs)
    assert torch.equal(quick.fuse(logits, (70, 90), True).probs,
                       plain.fuse(logits, (70, 90), True).probs)


def test_fast_engine_bf16_mostly_agrees():
    enc, dec = _model("resnet18dilated", "ppm_deepsup", 512)
    imgs = _images()
    ref = InferenceEngine(enc, dec, device="cpu").predict(imgs, (72, 90)).labels
    got = fast.FastInferenceEngine(enc, dec, device="cpu", precision="bf16").predict(
        imgs, (72, 90)).labels
    assert got.shape == ref.shape
    assert (got == ref).mean() > 0.9


def test_keep_fp32_class_layer_in_bf16_copy():
    _, dec = _model("resnet18dilated", "ppm_deepsup", 512)
    od = fast.optimize_for_inference(dec, dtype=torch.bfloat16)
    last = od.get_submodule("conv_last.4")
    assert isinstance(last, fast.KeepFloat32)
    assert last.module.weight.dtype == torch.float32
    assert od.get_submodule("conv_last.0").weight.dtype == torch.bfloat16


# ------------------------------------------------------------------ training helpers

def test_make_sgd_implementations_agree():
    torch.manual_seed(0)
    base = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in base] for _ in range(3)]
    results = {}
    for impl in ("loop", "foreach", "fused", "auto"):
        params = [nn.Parameter(p.clone()) for p in base]
        opt = fast.make_sgd([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                            lr=0.1, momentum=0.9, weight_decay=1e-4, impl=impl)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results[impl] = [p.detach() for p in params]
    for impl in ("foreach", "fused", "auto"):
        for a, b in zip(results[impl], results["loop"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dec_arch", ["c1", "ppm_deepsup"])
def test_fast_training_steps_match(dec_arch):
    """Channels-last, the factorized pyramid (PPM) and fused SGD compute the
    training step of the default layout and optimizer: both are compared with
    the same step in float64 (batch-2 BatchNorm on a 1x1 pooled branch makes
    float32 updates of some parameters accurate to ~1% only, whichever path)."""
    import copy
    from mit_semseg.models import SegmentationModule
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False)
    dec = ModelBuilder.build_decoder(dec_arch, 512, 5)
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
            fast.channels_last_(module, feed)
            fast.factorize_pyramids_(module)
            assert feed["img_data"].is_contiguous(memory_format=torch.channels_last)
        opt = fast.make_sgd(module.parameters(), lr=0.01, momentum=0.9,
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
    for speedups in (False, True):
        losses, moves = step(speedups, torch.float32)
        assert abs(losses[0] - exact_losses[0]) <= 1e-6 * exact_losses[0]
        assert abs(losses[1] - exact_losses[1]) <= 1e-3 * exact_losses[1]
        for got, want in zip(moves, exact_moves):
            assert (got - want).norm() <= 0.03 * want.norm()


# ------------------------------------------------------------------ metrics

def _confusion_reference(pred, label, k):
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    keep = label >= 0
    return np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_confusion_counts_equal_masked_bincount(as_tensor):
    rng = np.random.default_rng(0)
    k = 13
    label = rng.integers(-1, k, (37, 41))
    pred = rng.integers(0, k, (37, 41)).astype(np.uint8)
    args = (torch.from_numpy(pred), torch.from_numpy(label)) if as_tensor else (pred, label)
    got = fast.confusion_counts(*args, k)
    assert got.dtype == np.int64 and np.array_equal(got, _confusion_reference(pred, label, k))


def test_confusion_counts_declines_what_it_cannot_count():
    k = 5
    label = np.array([[0, 1], [-1, 4]])
    pred = np.array([[0, 1], [2, 3]])
    assert fast.confusion_counts(pred, np.array([[0, 1], [-2, 4]]), k) is None  # label < -1
    assert fast.confusion_counts(pred, np.array([[0, 1], [5, 4]]), k) is None   # label >= k
    assert fast.confusion_counts(np.array([[0, 1], [7, 3]]), label, k) is None  # pred >= k
    assert fast.confusion_counts(pred.astype(float), label, k) is None
    frozen = pred.copy()
    frozen.flags.writeable = False
    assert fast.confusion_counts(frozen, label, k) is None


def test_segmentation_metrics_fast_and_slow_paths_agree():
    from mit_semseg.metrics import SegmentationMetrics
    rng = np.random.default_rng(1)
    k = 9
    a, b = SegmentationMetrics(k), SegmentationMetrics(k)
    for _ in range(3):
        label = rng.integers(-1, k, (20, 30))
        pred = rng.integers(0, k, (20, 30))
        a.update(pred, label)
        # predictions outside the range on unlabeled pixels: the fast path declines
        pred_odd = pred.copy()
        pred_odd[label < 0] = k + 3
        b.update(pred_odd, label)
    assert np.array_equal(a.confusion, b.confusion) and a.num_images == b.num_images == 3
    with pytest.raises(ValueError):
        a.update(np.full((2, 2), k), np.zeros((2, 2), dtype=int))


def test_fused_conv_nchw_route_for_large_convolutions(monkeypatch):
    g = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=True)
    fused = fast.FusedConv2d(conv, "relu").to(memory_format=torch.channels_last)
    monkeypatch.setattr(fast.FusedConv2d, "nchw_min_k", 16 * 9)
    monkeypatch.setattr(fast.FusedConv2d, "nchw_min_pixels", 1)
    x = torch.randn(1, 16, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 8, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused._prefers_nchw(x)
        got = fused(x, other)
        ref = F.relu(conv(x.contiguous()) + other)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, ref)
