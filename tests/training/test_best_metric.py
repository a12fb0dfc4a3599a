"""TRAIN.best_metric, TRAIN.early_stop and per-class IoU in the epoch records:
hook-level tests with fabricated validation results (no network; the validation,
early-stop and metrics hooks driven as the trainer drives them), and one tiny
run that stops early."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

import mit_semseg.training as T
from _custom_data import make_rgb, tiny_model_opts
from mit_semseg.commands import datatools
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.training.distributed import DistEnv
from mit_semseg.training.hooks import EarlyStopHook, MetricsHook, ValidationHook
from mit_semseg.training.hooks import validation as validation_hook
from mit_semseg.training.monitor import (BEST_FILE, class_iou_keys, parse_best_metric,
                                         read_metrics)
from mit_semseg.training.trainer import StepResult

NAMES = ["road", "car", "sky"]
# epoch: (mean IoU, pixel accuracy, frequency-weighted IoU, IoU of car); every
# metric has its best at another epoch
EPOCHS = {1: (0.50, 0.95, 0.60, 0.10), 2: (0.70, 0.80, 0.62, 0.20),
          3: (0.60, 0.85, 0.61, 0.60), 4: (0.65, 0.90, 0.75, 0.30)}


def _val(epoch: int) -> dict:
    """A ``validate`` result with the numbers of ``EPOCHS[epoch]``."""
    miou, acc, fw, car = EPOCHS[epoch]
    road = sky = (3 * miou - car) / 2
    return {"mean_iou": miou, "pixel_accuracy": acc, "mean_class_accuracy": acc - 0.1,
            "frequency_weighted_iou": fw, "mean_f1": miou + 0.1, "overall_score": (miou + acc) / 2,
            "per_class": [{"index": k, "name": n, "iou": v}
                          for k, (n, v) in enumerate(zip(NAMES, (road, car, sky)))],
            "num_images": 2, "time": 0.01}


def _cfg(folder, *opts):
    os.makedirs(folder, exist_ok=True)
    table = os.path.join(folder, "classes.csv")
    if not os.path.isfile(table):
        with open(table, "w") as fh:
            fh.write("Idx,Name,R,G,B\n" + "".join(f"{k},{n},{k},{k},{k}\n"
                                                  for k, n in enumerate(NAMES)))
    return load_cfg(None, ["DIR", str(folder), "DATASET.num_class", "3",
                           "DATASET.class_table", table, "TRAIN.eval_every", "1",
                           "TRAIN.num_epoch", "4", *map(str, opts)])


class TrainingMonitor:
    """The validation, early-stop and metrics hooks of one run, driven as the
    trainer drives them, with ``validate`` replaced by fabricated results."""

    def __init__(self, cfg, is_main: bool, resume_iter: int | None) -> None:
        self.patience = int(cfg.TRAIN.early_stop)
        self.hooks = [ValidationHook(cfg)] + ([EarlyStopHook(cfg)] if self.patience > 0 else []) \
            + [MetricsHook(cfg)]
        self.trainer = SimpleNamespace(
            cfg=cfg, env=DistEnv(), point=None if resume_iter is None else object(),
            global_iter=resume_iter or 0, storage={}, record={}, step=StepResult(), epoch=0,
            iter=0, first_epoch=5, num_epoch=int(cfg.TRAIN.num_epoch), network=None, device=None,
            model=torch.nn.Module(), stop=False, stopped_early=False)
        for hook in self.hooks:
            hook.before_train(self.trainer)

    @property
    def best(self):
        return self.trainer.storage.get("best")

    @property
    def since_best(self) -> int:
        return self.trainer.storage.get("since_best", 0)

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.best is not None and self.since_best >= self.patience

    def iteration(self, epoch, i, global_iter, loss, acc, lrs, data_time, iter_time) -> None:
        t = self.trainer
        t.epoch, t.iter, t.global_iter = epoch, i, global_iter
        t.step = StepResult(loss, acc, lrs, data_time, iter_time)
        for hook in self.hooks:
            hook.after_step(t)

    def end_epoch(self, epoch: int, global_iter: int, val: dict) -> dict:
        t = self.trainer
        t.epoch, t.global_iter, t.record = epoch, global_iter, {}
        real = validation_hook.validate
        validation_hook.validate = lambda *args, **kwargs: val
        try:
            for hook in self.hooks:
                hook.after_epoch(t)
        finally:
            validation_hook.validate = real
        return t.record

    def close(self) -> None:
        for hook in self.hooks:
            hook.after_train(self.trainer)


def _feed(monitor: TrainingMonitor, folder, epochs) -> list[dict]:
    """Write fake epoch checkpoints and pass the fabricated results of ``epochs``."""
    records = []
    for epoch in epochs:
        for kind in ("encoder", "decoder"):
            (folder / f"{kind}_epoch_{epoch}.pth").write_bytes(f"{kind} {epoch}".encode())
        monitor.iteration(epoch, 0, epoch, 1.0, 0.5, (0.01, 0.01), 0.0, 0.1)
        records.append(monitor.end_epoch(epoch, epoch, _val(epoch)))
        if monitor.should_stop:
            break
    return records


@pytest.mark.parametrize("metric, best", [("mean_iou", 2), ("pixel_accuracy", 1),
                                          ("frequency_weighted_iou", 4), ("iou:car", 3),
                                          ("IoU:Car", 3), ("iou:1", 3)])
def test_best_metric_picks_its_own_epoch(tmp_path, metric, best):
    monitor = TrainingMonitor(_cfg(tmp_path, "TRAIN.best_metric", metric), True, None)
    records = _feed(monitor, tmp_path, range(1, 5))
    monitor.close()
    saved = json.loads((tmp_path / BEST_FILE).read_text())
    assert saved["epoch"] == best and saved["metric"] == metric
    assert saved["mean_iou"] == EPOCHS[best][0]
    assert (tmp_path / "encoder_best.pth").read_bytes() == f"encoder {best}".encode()
    assert (tmp_path / "decoder_best.pth").read_bytes() == f"decoder {best}".encode()
    # per-class IoU, the metric's value and the best epoch in every validated record
    last = records[-1]
    assert list(last["val_class_iou"]) == NAMES
    assert last["val_class_iou"]["car"] == pytest.approx(EPOCHS[4][3])
    assert last["best_epoch"] == best and last["best_metric"] == metric
    assert last["best_mean_iou"] == EPOCHS[best][0]
    assert [r["type"] for r in read_metrics(str(tmp_path))].count("epoch") == 4
    if metric == "mean_iou":  # unchanged default: the mean IoU's best epoch
        assert best == max(EPOCHS, key=lambda e: EPOCHS[e][0])


def test_early_stop_counts_validations_without_improvement(tmp_path):
    monitor = TrainingMonitor(_cfg(tmp_path, "TRAIN.early_stop", 2), True, None)
    records = _feed(monitor, tmp_path, range(1, 5))
    monitor.close()
    # best mean IoU at epoch 2, none better at 3 and 4: stop after 4
    assert [r["val_since_best"] for r in records] == [0, 0, 1, 2]
    assert records[-1].get("stopped_early") and monitor.should_stop
    assert not any(r.get("stopped_early") for r in records[:-1])
    # by the IoU of car (best at 3) the same results do not stop
    car = TrainingMonitor(_cfg(tmp_path / "car", "TRAIN.early_stop", 2,
                               "TRAIN.best_metric", "iou:car"), True, None)
    assert len(_feed(car, tmp_path / "car", range(1, 5))) == 4 and not car.should_stop
    car.close()


def test_resume_restores_best_and_count(tmp_path):
    monitor = TrainingMonitor(_cfg(tmp_path), True, None)
    _feed(monitor, tmp_path, range(1, 5))
    monitor.close()
    # resumed after epoch 4 with patience 2: best epoch 2, two validations since
    again = TrainingMonitor(_cfg(tmp_path, "TRAIN.early_stop", 2), True, 4)
    assert again.best["epoch"] == 2 and again.since_best == 2 and again.should_stop
    again.close()
    # resumed after epoch 3 with another metric: the best is chosen again from the records
    other = TrainingMonitor(_cfg(tmp_path, "TRAIN.best_metric", "iou:car"), True, 3)
    assert other.best["epoch"] == 3 and other.since_best == 0
    assert json.loads((tmp_path / BEST_FILE).read_text())["metric"] == "iou:car"
    assert (tmp_path / "encoder_best.pth").read_bytes() == b"encoder 3"
    other.close()


def test_best_metric_errors_list_the_choices():
    names = ["wall", "screen", "car", "screen"]
    with pytest.raises(ConfigError) as err:
        parse_best_metric("iou:cra", names)
    msg = str(err.value)
    assert "TRAIN.best_metric 'iou:cra'" in msg and "did you mean iou:car" in msg
    assert "mean_iou, pixel_accuracy" in msg and "wall, screen, car" in msg
    with pytest.raises(ConfigError, match="is not a validation metric.*frequency_weighted_iou"):
        parse_best_metric("miou", names)
    with pytest.raises(ConfigError, match=r"2 classes are named 'screen'; use iou:1 or iou:3"):
        parse_best_metric("iou:screen", names)
    with pytest.raises(ConfigError, match=r"class index 7 is out of range \(0..3\)"):
        parse_best_metric("iou:7", names)
    assert parse_best_metric("iou:3", names).class_key == "screen [3]"
    assert class_iou_keys(names) == ["wall", "screen [1]", "car", "screen [3]"]
    assert parse_best_metric("iou:screen [3]", names).class_index == 3
    with pytest.raises(ConfigError, match="TRAIN.early_stop 3 counts validations"):
        T.main(load_cfg(None, ["TRAIN.early_stop", "3"]), "cpu")




@pytest.mark.usefixtures("one_thread")
def test_training_stops_early(data, tmp_path):
    root, layout = data
    # learning rate 0 and frozen BatchNorm: every validation equals the first, so
    # with early_stop 1 the run ends after epoch 2 of 5
    opts = tiny_model_opts(root, str(tmp_path), layout["table"], *layout["opts"],
                           "TRAIN.num_epoch", 5, "TRAIN.eval_every", 1, "TRAIN.early_stop", 1,
                           "TRAIN.lr_encoder", 0.0, "TRAIN.lr_decoder", 0.0, "TRAIN.fix_bn", True)
    summary = T.main(load_cfg(None, opts), "cpu")
    assert summary.stopped_early and summary.best_epoch == 1 and summary.global_iter == 6
    assert not (tmp_path / "encoder_epoch_3.pth").exists()
    epochs = [r for r in read_metrics(str(tmp_path)) if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["stopped_early"]
    assert list(epochs[-1]["val_class_iou"]) == ["water", "boat", "pier"]
    log = (tmp_path / "log.txt").read_text()
    assert "Early stop after epoch 2 of 5: mean IoU has not improved for 1 validation " in log
    assert "Best: epoch 1" in log and "encoder_best.pth" in log
    # resuming the stopped run trains nothing more
    again = T.main(load_cfg(None, opts), "cpu", resume="auto")
    assert again.stopped_early and again.global_iter == 6
    assert "Nothing to do: the run stopped early" in (tmp_path / "log.txt").read_text()
