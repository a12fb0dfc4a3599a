"""Adding a model family is one new module, and so is a training hook.

This file is that module: a toy encoder and a toy decoder register themselves
below, and nothing else in the package is edited. The config names them, and
training, evaluation, test.py's path, the inference copy and ONNX export all
find them through ``build_model``. A hook registered here runs when
``TRAIN.hooks`` names it."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from _custom_data import tiny_model_opts
from mit_semseg.config import load_cfg
from mit_semseg.models import build_model, register_decoder, register_encoder
from mit_semseg.models.decoders import Decoder
from mit_semseg.models.fusable import Fusable
from mit_semseg.models.registry import EncoderSpec, unregister
from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.training.hooks import HOOKS, register_hook
from mit_semseg.training.trainer import HookBase

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the family

class ToyEncoder(nn.Module):
    """Two strided conv levels (output stride 8, as DATASET.segm_downsampling_rate);
    declares its channels, so no MODEL.fc_dim is needed."""

    out_channels = (8, 16)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=4, padding=1, bias=False)
        self.bn1 = SynchronizedBatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        low = F.relu(self.bn1(self.conv1(x)))
        high = F.relu(self.conv2(low))
        return [low, high] if return_feature_maps else [high]


@register_encoder("toy_enc", fusable={ToyEncoder: Fusable(pairs=(("conv1", "bn1"),))})
def _toy_encoder(spec: EncoderSpec) -> nn.Module:
    return ToyEncoder()


@register_decoder("toy_head")
class ToyHead(Decoder):
    """Both levels, the low one resized to the high one's size, then a class layer."""

    def __init__(self, num_class: int = 150, fc_dim: int = 16, use_softmax: bool = False,
                 in_channels=None) -> None:
        channels = tuple(in_channels) if in_channels else (fc_dim // 2, fc_dim)
        super().__init__(num_class, channels[-1], use_softmax, deep_sup=False)
        self.mix = nn.Conv2d(sum(channels), 16, 1)
        self.cls = nn.Conv2d(16, num_class, 1)
        self.class_layers = ("cls",)

    def logits(self, conv_out):
        low, high = conv_out[-2], conv_out[-1]
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls(F.relu(self.mix(torch.cat([low, high], 1))))


# ----------------------------------------------------------------------------- the hook

@register_hook("toy_counter")
class ToyCounter(HookBase):
    """Counts what the trainer tells its hooks."""

    seen: list[tuple[str, int]] = []

    def after_step(self, trainer) -> None:
        ToyCounter.seen.append(("step", trainer.global_iter))

    def after_epoch(self, trainer) -> None:
        ToyCounter.seen.append(("epoch", trainer.epoch))


@pytest.fixture(scope="module", autouse=True)
def _unregister_at_the_end():
    yield
    unregister("toy_enc", "toy_head")
    HOOKS.pop("toy_counter", None)


# ----------------------------------------------------------------------------- the data

@pytest.fixture(scope="module")
def toy_run(data, tmp_path_factory):
    root, layout = data
    out = str(tmp_path_factory.mktemp("toy"))
    opts = tiny_model_opts(root, out, layout["table"], *layout["opts"],
                           "MODEL.arch_encoder", "toy_enc", "MODEL.arch_decoder", "toy_head",
                           "MODEL.fc_dim", "1", "TRAIN.hooks", "['toy_counter']",
                           "TRAIN.eval_every", "1")
    cfg = load_cfg(None, opts)
    from mit_semseg.training import main as train
    ToyCounter.seen.clear()
    summary = train(cfg, "cpu")
    return cfg, summary


def test_a_family_in_one_module_builds_from_the_config(toy_run):
    cfg, _ = toy_run
    net = build_model(cfg)
    assert isinstance(net.encoder, ToyEncoder) and isinstance(net.decoder, ToyHead)
    assert net.decoder.mix.in_channels == 24  # channels from the encoder, not MODEL.fc_dim
    assert net(torch.zeros(1, 3, 64, 48)).shape == (1, 3, 8, 6)


def test_the_toy_family_trains_and_the_hook_runs(toy_run):
    cfg, summary = toy_run
    assert summary.global_iter == 6 and os.path.isfile(os.path.join(cfg.DIR, "encoder_epoch_2.pth"))
    assert summary.best_epoch in (1, 2)  # validated every epoch
    assert [e for e in ToyCounter.seen if e[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    assert [g for kind, g in ToyCounter.seen if kind == "step"] == [1, 2, 3, 4, 5, 6]


def test_the_toy_family_evaluates_segments_photos_and_runs_fused(toy_run, tmp_path):
    cfg, _ = toy_run
    from mit_semseg.evaluation import evaluate
    from mit_semseg.inference import InferenceEngine
    from mit_semseg.prediction import run_test
    result = evaluate(cfg, "cpu", progress=False, stream=io.StringIO())
    assert 0.0 <= result["mean_iou"] <= 1.0 and result["num_images"] > 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), np.uint8)).save(photo)
    tcfg = cfg.clone()
    tcfg.defrost()
    tcfg.TEST.result = str(tmp_path / "out")
    assert run_test(tcfg, str(photo), "cpu", progress=False, stream=io.StringIO(),
                    err=io.StringIO()) == 0
    assert os.listdir(tmp_path / "out")
    # the inference copy folds the declared conv/BatchNorm pair and keeps the labels
    fast = InferenceEngine.from_config(cfg, "TEST", "cpu")
    exact = InferenceEngine.from_config(cfg, "TEST", "cpu", exact=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.encoder.modules())
    image = Image.open(photo)
    assert (fast.predict_image(image).labels == exact.predict_image(image).labels).mean() > 0.99


def test_the_toy_family_exports_to_onnx(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg, _ = toy_run
    from mit_semseg.commands import export
    yaml_path = tmp_path / "toy.yaml"
    yaml_path.write_text(cfg.dump())
    assert export.main(["--cfg", str(yaml_path), "--onnx", str(tmp_path / "toy.onnx")]) == 0
    assert os.path.getsize(tmp_path / "toy.onnx") > 0
