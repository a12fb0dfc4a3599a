"""Optimizers by name, AdamW's weight-decay rule, layer-wise learning-rate decay and
the warmup / poly / cosine schedules (mit_semseg.training.optim)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.models import ModelBuilder
from mit_semseg.training import optim as O


class _ViTLike(nn.Module):
    """Parameter names and shapes of a tiny ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
                                      for _ in range(3)])
        self.norm = nn.LayerNorm(8)


class _ConvNeXtLike(nn.Module):
    """Parameter names of a tiny ConvNeXt: stem, stages.S.downsample, stages.S.blocks.B."""

    def __init__(self, depths=(2, 1, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.GroupNorm(1, 4))
        self.stages = nn.ModuleList()
        for s, depth in enumerate(depths):
            stage = nn.Module()
            if s > 0:
                stage.downsample = nn.Conv2d(4, 4, 1)
            stage.blocks = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(depth)])
            self.stages.append(stage)
        self.norm = nn.GroupNorm(1, 4)


def _cfg(*opts) -> object:
    return load_cfg(None, [str(o) for o in opts])


def _group_of(opt: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def test_adamw_decays_weights_only_and_takes_betas_from_the_config():
    enc, dec = _ViTLike(), nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    cfg = _cfg("TRAIN.optim", "AdamW", "TRAIN.beta1", 0.8, "TRAIN.beta2", 0.95,
               "TRAIN.weight_decay", 0.05, "TRAIN.lr_encoder", 1e-4, "TRAIN.lr_decoder", 1e-3)
    opt_enc, opt_dec = O.create_optimizers((enc, dec), cfg)
    assert isinstance(opt_enc, torch.optim.AdamW) and isinstance(opt_dec, torch.optim.AdamW)
    for g in opt_enc.param_groups + opt_dec.param_groups:
        assert g["betas"] == (0.8, 0.95)
    # decayed: the conv and linear weights; not: tokens, position embeddings (3-D),
    # biases, norm weights
    decayed = [enc.patch_embed.proj.weight, dec[0].weight] + [b[1].weight for b in enc.blocks]
    decayed_ids = {id(p) for p in decayed}
    for opt, net in ((opt_enc, enc), (opt_dec, dec)):
        for p in net.parameters():
            assert _group_of(opt, p)["weight_decay"] == (0.05 if id(p) in decayed_ids else 0.0)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    assert _group_of(opt_enc, enc.pos_embed)["weight_decay"] == 0.0  # 3-D, by its name
    assert [g["lr"] for g in opt_enc.param_groups] == [1e-4, 1e-4]


def test_no_weight_decay_lists_are_honoured():
    net = _ConvNeXtLike()
    net.no_weight_decay = lambda: {"stem.0.weight"}
    opt = O.create_optimizers((net, nn.Linear(2, 2)), _cfg("TRAIN.optim", "adamw"))[0]
    assert _group_of(opt, net.stem[0].weight)["weight_decay"] == 0.0
    assert _group_of(opt, net.stages[0].blocks[0].weight)["weight_decay"] > 0


def test_sgd_stays_the_original_two_groups_and_unknown_names_fail():
    net = _ConvNeXtLike()
    opt = O.create_optimizers((net, net), _cfg())[0]
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 2
    assert [len(g["params"]) for g in opt.param_groups] == \
        [len(g["params"]) for g in O.group_weight(net)]
    assert "lr_scale" not in opt.param_groups[0]
    with pytest.raises(ConfigError, match=r"TRAIN.optim 'Lion'.*\['adamw', 'sgd'\]"):
        O.create_optimizers((net, net), _cfg("TRAIN.optim", "Lion"))


@pytest.mark.parametrize("mode,optim", [("layer", "AdamW"), ("stage", "AdamW"), ("layer", "SGD")])
def test_layer_decay_of_convnext_names(mode, optim):
    enc, dec = _ConvNeXtLike(depths=(2, 1, 2)), nn.Conv2d(4, 3, 1)
    cfg = _cfg("TRAIN.optim", optim, "TRAIN.layer_decay", 0.5, "TRAIN.layer_decay_mode", mode,
               "TRAIN.lr_encoder", 0.4, "TRAIN.lr_decoder", 0.1)
    opt_enc, opt_dec = O.create_optimizers((enc, dec), cfg)
    # depths: stem 0; layer mode: one per block (a stage's downsampling with its first
    # block): 1, 2 | 3 | 4, 5; stage mode: one per stage: 1 | 2 | 3
    if mode == "layer":
        depth, where = 6, {enc.stages[0].blocks[1].weight: 2, enc.stages[1].downsample.weight: 3,
                           enc.stages[1].blocks[0].weight: 3, enc.stages[2].blocks[1].weight: 5}
    else:
        depth, where = 4, {enc.stages[0].blocks[1].weight: 1, enc.stages[1].downsample.weight: 2,
                           enc.stages[2].blocks[1].weight: 3}
    where[enc.stem[0].weight] = 0
    for p, d in where.items():
        g = _group_of(opt_enc, p)
        assert g["layer_id"] == d and g["lr_scale"] == 0.5 ** (depth - d)
        assert g["lr"] == pytest.approx(0.4 * 0.5 ** (depth - d))
    assert _group_of(opt_enc, enc.norm.weight)["lr_scale"] == 1.0  # in no layer: the top
    # each optimizer's own weight-decay rule within the layers (GroupNorm weights: 1-D)
    assert _group_of(opt_enc, enc.stem[1].weight)["weight_decay"] == 0.0
    assert _group_of(opt_enc, enc.stem[0].weight)["weight_decay"] == cfg.TRAIN.weight_decay
    # the schedule keeps each group's factor and reports the base rates
    lrs = O.adjust_learning_rate((opt_enc, opt_dec), 10, cfg)
    max_iters = cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch
    assert lrs == (O.poly_lr(0.4, 10, max_iters, 0.9), O.poly_lr(0.1, 10, max_iters, 0.9))
    g = _group_of(opt_enc, enc.stem[0].weight)
    assert g["lr"] == pytest.approx(lrs[0] * 0.5 ** depth)
    assert all(g["lr"] == lrs[1] for g in opt_dec.param_groups)


def test_layer_decay_of_vit_names_and_of_a_family_declaration():
    ids, depth = O.encoder_layer_ids(_ViTLike(), "stage")
    assert depth == 4
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert [ids[f"blocks.{b}.1.weight"] for b in range(3)] == [1, 2, 3]  # a ViT: per block
    assert "norm.weight" not in ids
    net = _ConvNeXtLike()
    net.layer_ids = lambda mode: {"stem.0.weight": 0, "norm.weight": 1}
    ids, depth = O.encoder_layer_ids(net, "layer")
    assert (ids, depth) == ({"stem.0.weight": 0, "norm.weight": 1}, 2)


def test_layer_decay_on_an_encoder_without_layers_is_a_clear_error():
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    with pytest.raises(ConfigError, match=r"TRAIN.layer_decay: cannot tell the layers of the "
                                          r"encoder MobileNetV2Dilated"):
        O.create_optimizers((enc, nn.Linear(2, 2)), _cfg("TRAIN.layer_decay", 0.9))


@pytest.mark.timm
def test_timm_group_matcher_gives_the_depths():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False)
    from timm.models import group_parameters
    want = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    ids, depth = O.encoder_layer_ids(model, "layer")
    assert ids == want and depth == max(want.values()) + 1
    # timm's feature wrapper has no group_matcher: its names give the same block depths
    features = timm.create_model("convnext_atto", pretrained=False, features_only=True)
    fids, _ = O.encoder_layer_ids(features, "layer")
    assert fids["stages_2.blocks.3.conv_dw.weight"] == want["stages.2.blocks.3.conv_dw.weight"]


