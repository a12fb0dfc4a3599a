"""The training recipes in whole runs: the default stays the original's, gradient
accumulation, the weights' moving average, mixed precision with all of them, and
exact resume with every recipe switched on (tiny ConvNeXt-like encoder, CPU)."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mit_semseg.training as T
from _support import crash_after_checkpoint
from _custom_data import tiny_model_opts
from mit_semseg.checkpoints.files import load_file
from mit_semseg.config import load_cfg
from mit_semseg.models import SegmentationModule, build_model
from mit_semseg.models.registry import register_encoder, unregister
from mit_semseg.training.hooks import HOOKS, register_hook
from mit_semseg.training.loss import build_criterion
from mit_semseg.training.monitor import read_metrics
from mit_semseg.training.optim import scheduled_lr
from mit_semseg.training.state import load_training_state

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = "toy_convnext_recipes"


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.GroupNorm(1, c)
        self.pwconv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.view(1, -1, 1, 1) * self.pwconv(F.gelu(self.norm(self.conv_dw(x))))


class _ToyConvNeXt(nn.Module):
    """ConvNeXt's parameter names (stem, stages.S.downsample, stages.S.blocks.B), two
    stride-8 feature maps of 8 and 16 channels."""

    out_channels = (8, 16)

    def __init__(self, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.GroupNorm(1, 8))
        self.stages = nn.ModuleList()
        for s, (cin, cout) in enumerate(((8, 8), (8, 16))):
            stage = nn.Module()
            stage.downsample = nn.Conv2d(cin, cout, 1) if s else nn.Identity()
            stage.blocks = nn.Sequential(_Block(cout), _Block(cout))
            self.stages.append(stage)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
            feats.append(x)
        return feats if return_feature_maps else feats[-1:]


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    register_encoder(TOY)(lambda spec: _ToyConvNeXt(float(spec.options.get("drop_path_rate", 0.0))))
    yield
    unregister(TOY)


def _opts(data, out, *extra) -> list[str]:
    root, layout = data
    return tiny_model_opts(root, str(out), layout["table"], *layout["opts"], *map(str, extra))


def _toy(*extra) -> tuple:
    return ("MODEL.arch_encoder", TOY, "MODEL.arch_decoder", "c1_deepsup", *extra)


# every recipe at once: AdamW with layer decay, warmup then cosine, EMA, accumulation,
# a loss sum, mmseg's augmentation; two loader workers and mid-epoch checkpoints
RECIPE = _toy("TRAIN.optim", "AdamW", "TRAIN.lr_encoder", 0.004, "TRAIN.lr_decoder", 0.01,
              "TRAIN.weight_decay", 0.05, "TRAIN.layer_decay", 0.7, "TRAIN.warmup_iters", 2,
              "TRAIN.warmup_ratio", 0.1, "TRAIN.lr_schedule", "cosine", "TRAIN.ema_decay", 0.6,
              "TRAIN.accumulate", 2, "TRAIN.loss", "ohem + 0.5*lovasz", "TRAIN.ohem_min_kept", 4,
              "DATASET.augment", "mmseg", "DATASET.crop_size", "(32, 32)",
              "DATASET.augment_scale", "(64, 32)", "TRAIN.workers", 2, "TRAIN.checkpoint_every", 2)


def _weights(folder, name):
    return load_file(os.path.join(folder, name))


def _assert_same_files(a, b, names):
    for name in names:
        x, y = _weights(a, name), _weights(b, name)
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f"{name}: {key} differs"


# ----------------------------------------------------------------------------- the default

def test_default_recipe_is_the_original(data, tmp_path):
    """The new keys at their defaults (written out here) change nothing: the same
    criterion, optimizer groups and stream, and bit-identical weights."""
    short = ("TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2)
    cfg = load_cfg(None, _opts(data, tmp_path / "default", *short))
    crit = build_criterion(cfg, None)
    assert type(crit) is nn.NLLLoss and crit.ignore_index == -1 and crit.weight is None
    plain = T.main(cfg, "cpu")
    explicit = ("TRAIN.optim", "SGD", "TRAIN.beta2", 0.999, "TRAIN.layer_decay", 1.0,
                "TRAIN.layer_decay_mode", "layer", "TRAIN.lr_schedule", "poly",
                "TRAIN.warmup_iters", 0, "TRAIN.warmup_ratio", 1e-6, "TRAIN.ema_decay", 0.0,
                "TRAIN.accumulate", 1, "TRAIN.loss", "cross_entropy", "TRAIN.ohem_thresh", 0.7,
                "TRAIN.ohem_min_kept", 100000, "TRAIN.focal_gamma", 2.0,
                "DATASET.augment", "original", "DATASET.augment_scale", "(2048, 512)",
                "DATASET.augment_ratio", "(0.5, 2.0)", "DATASET.crop_size", "(512, 512)",
                "DATASET.cat_max_ratio", 0.75)
    same = T.main(load_cfg(None, _opts(data, tmp_path / "explicit", *short, *explicit)), "cpu")
    assert same.history == plain.history
    names = ["encoder_epoch_1.pth", "decoder_epoch_1.pth"]
    _assert_same_files(tmp_path / "default", tmp_path / "explicit", names)
    assert not [n for n in os.listdir(tmp_path / "default") if "ema" in n]
    assert "hooks" not in load_training_state(str(tmp_path / "default" / "state_epoch_1.pth"))


# ----------------------------------------------------------------------------- accumulation

def _trainer(cfg, network):
    module = SegmentationModule.from_network(network, build_criterion(cfg, None), 0.4)
    return T.Trainer(cfg, T.distributed.DistEnv(), torch.device("cpu"), [], network, module,
                     module, T.create_optimizers((module.encoder, module.decoder), cfg), None,
                     None, None)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"img_data": torch.randn(2, 3, 32, 32, generator=g),
            "seg_label": torch.randint(-1, 3, (2, 4, 4), generator=g)}


def test_accumulation_steps_on_the_mean_gradient(data, tmp_path):
    cfg = load_cfg(None, _opts(data, tmp_path, *_toy("TRAIN.accumulate", 2, "TRAIN.exact", True,
                                                     "TRAIN.lr_encoder", 0.1, "TRAIN.beta1", 0.0)))
    torch.manual_seed(0)
    network = build_model(cfg)
    reference = copy.deepcopy(network)
    run = _trainer(cfg, network)
    assert run.draws_per_iter == 2
    batches = [_batch(1), _batch(2)]
    loss, _ = run.run_step(batches)

    ref = _trainer(cfg, reference)
    ref.model.train()
    losses = [ref.model(b)[0] for b in batches]  # BatchNorm: statistics per batch
    (sum(losses) / 2).backward()
    for opt in ref.optimizers:
        opt.step()
    assert loss == pytest.approx(float(sum(losses).detach() / 2), rel=1e-6)
    for (name, a), b in zip(network.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    for (name, a), b in zip(network.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, msg=name)  # both batches updated the statistics
    with pytest.raises(ValueError, match="accumulation of 2 x 1 batches got 1"):
        run.run_step(batches[:1])


# ----------------------------------------------------------------------------- EMA

class _Spy(T.HookBase):
    """Records the encoder's weights when training starts and after every step."""

    seen: list = []

    def before_train(self, trainer):
        _Spy.seen = [copy.deepcopy(trainer.module.encoder.state_dict())]

    def after_step(self, trainer):
        _Spy.seen.append(copy.deepcopy(trainer.module.encoder.state_dict()))


