"""timm: encoders (mit_semseg/models/timm_encoder.py): names, levels and channels from
timm's feature info, equality with timm's own model, any input size, options,
ImageNet weights from a local file or the (offline) Hugging Face cache, errors.

Tiny models, random weights, nothing downloaded; skipped without timm except the
tests that check what happens without it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mit_semseg.config import load_cfg
from mit_semseg.errors import InputNotFoundError, MitSemsegError
from mit_semseg.models import UnknownArchError, build_model, network_from_archs
from mit_semseg.models.network import build_encoder
from mit_semseg.models.timm_encoder import (TimmError, TimmNotInstalledError,
                                            UnknownTimmModelError, build_timm_encoder,
                                            import_timm)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _timm import CONVNEXT, SWIN, SWIN_TINY, option_overrides  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm():
    try:
        return import_timm()
    except TimmNotInstalledError as exc:
        pytest.skip(f"timm not usable here: {exc}")


# ------------------------------------------------------------------ without timm


def test_importing_the_models_does_not_import_timm():
    code = ("import sys, mit_semseg.models as m; m.build_model; "
            "from mit_semseg.models.registry import encoder_factory; encoder_factory('timm:x'); "
            "print('timm' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_missing_timm_is_one_line_saying_the_install_order(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ModuleNotFoundError
    with pytest.raises(TimmNotInstalledError) as err:
        build_encoder("timm:convnext_atto")
    msg = str(err.value)
    assert isinstance(err.value, MitSemsegError) and "\n" not in msg
    assert "torchvision" in msg and 'pip install -e ".[timm]"' in msg and "replaces your torch" in msg


def test_encoder_options_can_be_added_on_the_command_line():
    cfg = load_cfg(None, ["MODEL.encoder_options.drop_path_rate", "0.2",
                          "MODEL.encoder_options.out_indices", "[1, 3]"])
    assert cfg.MODEL.encoder_options.drop_path_rate == 0.2
    assert list(cfg.MODEL.encoder_options.out_indices) == [1, 3]
    with pytest.raises(MitSemsegError, match="MODEL.not_a_key"):
        load_cfg(None, ["MODEL.not_a_key", "1"])
    assert dict(load_cfg(None, []).MODEL.encoder_options) == {}


# ------------------------------------------------------------------ with timm


@pytest.mark.timm
def test_levels_and_channels_come_from_the_feature_info():
    _timm()
    enc = build_encoder(CONVNEXT)
    assert enc.out_channels == (40, 80, 160, 320) and enc.reductions == (4, 8, 16, 32)
    assert enc.size_divisor == 32
    # a ResNet reports five levels (stride 2 first): the last four are kept
    res = build_encoder("timm:resnet18")
    assert res.reductions == (4, 8, 16, 32) and res.out_channels == (64, 128, 256, 512)
    # explicit levels
    two = build_encoder(CONVNEXT, options={"out_indices": [1, 3]})
    assert two.out_channels == (80, 320) and two.reductions == (8, 32)
    x = torch.randn(1, 3, 64, 64)
    assert [f.shape[1] for f in two(x, return_feature_maps=True)] == [80, 320]
    assert len(enc(x)) == 1 and enc(x)[0].shape == (1, 320, 2, 2)


@pytest.mark.timm
@pytest.mark.parametrize("decoder", ["c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet_lite"])
def test_every_decoder_takes_its_channels_from_the_encoder(decoder):
    _timm()
    # fc_dim is wrong on purpose: the encoder's out_channels decide
    net = network_from_archs(CONVNEXT, decoder, num_class=5, fc_dim=7).eval()
    with torch.no_grad():
        scores = net(torch.randn(1, 3, 64, 96))
    stride = 4 if decoder.startswith("upernet") else 32
    assert scores.shape == (1, 5, 64 // stride, 96 // stride)


@pytest.mark.timm
@pytest.mark.parametrize("arch,options", [(CONVNEXT, {}), (SWIN, SWIN_TINY)])
def test_feature_maps_equal_timms_own_model(arch, options):
    timm = _timm()
    torch.manual_seed(0)
    enc = build_encoder(arch, options=options).eval()
    name = arch.split(":", 1)[1]
    extra = {"strict_img_size": False} if "swin" in name else {}  # any size, every 1.0 timm
    ref = timm.create_model(name, features_only=True, **options, **extra).eval()
    ref.load_state_dict(enc.body.state_dict())
    x = torch.randn(2, 3, 64, 96)  # sides multiples of the stride: no padding
    with torch.no_grad():
        ours = enc(x, return_feature_maps=True)
        theirs = [f.permute(0, 3, 1, 2) if "swin" in name else f for f in ref(x)]
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.timm
@pytest.mark.parametrize("arch,options", [(CONVNEXT, {}), (SWIN, SWIN_TINY)])
def test_any_input_size_pads_and_crops_back(arch, options):
    _timm()
    torch.manual_seed(0)
    enc = build_encoder(arch, options=options).eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        maps = enc(x, return_feature_maps=True)
        # the same as running the zero-padded input and cropping
        padded = torch.nn.functional.pad(x, (0, 96 - 93, 0, 96 - 67))
        full = enc(padded, return_feature_maps=True)
    for f, g, r in zip(maps, full, (4, 8, 16, 32)):
        h, w = -(-67 // r), -(-93 // r)
        assert f.shape[2:] == (h, w)
        assert torch.equal(f, g[:, :, :h, :w])


@pytest.mark.timm
def test_options_reach_timm_and_wrong_ones_name_the_key():
    _timm()
    from timm.layers import DropPath
    enc = build_encoder(CONVNEXT, options={"drop_path_rate": 0.3})
    rates = [m.drop_prob for m in enc.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.3)
    assert not [m for m in build_encoder(CONVNEXT).modules() if isinstance(m, DropPath)]
    normed = build_encoder(CONVNEXT, options={"feature_norm": True})
    assert [k for k in normed.state_dict() if k.startswith("norms.")] == [
        f"norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    with pytest.raises(TimmError, match="MODEL.encoder_options.not_an_arg") as err:
        build_encoder(CONVNEXT, options={"not_an_arg": 1})
    assert "\n" not in str(err.value)


@pytest.mark.timm
def test_unknown_names_list_close_ones():
    _timm()
    with pytest.raises(UnknownTimmModelError) as err:
        build_encoder("timm:convnext_tinny")
    msg = str(err.value)
    assert isinstance(err.value, UnknownArchError) and isinstance(err.value, MitSemsegError)
    assert "timm:convnext_tiny" in msg and "\n" not in msg
    with pytest.raises(TimmError, match="bogus.*tags:.*fb_in1k"):
        build_encoder("timm:convnext_tiny.bogus")


@pytest.mark.timm
def test_a_model_without_feature_maps_is_one_line():
    timm = _timm()
    from timm.models import register_model

    class NoFeatures(torch.nn.Module):  # a classifier that declares no feature levels
        def __init__(self, **kwargs):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

    name = "mit_semseg_test_no_features"
    if not timm.is_model(name):
        def factory(pretrained=False, **kwargs):
            from timm.models import build_model_with_cfg
            return build_model_with_cfg(NoFeatures, name, pretrained, **kwargs)
        factory.__name__ = name
        factory.__module__ = __name__
        register_model(factory)
    with pytest.raises(TimmError, match="offers no feature maps") as err:
        build_encoder(f"timm:{name}")
    assert "\n" not in str(err.value)


@pytest.mark.timm
def test_imagenet_weights_from_a_local_file(tmp_path):
    timm = _timm()
    torch.manual_seed(1)
    classifier = timm.create_model("convnext_atto")  # with its ImageNet head, as released
    path = tmp_path / "convnext_atto.pth"
    torch.save(classifier.state_dict(), path)
    cfg = load_cfg(None, ["MODEL.arch_encoder", CONVNEXT, "MODEL.arch_decoder", "upernet_lite",
                          "DATASET.num_class", "3",
                          *option_overrides({"pretrained_file": str(path)})])
    net = build_model(cfg, imagenet=True)  # training's path: MODEL.pretrained, no weights file
    assert torch.equal(net.encoder.body.stem_0.weight, classifier.stem[0].weight)
    assert torch.equal(net.encoder.body.stages_3.blocks[1].mlp.fc2.weight,
                       classifier.stages[3].blocks[1].mlp.fc2.weight)
    # not asked for ImageNet weights (evaluation, or a weights file): the file is not read
    fresh = build_model(cfg)
    assert not torch.equal(fresh.encoder.body.stem_0.weight, classifier.stem[0].weight)
    with pytest.raises(InputNotFoundError, match="pretrained_file: .*missing.pth"):
        build_encoder(CONVNEXT, imagenet=True,
                      options={"pretrained_file": str(tmp_path / "missing.pth")})


@pytest.mark.timm
def test_offline_without_cached_weights_says_where_they_go(tmp_path, monkeypatch):
    _timm()
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TimmError) as err:
        build_timm_encoder("convnext_atto.d2_in1k", pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "hub" / "models--timm--convnext_atto.d2_in1k") in msg
    assert "HF_HUB_OFFLINE" in msg and "pretrained_file" in msg and "MODEL.pretrained False" in msg


# ------------------------------------------------------------------ presets

PRESETS = {"ade20k-convnext_tiny-upernet": ("timm:convnext_tiny.fb_in1k", 0.4, "slide"),
           "ade20k-swin_tiny-upernet": ("timm:swin_tiny_patch4_window7_224.ms_in1k", 0.3,
                                        "whole")}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load_with_their_anchor_settings(name):
    arch, drop_path, mode = PRESETS[name]
    cfg = load_cfg(os.path.join(ROOT, "config", name + ".yaml"))
    assert cfg.MODEL.arch_encoder == arch and cfg.MODEL.arch_decoder == "upernet"
    assert cfg.MODEL.encoder_options.drop_path_rate == drop_path
    assert cfg.MODEL.encoder_options.feature_norm is True
    assert (cfg.DATASET.padding_constant, cfg.DATASET.segm_downsampling_rate) == (32, 4)
    assert cfg.DATASET.imgSizes == (512,) and cfg.VAL.mode == cfg.TEST.mode == mode
    assert cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch == 160000
    text = open(os.path.join(ROOT, "config", name + ".yaml")).read()
    assert "Anchor:" in text and "mIoU" in text


@pytest.mark.timm
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_with_the_published_widths(name):
    _timm()
    cfg = load_cfg(os.path.join(ROOT, "config", name + ".yaml"), ["MODEL.pretrained", "False"])
    net = build_model(cfg)
    assert net.encoder.out_channels == (96, 192, 384, 768)
    assert net.encoder.norms is not None and net.decoder.num_class == 150
    params = sum(p.numel() for p in net.parameters())
    assert 58e6 < params < 61e6  # UPerNet-T sizes as published (~60M, with an aux head)