def test_warmup_poly_and_cosine_schedules():
    base = ("TRAIN.epoch_iters", 10, "TRAIN.num_epoch", 10, "TRAIN.lr_pow", 1.0)
    cfg = _cfg(*base)
    for g in (0, 5, 99, 150):  # the original's poly, exactly
        assert O.scheduled_lr(0.02, g, cfg) == O.poly_lr(0.02, g, 100, 1.0)
    warm = _cfg(*base, "TRAIN.warmup_iters", 20, "TRAIN.warmup_ratio", 0.1)
    assert O.scheduled_lr(1.0, 0, warm) == pytest.approx(0.1)
    assert O.scheduled_lr(1.0, 10, warm) == pytest.approx((0.1 + 0.9 * 0.5) * 0.9)
    assert O.scheduled_lr(1.0, 20, warm) == pytest.approx(0.8)
    cos = _cfg(*base, "TRAIN.lr_schedule", "cosine", "TRAIN.warmup_iters", 4,
               "TRAIN.warmup_ratio", 0.0)
    assert O.scheduled_lr(2.0, 0, cos) == 0.0
    cosine = 2.0 * 0.5 * (1 + math.cos(math.pi * 0.02))
    assert O.scheduled_lr(2.0, 2, cos) == pytest.approx(cosine * 0.5)  # half way up the warmup
    assert O.scheduled_lr(2.0, 50, cos) == pytest.approx(1.0)
    assert O.scheduled_lr(2.0, 100, cos) == pytest.approx(0.0, abs=1e-12)
    assert O.scheduled_lr(2.0, 120, cos) == pytest.approx(0.0, abs=1e-12)
