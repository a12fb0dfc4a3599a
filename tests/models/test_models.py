"""One template over every encoder/decoder pair, plus the builder's contracts."""
import copy
import glob
import os
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _support import ROOT, load_case, parity_names, rule_state_dict
from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.models import DECODERS, ENCODERS, ModelBuilder, SegmentationModule, WeightsError

PAIRS = [tuple(n.split("+")) for n in parity_names()]
FC_DIM = {"mobilenetv2dilated": 320, "resnet18": 512, "resnet18dilated": 512, "hrnetv2": 720}


def _fc_dim(enc: str) -> int:
    return FC_DIM.get(enc, 2048)


@pytest.mark.parametrize("enc_arch,dec_arch", PAIRS)
def test_train_step_every_pair(enc_arch, dec_arch):
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder(enc_arch, _fc_dim(enc_arch), pretrained=False)
    dec = ModelBuilder.build_decoder(dec_arch, _fc_dim(enc_arch), num_class=5)
    deep_sup = 0.4 if dec_arch.endswith("deepsup") else None
    module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1), deep_sup).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = dec(enc(x, return_feature_maps=True))
    out = out[0] if isinstance(out, tuple) else out
    label = torch.randint(-1, 5, (2,) + tuple(out.shape[2:]))
    loss, acc = module({"img_data": x, "seg_label": label})
    loss.backward()
    assert torch.isfinite(loss) and 0 <= acc.item() <= 1
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # inference contract: probabilities at segSize
    module.eval()
    dec.use_softmax = True
    with torch.no_grad():
        probs = module({"img_data": x[:1]}, segSize=(64, 64))
    assert probs.shape == (1, 5, 64, 64)
    assert torch.allclose(probs.sum(1), torch.ones(1, 64, 64), atol=1e-4)


# the original's families (ENCODERS also holds the newer ones: SegFormer's MiT has
# no BatchNorm, DINOv2 needs timm; tests/models/test_segformer.py, test_dinov2.py)
ORIGINAL_ENCODERS = {"mobilenetv2dilated", "resnet18", "resnet18dilated", "resnet50",
                     "resnet50dilated", "resnet101", "resnet101dilated", "resnext101", "hrnetv2"}
ORIGINAL_DECODERS = {"c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet_lite", "upernet"}


