"""Validation during training (TRAIN.eval_every, best checkpoint), the metrics
file, TensorBoard events, the curves command, and fine-tuning a checkpoint
made for another class count (MODEL.reinit_classifier)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import mit_semseg.training as T
from _custom_data import make_rgb, tiny_model_opts
from mit_semseg.commands import datatools
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.models import ModelBuilder, WeightsError
from mit_semseg.training.monitor import read_metrics


pytestmark = pytest.mark.usefixtures("one_thread")




def _cfg(data, out, *extra):
    root, layout = data
    return load_cfg(None, tiny_model_opts(root, str(out), layout["table"], *layout["opts"], *extra))


@pytest.fixture(scope="module")
def validated_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("validated")
    T.main(_cfg(data, out, "TRAIN.num_epoch", 4, "TRAIN.eval_every", 1, "TRAIN.lr_encoder",
                0.05, "TRAIN.lr_decoder", 0.05), "cpu")
    return out


def test_best_epoch_is_the_best_validated_one(validated_run):
    out = validated_run
    records = read_metrics(str(out))
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    scores = [r["val_mean_iou"] for r in epochs]
    best = json.loads((out / "best.json").read_text())
    assert best["epoch"] == 1 + scores.index(max(scores))
    assert best["mean_iou"] == max(scores) and best["imgSizes"] == [32]
    assert epochs[-1]["best_epoch"] == best["epoch"]
    for kind in ("encoder", "decoder"):
        assert (out / f"{kind}_best.pth").read_bytes() == \
            (out / f"{kind}_epoch_{best['epoch']}.pth").read_bytes()
    # every iteration is recorded with the learning rates and times
    iters = [r for r in records if r["type"] == "iter"]
    assert [r["global_iter"] for r in iters] == list(range(1, 13))
    for r in iters:
        assert {"loss", "acc", "lr_encoder", "lr_decoder", "data_time", "compute_time",
                "iter_time", "epoch", "iter"} <= set(r)
    assert iters[0]["lr_encoder"] == pytest.approx(0.05)
    assert epochs[0]["loss"] == pytest.approx(sum(r["loss"] for r in iters[:3]) / 3)
    assert "Validation after epoch 4: mean IoU" in (out / "log.txt").read_text()
    # per-class IoU and the other summary numbers in every validated record
    for r in epochs:
        assert list(r["val_class_iou"]) == ["water", "boat", "pier"]
        assert sum(r["val_class_iou"].values()) / 3 == pytest.approx(r["val_mean_iou"])
        assert 0 <= r["val_frequency_weighted_iou"] <= 1 and r["best_metric"] == "mean_iou"
    assert best["metric"] == "mean_iou" and best["score"] == best["mean_iou"]
    assert "lowest IoU: " in (out / "log.txt").read_text()


def test_eval_every_two_validates_even_and_last_epochs(data, tmp_path):
    T.main(_cfg(data, tmp_path, "TRAIN.num_epoch", 3, "TRAIN.eval_every", 2), "cpu")
    epochs = [r for r in read_metrics(str(tmp_path)) if r["type"] == "epoch"]
    assert ["val_mean_iou" in r for r in epochs] == [False, True, True]


def test_resume_keeps_metrics_up_to_the_resume_point(data, tmp_path):
    T.main(_cfg(data, tmp_path, "TRAIN.num_epoch", 2), "cpu")
    with open(tmp_path / "metrics.jsonl", "a") as fh:  # a record the resumed run must drop
        fh.write(json.dumps({"type": "iter", "global_iter": 99}) + "\n")
    T.main(_cfg(data, tmp_path, "TRAIN.num_epoch", 2), "cpu", resume=str(tmp_path / "state_epoch_1.pth"))
    iters = [r["global_iter"] for r in read_metrics(str(tmp_path)) if r["type"] == "iter"]
    assert iters == list(range(1, 7))


def test_curves_png(validated_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from mit_semseg.commands.curves import main
    png = tmp_path / "c.png"
    assert main([str(validated_run), "-o", str(png)]) == 0
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > 400
    assert img.size[1] > img.size[0] * 0.8  # three rows: the per-class panels too
    assert main([str(validated_run), "-o", str(png), "--classes", "boat", "pier"]) == 0
    assert main([str(validated_run), "-o", str(png), "--classes", "car"]) == 1
    assert "--classes: no class 'car'" in capsys.readouterr().err
    assert main([str(tmp_path / "none")]) == 1
    assert "metrics file not found" in capsys.readouterr().err


def test_curves_of_many_classes_and_old_files(tmp_path):
    """150 classes: the best/worst five as lines, the 20 lowest as bars; a metrics
    file of an earlier version (no per-class IoU) still draws."""
    pytest.importorskip("matplotlib")
    from mit_semseg.training.curves import _class_lines, plot_curves
    names = [f"class {k}" for k in range(150)]
    records = [{"type": "iter", "epoch": e, "iter": 1, "global_iter": e, "loss": 1.0 / e,
                "acc": 0.5, "lr_encoder": 0.01, "lr_decoder": 0.01} for e in (1, 2)]
    records += [{"type": "epoch", "epoch": e, "global_iter": e, "loss": 1.0, "acc": 0.5,
                 "val_mean_iou": 0.1 * e, "val_pixel_accuracy": 0.5, "best_epoch": e,
                 "best_metric": "iou:class 7", "val_score": 0.2 * e,
                 "val_class_iou": {n: (k % 10) / 10 for k, n in enumerate(names)}}
                for e in (1, 2)]
    lines, title = _class_lines([r for r in records if r["type"] == "epoch"], None)
    assert len(lines) == 10 and "best 5 and worst 5 of 150" in title
    assert plot_curves(records, str(tmp_path / "many.png")) == str(tmp_path / "many.png")
    old = [{k: v for k, v in r.items() if k not in ("val_class_iou", "best_metric", "val_score")}
           for r in records]
    plot_curves(old, str(tmp_path / "old.png"))


def test_tensorboard_events(data, tmp_path):
    pytest.importorskip("tensorboard")
    T.main(_cfg(data, tmp_path, "TRAIN.num_epoch", 1, "TRAIN.tensorboard", True,
                "TRAIN.eval_every", 1), "cpu")
    events = [f for f in os.listdir(tmp_path / "tensorboard") if f.startswith("events.out")]
    assert events and os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0


def test_tensorboard_missing_is_a_clear_error(data, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        T.main(_cfg(data, tmp_path, "TRAIN.num_epoch", 1, "TRAIN.tensorboard", True), "cpu")


def _ade20k_like_checkpoint(folder):
    """A 150-class checkpoint of the tiny architecture (stands in for a released one)."""
    torch.manual_seed(5)
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 320, 150)
    paths = str(folder / "encoder_epoch_20.pth"), str(folder / "decoder_epoch_20.pth")
    torch.save(enc.state_dict(), paths[0])
    torch.save(dec.state_dict(), paths[1])
    return paths


def test_fine_tune_from_a_150_class_checkpoint(data, tmp_path):
    enc_path, dec_path = _ade20k_like_checkpoint(tmp_path)
    opts = ("MODEL.weights_encoder", enc_path, "MODEL.weights_decoder", dec_path,
            "TRAIN.num_epoch", 1, "TRAIN.lr_encoder", 0.0)
    with pytest.raises(WeightsError, match="MODEL.reinit_classifier True"):
        T.main(_cfg(data, tmp_path / "plain", *opts), "cpu")
    T.main(_cfg(data, tmp_path / "ft", *opts, "MODEL.reinit_classifier", True), "cpu")
    start_enc, start_dec = torch.load(enc_path), torch.load(dec_path)
    enc = torch.load(tmp_path / "ft" / "encoder_epoch_1.pth")
    dec = torch.load(tmp_path / "ft" / "decoder_epoch_1.pth")
    conv = next(k for k in enc if k.endswith("weight") and enc[k].ndim == 4)
    assert torch.equal(enc[conv], start_enc[conv])  # loaded (and lr 0 kept it)
    assert dec["conv_last.weight"].shape[0] == 3 and start_dec["conv_last.weight"].shape[0] == 150


def test_custom_template_config():
    cfg = load_cfg(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "config", "custom-template.yaml"))
    # what the BatchNorm measurement in docs/custom-dataset.md found to work
    assert cfg.TRAIN.precise_bn_iters > 0 and cfg.MODEL.bn_momentum < 0
    assert cfg.TRAIN.eval_every == 1 and cfg.VAL.checkpoint == "best.pth"
    assert cfg.DATASET.label_format == "zero_based" and cfg.MODEL.reinit_classifier


def test_custom_cpu_config():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_cfg(os.path.join(root, "config", "custom-cpu.yaml"))
    template = load_cfg(os.path.join(root, "config", "custom-template.yaml"))
    assert cfg.MODEL.arch_encoder == "mobilenetv2dilated" and cfg.MODEL.fc_dim == 320
    assert max(cfg.DATASET.imgSizes) < max(template.DATASET.imgSizes)
    assert cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch < \
        template.TRAIN.epoch_iters * template.TRAIN.num_epoch
    assert cfg.TRAIN.workers <= 2 and cfg.TRAIN.eval_every == 1 and cfg.VAL.checkpoint == "best.pth"
    # the same dataset keys, so a config made from one template moves to the other
    assert cfg.DATASET.label_format == template.DATASET.label_format
