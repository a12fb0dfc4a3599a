"""Synthetic scene data: determinism, odgt validity, label range, orientations,
and that the demo config reads it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mit_semseg.config import load_cfg
from mit_semseg.data.datasets import TrainDataset, ValDataset
from mit_semseg.commands.synthetic import main
from mit_semseg.data.synthetic import CLASS_NAMES, MAX_CLASSES, make_synthetic_dataset

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_odgt(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def tree_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_deterministic_from_seed(tmp_path):
    make_synthetic_dataset(str(tmp_path / "a"), num_train=6, num_val=2, seed=3)
    make_synthetic_dataset(str(tmp_path / "b"), num_train=6, num_val=2, seed=3)
    make_synthetic_dataset(str(tmp_path / "c"), num_train=6, num_val=2, seed=4)
    a, b, c = (tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    # image i depends only on (seed, split, i): a longer run starts the same
    make_synthetic_dataset(str(tmp_path / "d"), num_train=9, num_val=2, seed=3)
    d = tree_bytes(tmp_path / "d")
    assert all(d[k] == v for k, v in a.items() if not k.endswith(".odgt"))


def test_odgt_files_labels_and_orientations(tmp_path):
    paths = make_synthetic_dataset(str(tmp_path), num_train=12, num_val=4, size_range=(40, 90), seed=0)
    assert set(paths) == {"training", "validation", "classes"}
    from mit_semseg.data.classes import read_class_table
    table = read_class_table(paths["classes"], MAX_CLASSES)
    assert table.names == CLASS_NAMES and table.colors.shape == (MAX_CLASSES, 3)
    for split, count in (("training", 12), ("validation", 4)):
        recs = read_odgt(tmp_path / f"{split}.odgt")
        assert len(recs) == count and paths[split] == str(tmp_path / f"{split}.odgt")
        portrait = landscape = 0
        classes = set()
        for rec in recs:
            assert set(rec) == {"fpath_img", "fpath_segm", "width", "height"}
            assert rec["fpath_img"].startswith(f"images/{split}/") and rec["fpath_img"].endswith(".jpg")
            assert rec["fpath_segm"].startswith(f"annotations/{split}/")
            img = Image.open(tmp_path / rec["fpath_img"])
            seg = Image.open(tmp_path / rec["fpath_segm"])
            assert img.mode == "RGB" and seg.mode == "L"
            assert img.size == seg.size == (rec["width"], rec["height"])
            assert 40 <= rec["width"] <= 90 and 40 <= rec["height"] <= 90
            labels = np.array(seg)
            assert labels.max() <= MAX_CLASSES
            classes |= set(np.unique(labels).tolist())
            portrait += rec["height"] > rec["width"]
            landscape += rec["height"] <= rec["width"]
        assert portrait >= 1 and landscape >= 1
        assert len(classes - {0}) >= 4
    assert 0 in classes  # some pixels are unlabeled


def test_fewer_classes_and_argument_checks(tmp_path):
    make_synthetic_dataset(str(tmp_path), num_train=8, num_val=0, num_class=3, seed=1)
    for rec in read_odgt(tmp_path / "training.odgt"):
        assert np.array(Image.open(tmp_path / rec["fpath_segm"])).max() <= 3
    assert read_odgt(tmp_path / "validation.odgt") == []
    with pytest.raises(ValueError, match="num_class"):
        make_synthetic_dataset(str(tmp_path), num_class=MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="size_range"):
        make_synthetic_dataset(str(tmp_path), size_range=(100, 50))


def test_cli(tmp_path, capsys):
    main(["--root", str(tmp_path / "s"), "--num-train", "3", "--num-val", "1", "--seed", "2"])
    assert len(read_odgt(tmp_path / "s" / "training.odgt")) == 3
    assert len(read_odgt(tmp_path / "s" / "validation.odgt")) == 1
    assert "3 training" in capsys.readouterr().out


def test_demo_config_reads_the_data(tmp_path):
    cfg = load_cfg(os.path.join(ROOT_DIR, "config", "synthetic-demo.yaml"))
    assert cfg.DATASET.num_class == MAX_CLASSES == len(CLASS_NAMES)
    assert cfg.TRAIN.ignore_padding and not cfg.MODEL.pretrained
    assert cfg.VAL.checkpoint == cfg.TEST.checkpoint == f"epoch_{cfg.TRAIN.num_epoch}.pth"
    make_synthetic_dataset(str(tmp_path), num_train=10, num_val=2, seed=0)
    train = TrainDataset(str(tmp_path), str(tmp_path / "training.odgt"), cfg.DATASET,
                         batch_per_gpu=cfg.TRAIN.batch_size_per_gpu, seed=cfg.TRAIN.seed,
                         ignore_padding=cfg.TRAIN.ignore_padding)
    batch = train[0]
    n, _, h, w = batch["img_data"].shape
    assert n == cfg.TRAIN.batch_size_per_gpu and h % 8 == 0 and w % 8 == 0
    assert batch["seg_label"].shape == (n, h // 8, w // 8)
    assert batch["seg_label"].min() >= -1 and batch["seg_label"].max() < cfg.DATASET.num_class
    val = ValDataset(str(tmp_path), str(tmp_path / "validation.odgt"), cfg.DATASET)[0]
    assert len(val["img_data"]) == len(cfg.DATASET.imgSizes)