def test_ema_is_the_average_validated_and_saved(data, tmp_path):
    if "recipes_spy" not in HOOKS:
        register_hook("recipes_spy")(_Spy)
    out = tmp_path / "ema"
    T.main(load_cfg(None, _opts(data, out, *_toy("TRAIN.ema_decay", 0.6, "TRAIN.eval_every", 1,
                                                 "TRAIN.hooks", "['recipes_spy']",
                                                 "TRAIN.num_epoch", 1))), "cpu")
    ema = _weights(out, "encoder_ema_epoch_1.pth")
    expect = {k: v.double() for k, v in _Spy.seen[0].items()}
    for step in _Spy.seen[1:]:
        expect = {k: 0.6 * v + 0.4 * step[k].double() for k, v in expect.items()}
    assert len(_Spy.seen) == 4 and ema.keys() == expect.keys()
    for key, value in ema.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), expect[key], rtol=1e-5, atol=1e-7)
    live = _weights(out, "encoder_epoch_1.pth")
    assert not torch.equal(live["stem.0.weight"], ema["stem.0.weight"])
    best = json.loads((out / "best.json").read_text())  # the average was validated and kept
    assert (best["encoder"], best["decoder"]) == ("encoder_ema_epoch_1.pth",
                                                  "decoder_ema_epoch_1.pth")
    _assert_same_files(out, out, ["encoder_best.pth"])
    for kind in ("encoder", "decoder"):
        best_w, ema_w = _weights(out, f"{kind}_best.pth"), _weights(out, f"{kind}_ema_epoch_1.pth")
        assert all(torch.equal(best_w[k], ema_w[k]) for k in ema_w)
    state = load_training_state(str(out / "state_epoch_1.pth"))
    assert state["hooks"]["ema"]["updates"] == 3


