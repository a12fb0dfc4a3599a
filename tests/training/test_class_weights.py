"""Class weights of the loss: the rules' values, the config checks, the weights
reaching NLLLoss, the counts cached in DIR/class_weights.json, and the
suggestion printed by ``datatools check``."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

import mit_semseg.training as T
import mit_semseg.training.loss as L
from _custom_data import make_voc, tiny_model_opts
from mit_semseg.commands import datatools
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.data.classes import label_format
from mit_semseg.data.tools import class_statistics, class_weights_from_counts
from mit_semseg.training.monitor import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rules_by_hand():
    # class 0: 600 px in 3 images of 300 labeled px; class 1: 50 px in 1 image of
    # 300 px; class 2: 250 px in 2 images of 300 px; class 3: never seen
    pixels, present = np.array([600, 50, 250, 0]), np.array([900, 300, 600, 0])
    freq = np.array([600 / 900, 50 / 300, 250 / 600])
    want = np.median(freq) / freq
    got = class_weights_from_counts(pixels, present, "median_frequency")
    assert np.allclose(got[:3], want) and got[3] == 1.0
    assert np.allclose(got[:3], [0.625, 2.5, 1.0])
    share = pixels[:3] / 900
    inverse = class_weights_from_counts(pixels, present, "inverse")
    assert np.allclose(inverse[:3], 1 / (3 * share)) and inverse[3] == 1.0
    assert np.allclose(class_weights_from_counts(pixels, present, "inverse_sqrt")[:3],
                       np.sqrt(inverse[:3]))
    # a balanced list gets equal weights under every rule
    for rule in ("median_frequency", "inverse", "inverse_sqrt"):
        assert np.allclose(class_weights_from_counts([5, 5], [10, 10], rule), 1.0)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc") / "voc")
    layout = make_voc(root)
    assert datatools.main(["odgt", "--images", os.path.join(root, layout["images"]),
                           "--masks", os.path.join(root, layout["masks"]), "--root", root,
                           "--val-fraction", "0.25", "--seed", "1"]) == 0
    return root, layout


def _opts(voc, out, *extra):
    root, layout = voc
    return tiny_model_opts(root, str(out), layout["table"], *layout["opts"], *extra)


def test_config_checks(voc, tmp_path):
    for extra, match in (
            (("TRAIN.class_weights", "[1.0, 2.0]"), "has 2 numbers but DATASET.num_class is 3"),
            (("TRAIN.class_weights", "[1.0, -2.0, 1.0]"), "finite numbers >= 0"),
            (("TRAIN.class_weight_rule", "median"), "'median' is not one of median_frequency"),
            (("TRAIN.class_weights", "[1, 1, 1]", "TRAIN.class_weight_rule", "inverse"),
             "keep one of them")):
        with pytest.raises(ConfigError, match=match):
            T.main(load_cfg(None, _opts(voc, tmp_path, *extra)), "cpu")


def test_weights_reach_the_loss(voc, tmp_path, monkeypatch):
    made = []
    real = L.make_criterion
    monkeypatch.setattr("mit_semseg.training.loss.make_criterion",
                        lambda w: made.append(real(w)) or made[-1])

    def first_loss(out, *extra):
        T.main(load_cfg(None, _opts(voc, out, "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 1,
                                    *extra)), "cpu")
        return read_metrics(str(out))[0]["loss"]

    plain = first_loss(tmp_path / "plain")
    assert made[-1].weight is None  # the default: the original's unweighted loss
    ones = first_loss(tmp_path / "ones", "TRAIN.class_weights", "[1.0, 1.0, 1.0]")
    assert torch.equal(made[-1].weight, torch.ones(3))
    heavy = first_loss(tmp_path / "heavy", "TRAIN.class_weights", "[0.1, 5.0, 1.0]")
    assert torch.equal(made[-1].weight, torch.tensor([0.1, 5.0, 1.0]))
    assert ones == pytest.approx(plain, rel=1e-5) and heavy != pytest.approx(plain, rel=1e-3)
    assert "Class weights of the loss (TRAIN.class_weights)" in \
        (tmp_path / "heavy" / "log.txt").read_text()


def test_rule_computed_logged_and_cached(voc, tmp_path, monkeypatch):
    opts = _opts(voc, tmp_path, "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 1,
                 "TRAIN.class_weight_rule", "median_frequency")
    cfg = load_cfg(None, opts)
    stats = class_statistics(cfg.DATASET.list_train, cfg.DATASET.root_dataset,
                             label_format(cfg), 3, workers=1)
    want = stats.weights("median_frequency")
    T.main(cfg, "cpu")
    saved = json.loads((tmp_path / L.WEIGHTS_FILE).read_text())
    assert saved["rule"] == "median_frequency" and np.allclose(saved["weights"], want)
    assert saved["pixels"] == stats.pixels.tolist() and saved["num_samples"] == 6
    log = (tmp_path / "log.txt").read_text()
    assert "TRAIN.class_weight_rule median_frequency over 6 training masks" in log
    assert "background: " in log and "% of pixels" in log
    # a second start reuses the counts instead of reading every mask again
    monkeypatch.setattr(L, "class_statistics", lambda *a, **k: pytest.fail("counted again"))
    weights = L.class_weights(load_cfg(None, opts))
    assert torch.allclose(weights, torch.tensor(want, dtype=torch.float32))


def test_check_prints_suggested_weights(voc, tmp_path, capsys):
    opts = _opts(voc, tmp_path)
    assert datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *opts]) == 0
    out = capsys.readouterr().out
    assert "mf weight" in out and "inv weight" in out
    cfg = load_cfg(None, opts)
    stats = class_statistics(cfg.DATASET.list_train, cfg.DATASET.root_dataset,
                             label_format(cfg), 3, workers=1)
    lines = out.splitlines()
    for title, rule in (("median frequency", "median_frequency"), ("inverse share", "inverse")):
        line = next(li for li in lines if li.strip().startswith(title))
        printed = json.loads(re.search(r'TRAIN.class_weights "(\[.*?\])"', line).group(1))
        assert np.allclose(printed, stats.weights(rule), rtol=1e-3)
    assert "TRAIN.class_weight_rule median_frequency|inverse|inverse_sqrt" in out