def test_every_batchnorm_is_synchronized():
    for arch in sorted(ORIGINAL_ENCODERS):
        net = ModelBuilder.build_encoder(arch, pretrained=False)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(isinstance(m, SynchronizedBatchNorm2d) for m in bns), arch
        expected = 0.1 if arch == "hrnetv2" else 0.001
        assert {m.momentum for m in bns} == {expected}, arch


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown encoder 'resnet5'; expected one of \[.*resnet50dilated"):
        ModelBuilder.build_encoder(arch="resnet5")
    with pytest.raises(ValueError, match=r"Unknown decoder 'ppm2'; expected one of \[.*upernet_lite"):
        ModelBuilder.build_decoder(arch="ppm2")


def test_names_are_case_insensitive():
    assert isinstance(ModelBuilder.build_decoder("C1_DeepSup", fc_dim=64, num_class=3), nn.Module)


def test_class_count_mismatch_names_the_class_layer(tmp_path):
    path = tmp_path / "decoder_epoch_20.pth"
    torch.save(ModelBuilder.build_decoder("ppm_deepsup", 2048, num_class=150).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        ModelBuilder.build_decoder("ppm_deepsup", 2048, num_class=19, weights=str(path))
    msg = str(err.value)
    assert "conv_last.4" in msg and "150" in msg and "num_class=19" in msg
    assert "DATASET.num_class" in msg and "reinit_classifier" in msg


def test_reinit_classifier_loads_everything_else(tmp_path, capsys):
    path = tmp_path / "dec.pth"
    src = ModelBuilder.build_decoder("c1_deepsup", 64, num_class=150)
    torch.save(src.state_dict(), path)
    dec = ModelBuilder.build_decoder("c1_deepsup", 64, num_class=7, weights=str(path),
                                     reinit_classifier=True)
    assert dec.conv_last.weight.shape[0] == 7
    assert torch.equal(dec.cbr[0].weight, src.cbr[0].weight)
    assert torch.equal(dec.cbr_deepsup[1].running_var, src.cbr_deepsup[1].running_var)
    assert "conv_last_deepsup" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_encoder_weights_load_strictly(tmp_path, damage):
    state = ModelBuilder.build_encoder("resnet18", pretrained=False).state_dict()
    if damage == "missing":
        del state["layer2.0.bn1.running_mean"]
        key = "layer2.0.bn1.running_mean"
    elif damage == "unexpected":
        state["layer9.weight"] = torch.zeros(1)
        key = "layer9.weight"
    else:
        state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
        key = "conv1.weight"
    path = tmp_path / "encoder_epoch_1.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=damage if damage != "shape" else "wrong shapes") as err:
        ModelBuilder.build_encoder("resnet18", weights=str(path))
    assert key in str(err.value) and str(path) in str(err.value)


def test_corrupt_or_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        ModelBuilder.build_encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="bad.pth is damaged"):
        ModelBuilder.build_encoder("resnet18", weights=str(bad))


def test_loading_is_safe_and_unwraps_module_prefix(tmp_path):
    state = ModelBuilder.build_decoder("c1", 64, num_class=3).state_dict()
    path = tmp_path / "dec.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    dec = ModelBuilder.build_decoder("c1", 64, num_class=3, weights=str(path))
    assert torch.equal(dec.conv_last.weight, state["conv_last.weight"])
    evil = tmp_path / "evil.pth"
    torch.save({"x": object()}, evil)  # not loadable with weights_only=True
    with pytest.raises(WeightsError):
        ModelBuilder.build_decoder("c1", 64, num_class=3, weights=str(evil))


def test_pretrained_offline_error_names_url_and_path(tmp_path, monkeypatch):
    def offline(request, timeout):
        raise urllib.error.URLError(OSError("network is unreachable"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("MIT_SEMSEG_MIRRORS", raising=False)
    with pytest.raises(WeightsError) as err:
        ModelBuilder.build_encoder("resnet18", model_dir=str(tmp_path))
    msg = str(err.value)
    assert "resnet18-imagenet.pth" in msg and "http" in msg
    assert str(tmp_path / "resnet18-imagenet.pth") in msg and "MODEL.pretrained" in msg


def test_pretrained_weights_load_from_cache(tmp_path, monkeypatch):
    # An ImageNet file as 2018 wrote it: classifier included, no SyncBN bookkeeping buffers.
    from mit_semseg.models import resnet
    imagenet = resnet.resnet18(pretrained=False)
    state = {k: v for k, v in imagenet.state_dict().items()
             if not k.endswith(("_tmp_running_mean", "_tmp_running_var", "_running_iter",
                                "num_batches_tracked"))}
    torch.save(state, tmp_path / "resnet18-imagenet.pth")
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda *a, **k: pytest.fail("must not download when cached"))
    enc = ModelBuilder.build_encoder("resnet18", model_dir=str(tmp_path))
    assert torch.equal(enc.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_bn_momentum_switch():
    enc = ModelBuilder.build_encoder("resnet18", pretrained=False, bn_momentum=0.1)
    assert {m.momentum for m in enc.modules() if isinstance(m, SynchronizedBatchNorm2d)} == {0.1}


def test_decoder_init_as_original():
    dec = ModelBuilder.build_decoder("upernet_lite", 2048, num_class=10)
    bn = dec.ppm_last_conv[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 1e-4)
    w = dec.ppm_last_conv[0].weight
    fan_in = w[0].numel()
    assert abs(w.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5


def test_registries_cover_the_documented_archs():
    assert ORIGINAL_ENCODERS <= set(ENCODERS)
    assert ORIGINAL_DECODERS <= set(DECODERS)
    assert {f"mit_b{k}" for k in range(6)} <= set(ENCODERS)
    assert {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"} <= set(ENCODERS)
    assert {"segformer_head", "segformer_head_768", "linear", "dinov2_linear"} <= set(DECODERS)


# ----------------------------------------------------------------------------- factorized pyramid

def _ppm_pair(channels_last: bool):
    torch.manual_seed(0)
    plain = ModelBuilder.build_decoder("ppm_deepsup", fc_dim=64, num_class=5).train()
    for m in plain.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    factorized = copy.deepcopy(plain)
    factorized.factorized_pyramid = True
    if channels_last:
        plain.to(memory_format=torch.channels_last)
        factorized.to(memory_format=torch.channels_last)
    return plain, factorized


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(9, 13), (4, 5), (1, 1)])
def test_factorized_pyramid_equals_resize_and_concatenate(channels_last, size):
    """Same outputs, same gradients, same random stream (Dropout2d) in training;
    maps smaller than the 6x6 branch (resize shrinks) included."""
    plain, factorized = _ppm_pair(channels_last)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 32, *size, generator=g), torch.randn(2, 64, *size, generator=g)]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    outs = []
    for net in (plain, factorized):
        torch.manual_seed(7)
        main, aux = net(feats)
        ((main.exp() * torch.arange(5.0).view(1, 5, 1, 1)).sum() + aux.exp()[:, 1].sum()).backward()
        outs.append((main.detach(), aux.detach(), [p.grad.clone() for p in net.parameters()]))
    (m0, a0, g0), (m1, a1, g1) = outs
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-5)
    assert torch.equal(a1, a0)
    # A 1x1 map through batch-2 BatchNorm (two values per channel, normalised to
    # -1 and +1, whose gradients cancel) amplifies float32 rounding about tenfold
    # (7.9e-4 relative with ATen's scalar kernels).
    rtol, atol = (1e-3, 1e-4) if size == (1, 1) else (1e-4, 1e-5)
    for p, q in zip(g1, g0):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol * q.abs().max().item())
    # running statistics are updated identically
    for p, q in zip(factorized.buffers(), plain.buffers()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_upernet_fusion_equals_resize_and_concatenate(channels_last):
    from mit_semseg.models.decoders import UPerNet
    torch.manual_seed(0)
    plain = UPerNet(num_class=5, fc_dim=64, fpn_inplanes=(16, 24, 32, 64), fpn_dim=16).train()
    factorized = copy.deepcopy(plain)
    factorized.factorized_pyramid = True
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, c, h, w, generator=g)
             for c, (h, w) in zip((16, 24, 32, 64), ((17, 22), (9, 11), (5, 6), (3, 3)))]
    if channels_last:
        for net in (plain, factorized):
            net.to(memory_format=torch.channels_last)
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    outs = []
    for net in (plain, factorized):
        y = net(feats)
        (y.exp() * torch.arange(5.0).view(1, 5, 1, 1)).sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    (y0, g0), (y1, g1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for p, q in zip(g1, g0):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5 * q.abs().max().item())


