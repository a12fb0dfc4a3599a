"""``mit_semseg.data.tools`` as a library: typed arguments in, dataclasses out,
nothing printed (the ``datatools`` command prints). Progress is reported through
a callback; class statistics live in ``data.stats``."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _custom_data import make_voc
from mit_semseg.config import load_cfg
from mit_semseg.data.classes import label_format
from mit_semseg.data.io import DatasetError
from mit_semseg.data.stats import class_statistics
from mit_semseg.data.tools import (CheckReport, OdgtOptions, OdgtPlan, check_dataset, plan_odgt,
                                   write_odgt_lists)


@pytest.fixture
def voc(tmp_path):
    root = str(tmp_path / "VOC")
    layout = make_voc(root, n=5)  # 6 images, 5 masks
    return root, layout


def test_plan_then_write_without_printing(voc, tmp_path, capsys):
    root, layout = voc
    listed = tmp_path / "train.txt"
    listed.write_text("2007_000003\n2007_000001\nmissing_one\n")
    options = OdgtOptions(images=os.path.join(root, layout["images"]),
                          masks=os.path.join(root, layout["masks"]), train_list=str(listed),
                          root=root, out=str(tmp_path / "lists"))
    plan = plan_odgt(options)
    assert isinstance(plan, OdgtPlan) and plan.root == root
    report = plan.reports["training"]
    assert [os.path.basename(p) for p in report.images_without_mask] == ["2007_000005.jpg"]
    # the list's samples in its order; validation gets every other pair
    assert [os.path.basename(r["fpath_img"]) for r in plan.lists["training"]] == \
        ["2007_000003.jpg", "2007_000001.jpg"]
    assert len(plan.lists["validation"]) == 3
    assert plan.listed["training"].not_found == [
        f"{listed}, line 3: missing_one: no image or mask with this name"]
    assert plan.errors == 1
    assert not os.path.exists(tmp_path / "lists")  # planning writes nothing
    done = write_odgt_lists(plan)
    assert done.counts == {"training": 2, "validation": 3}
    with open(done.written["training"]) as fh:
        first = json.loads(fh.readline())
    assert first["fpath_img"] == f"{layout['images']}/2007_000003.jpg"
    assert "missing_one" in open(done.report).read()
    assert capsys.readouterr() == ("", "")


def test_odgt_options_refuse_contradictions_and_empty_plans(tmp_path):
    with pytest.raises(ValueError, match="val_images and val_masks"):
        OdgtOptions(images="a", masks="b", val_images="c")
    with pytest.raises(ValueError, match="choose the split"):
        OdgtOptions(images="a", masks="b", train_list="t.txt", val_fraction=0.2)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    plan = plan_odgt(OdgtOptions(images=str(tmp_path / "images"),
                                 masks=str(tmp_path / "masks")))
    with pytest.raises(DatasetError, match="no image/mask pairs found"):
        write_odgt_lists(plan)
    assert not os.path.exists(tmp_path / "odgt_report.tsv")


def test_check_dataset_reports_through_a_callback(voc, tmp_path, capsys):
    root, layout = voc
    plan = plan_odgt(OdgtOptions(images=os.path.join(root, layout["images"]),
                                 masks=os.path.join(root, layout["masks"]), root=root,
                                 val_fraction=0.4, seed=1))
    lists = write_odgt_lists(plan).written
    with open(lists["training"], "a") as fh:  # a line whose mask is gone
        fh.write(json.dumps({"fpath_img": "JPEGImages/2007_000000.jpg",
                             "fpath_segm": "SegmentationClass/gone.png",
                             "width": 1, "height": 1}) + "\n")
    cfg = load_cfg(None, ["DATASET.root_dataset", root, "DATASET.list_train", lists["training"],
                          "DATASET.list_val", lists["validation"], "DATASET.num_class", "3",
                          "DATASET.class_table", layout["table"], *layout["opts"]])
    calls = []
    report = check_dataset(cfg, workers=1,
                           progress=lambda done, total: calls.append((done, total)))
    assert isinstance(report, CheckReport)
    assert report.num_samples == {"train": 4, "val": 2}
    assert calls == [(i, 6) for i in range(7)]
    assert len(report.errors) == 2 and all("training.odgt, line 4" in e for e in report.errors)
    assert report.names == {0: "background", 1: "cat", 2: "dog"}
    assert report.label_format == "zero_based"
    # the class statistics of a list count what the check counted
    stats = class_statistics(lists["validation"], root, label_format(cfg), 3, workers=1)
    assert np.array_equal(stats.pixels, report.pixels["val"][1:])
    assert capsys.readouterr() == ("", "")
