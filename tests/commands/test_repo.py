"""Repository-level contracts: the CI runs the README's test command; the
package data ships; the presets load."""
import os
import re

import numpy as np
import pytest

from mit_semseg.config import ConfigError, load_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q tests'


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
        return fh.read()


def test_ci_runs_the_readme_test_command():
    readme = _read("README.md")
    setup = readme[readme.index("## Set up"):]
    blocks = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert blocks[1].strip() == TEST_COMMAND
    assert TEST_COMMAND in _read(".ci/run").splitlines()


PRESETS = ["ade20k-hrnetv2", "ade20k-mobilenetv2dilated-c1_deepsup",
           "ade20k-resnet18dilated-ppm_deepsup", "ade20k-resnet50dilated-ppm_deepsup",
           "ade20k-resnet101dilated-ppm_deepsup", "ade20k-resnet50-upernet",
           "ade20k-resnet101-upernet"]


@pytest.mark.parametrize("name", PRESETS)
def test_released_presets_load_unchanged(name):
    cfg = load_cfg(os.path.join(ROOT, "config", name + ".yaml"))
    assert cfg.DATASET.imgSizes == (300, 375, 450, 525, 600)
    assert cfg.DATASET.num_class == 150
    assert cfg.DIR.startswith("ckpt/ade20k-")


def test_unknown_config_keys_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  arch_enc: resnet50\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'MODEL.arch_enc'"):
        load_cfg(str(bad))
    with pytest.raises(ConfigError, match=r"unknown config key 'TRAIN.lr'"):
        load_cfg(None, ["TRAIN.lr", "0.1"])
    with pytest.raises(ConfigError, match="no value"):
        load_cfg(None, ["TRAIN.lr_pow"])


def test_original_defaults_kept():
    cfg = load_cfg()
    assert cfg.DIR == "ckpt/ade20k-resnet50dilated-ppm_deepsup"
    assert (cfg.DATASET.imgMaxSize, cfg.DATASET.padding_constant) == (1000, 8)
    assert (cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.MODEL.fc_dim) == \
        ("resnet50dilated", "ppm_deepsup", 2048)
    assert (cfg.TRAIN.lr_encoder, cfg.TRAIN.lr_pow, cfg.TRAIN.beta1, cfg.TRAIN.weight_decay) == \
        (0.02, 0.9, 0.9, 1e-4)
    assert (cfg.TRAIN.epoch_iters, cfg.TRAIN.num_epoch, cfg.TRAIN.seed) == (5000, 20, 304)
    assert cfg.VAL.checkpoint == cfg.TEST.checkpoint == "epoch_20.pth"


def test_every_default_key_is_commented():
    src = _read("mit_semseg/config/defaults.py").splitlines()
    for i, line in enumerate(src):
        if re.match(r'(_C(\.\w+)+ = (?!CN\()|\s+"\w+": )', line):
            assert src[i - 1].lstrip().startswith("#"), f"defaults.py:{i + 1} has no comment"


def test_class_tables_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from mit_semseg.data.classes import ade20k_colors, ade20k_names, class_names
    assert ade20k_colors().shape == (150, 3)
    names = ade20k_names()
    assert names[0] == "wall" and len(names) == 150
    assert class_names(8)[7] == "class_7"


def test_colour_csv_holds_the_original_mat_colours():
    """data/color150.csv (read at start-up without scipy.io) and the original's
    data/color150.mat (kept for code that loads it) hold the same colours."""
    from scipy.io import loadmat

    from mit_semseg.data.classes import _ade20k_file, ade20k_colors
    mat = loadmat(_ade20k_file("color150.mat"))["colors"]
    assert mat.shape == (150, 3) and np.array_equal(ade20k_colors(), mat)