# ----------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def recipe_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    return out, T.main(load_cfg(None, _opts(data, out, *RECIPE)), "cpu")


def test_resume_is_exact_with_every_recipe_on(recipe_run, data, tmp_path, monkeypatch):
    ref, ref_summary = recipe_run
    with crash_after_checkpoint("state_iter_5.pth"):
        T.main(load_cfg(None, _opts(data, tmp_path, *RECIPE)), "cpu")
    summary = T.main(load_cfg(None, _opts(data, tmp_path, *RECIPE)), "cpu", resume="auto")
    assert summary.history == ref_summary.history
    _assert_same_files(ref, tmp_path, [f"{kind}{ema}_epoch_2.pth" for kind in ("encoder", "decoder")
                                       for ema in ("", "_ema")])
    a = load_training_state(str(ref / "state_epoch_2.pth"))["optimizers"]["encoder"]
    b = load_training_state(str(tmp_path / "state_epoch_2.pth"))["optimizers"]["encoder"]
    for key, buf in a["state"].items():
        assert torch.equal(buf["exp_avg_sq"], b["state"][key]["exp_avg_sq"])
    assert [g["lr_scale"] for g in a["param_groups"]] == [g["lr_scale"] for g in b["param_groups"]]


def test_recipe_run_reports_base_rates_and_its_groups(recipe_run, data, tmp_path):
    ref, _ = recipe_run
    cfg = load_cfg(None, _opts(data, tmp_path, *RECIPE))
    records = [r for r in read_metrics(str(ref)) if r["type"] == "iter"]
    assert [r["global_iter"] for r in records] == list(range(1, 7))
    for r in records:
        g = r["global_iter"] - 1
        assert r["lr_encoder"] == pytest.approx(scheduled_lr(0.004, g, cfg))
        assert r["lr_decoder"] == pytest.approx(scheduled_lr(0.01, g, cfg))
    assert records[0]["lr_encoder"] == pytest.approx(0.004 * 0.1)  # warmup from 10 %
    groups = load_training_state(str(ref / "state_epoch_2.pth"))["optimizers"]["encoder"]
    # stem 0, blocks 1-4 (stage 1's 1x1 downsampling with its first block): 5 depths
    assert sorted({(g["layer_id"], g["lr_scale"]) for g in groups["param_groups"]}) == \
        [(d, pytest.approx(0.7 ** (5 - d))) for d in range(5)]
    assert "Layer-wise learning-rate decay of the encoder" in (ref / "log.txt").read_text()


# ----------------------------------------------------------------------------- precision, options

def test_fp16_with_accumulation_and_ema(data, tmp_path):
    out = tmp_path / "fp16"
    summary = T.main(load_cfg(None, _opts(data, out, *_toy(
        "TRAIN.precision", "fp16", "TRAIN.accumulate", 2, "TRAIN.ema_decay", 0.9,
        "TRAIN.optim", "AdamW", "TRAIN.lr_encoder", 0.001, "TRAIN.lr_decoder", 0.001,
        "TRAIN.loss", "ce + dice", "TRAIN.num_epoch", 1))), "cpu")
    assert all(torch.isfinite(torch.tensor(summary.history["train"]["loss"])))
    state = load_training_state(str(out / "state_epoch_1.pth"))
    assert state["grad_scaler"] is not None and state["grad_scaler"]["scale"] > 0
    ema = _weights(out, "encoder_ema_epoch_1.pth")
    assert all(v.dtype == torch.float32 for v in ema.values() if v.is_floating_point())


def test_drop_path_rate_reaches_the_encoder(data, tmp_path):
    cfg = load_cfg(None, _opts(data, tmp_path, *_toy("MODEL.encoder_options.drop_path_rate", 0.3)))
    assert build_model(cfg).encoder.drop_path_rate == 0.3
