"""Training a timm: encoder (a tiny ConvNeXt + UPerNet, stochastic depth on): one
process, exact resume after a crash mid-epoch, bf16 autocast, torchrun with two
CPU processes; skipped without timm."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _custom_data import tiny_model_opts  # noqa: E402
from _support import assert_same_epoch_weights, torchrun_train  # noqa: E402
from _timm import CONVNEXT, timm_or_skip  # noqa: E402

timm_or_skip()

import mit_semseg.training as T  # noqa: E402

from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.models import build_model  # noqa: E402

pytestmark = [pytest.mark.timm, pytest.mark.usefixtures("one_thread")]

# stochastic depth draws random numbers every step: resume must restore them too
TIMM = ("MODEL.arch_encoder", CONVNEXT, "MODEL.arch_decoder", "upernet_lite",
        "MODEL.encoder_options.drop_path_rate", 0.2, "DATASET.padding_constant", 32,
        "DATASET.segm_downsampling_rate", 4)
RESUME = ("TRAIN.workers", 1, "TRAIN.checkpoint_every", 2)


def _cfg(data, out, *extra):
    root, layout = data
    return load_cfg(None, tiny_model_opts(root, str(out), layout["table"], *layout["opts"],
                                          *TIMM, *extra))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("timm_reference")
    summary = T.main(_cfg(data, out, *RESUME), "cpu")
    return out, summary




def test_training_writes_checkpoints_that_load(reference_run):
    out, summary = reference_run
    cfg = load_cfg(str(out / "config.yaml"))
    assert cfg.MODEL.arch_encoder == CONVNEXT and cfg.MODEL.encoder_options.drop_path_rate == 0.2
    net = build_model(cfg, (str(out / "encoder_epoch_2.pth"), str(out / "decoder_epoch_2.pth")))
    assert net.encoder.out_channels == (40, 80, 160, 320)
    losses = summary.history["train"]["loss"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


class _Crash(Exception):
    pass


def test_resume_mid_epoch_is_exact(reference_run, data, tmp_path, monkeypatch):
    ref, ref_summary = reference_run
    real_checkpoint = T.Trainer.checkpoint

    def crash_after(run, epoch, iteration):
        path = real_checkpoint(run, epoch, iteration)
        if path.endswith("state_iter_5.pth"):
            raise _Crash()
        return path

    monkeypatch.setattr(T.Trainer, "checkpoint", crash_after)
    with pytest.raises(_Crash):
        T.main(_cfg(data, tmp_path, *RESUME), "cpu")
    monkeypatch.undo()
    summary = T.main(_cfg(data, tmp_path, *RESUME), "cpu", resume="auto")
    assert summary.history == ref_summary.history
    assert_same_epoch_weights(ref, tmp_path, 2)


def test_bf16_autocast_trains(data, tmp_path):
    summary = T.main(_cfg(data, tmp_path, "TRAIN.precision", "bf16", "TRAIN.num_epoch", 1,
                          "TRAIN.epoch_iters", 2), "cpu")
    assert all(torch.isfinite(torch.tensor(summary.history["train"]["loss"])))


def test_torchrun_two_cpu_processes(data, tmp_path):
    cfg = _cfg(data, tmp_path / "run", "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2,
               "TRAIN.dist_timeout", 120)
    torchrun_train(cfg, tmp_path)
    out = tmp_path / "run"
    build_model(load_cfg(str(out / "config.yaml")),
                (str(out / "encoder_epoch_1.pth"), str(out / "decoder_epoch_1.pth")))
    log = (out / "log.txt").read_text()
    assert "rank 0 of 2" in log and "global batch = 4 images" in log