def test_pyramid_term_with_padding_and_dilation():
    """The general case: any kernel, zero padding and dilation, stride 1."""
    from mit_semseg.models.decoders import _resize, pyramid_term
    g = torch.Generator().manual_seed(2)
    branches = [torch.randn(2, 3, s, s + 1, generator=g) for s in (1, 2, 5)]
    weight = torch.randn(4, 9, 3, 5, generator=g)
    size = (7, 8)
    resized = torch.cat([_resize(b, size) for b in branches], 1)
    want = F.conv2d(resized, weight, padding=(2, 1), dilation=(2, 1))
    for channels_last in (False, True):
        got = pyramid_term(branches, weight, size, (2, 1), (2, 1), channels_last)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    with pytest.raises(ValueError, match="channels"):
        pyramid_term(branches[:2], weight, size, (2, 1), (2, 1))


ORIGINAL_PRESETS = ("hrnetv2", "mobilenetv2dilated-c1_deepsup", "resnet101-upernet",
                    "resnet101dilated-ppm_deepsup", "resnet18dilated-ppm_deepsup",
                    "resnet50-upernet", "resnet50dilated-ppm_deepsup")


@pytest.mark.parametrize("preset", [os.path.join(ROOT, "config", f"ade20k-{name}.yaml")
                                    for name in ORIGINAL_PRESETS],
                         ids=lambda p: os.path.basename(p)[7:-5])
def test_build_model_makes_every_preset_as_the_model_builder_does(preset):
    """``build_model`` (the one config -> network function) gives the original's
    modules for every preset MIT released: same classes, keys and shapes as
    ``ModelBuilder`` with the preset's fc_dim."""
    from mit_semseg.config import load_cfg
    from mit_semseg.models import build_model
    cfg = load_cfg(preset)
    net = build_model(cfg)
    m = cfg.MODEL
    enc = ModelBuilder.build_encoder(m.arch_encoder, m.fc_dim, pretrained=False)
    dec = ModelBuilder.build_decoder(m.arch_decoder, m.fc_dim, cfg.DATASET.num_class)
    for mine, theirs in ((net.encoder, enc), (net.decoder, dec)):
        assert type(mine) is type(theirs)
        assert {k: v.shape for k, v in mine.state_dict().items()} == \
            {k: v.shape for k, v in theirs.state_dict().items()}
