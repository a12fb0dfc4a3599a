"""A dataset's own splits and tables, as given: ``datatools odgt --train-list /
--val-list`` (VOC's ImageSets/Segmentation lists) and colour-coded masks whose
class table has no "unlabeled" row (one message, or DATASET.ignore_colors)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from _custom_data import (NAMES, RGB_MASK_COLORS, make_cityscapes, make_rgb, make_voc,
                          tiny_model_opts, write_table)
from mit_semseg.commands import datatools
from mit_semseg.config import load_cfg
from mit_semseg.data.classes import label_format
from mit_semseg.data.io import DatasetError, read_annotation


def _stems(path):
    with open(path) as fh:
        return [os.path.splitext(os.path.basename(json.loads(line)["fpath_img"]))[0]
                for line in fh if line.strip()]


@pytest.fixture
def voc(tmp_path):
    """A VOC-like folder (9 images, 8 masks) with ImageSets/Segmentation lists."""
    root = str(tmp_path / "VOC")
    layout = make_voc(root)
    sets = os.path.join(root, "ImageSets", "Segmentation")
    os.makedirs(sets)
    train = ["2007_000005", "2007_000001", "2007_000006", "2007_000002", "2007_000007"]
    val = ["2007_000003", "2007_000000", "2007_000004"]
    for name, stems in (("train", train), ("val", val), ("trainval", train + val)):
        with open(os.path.join(sets, f"{name}.txt"), "w") as fh:
            fh.write("\n".join(stems) + "\n")
    return root, layout, sets, train, val


def _odgt(root, layout, *extra, out="lists"):
    return datatools.main(["odgt", "--images", os.path.join(root, layout["images"]),
                           "--masks", os.path.join(root, layout["masks"]), "--root", root,
                           "--out", os.path.join(root, out), *extra])


def test_voc_lists_reproduce_membership_and_order(voc, capsys):
    root, layout, sets, train, val = voc
    status = _odgt(root, layout, "--train-list", os.path.join(sets, "train.txt"),
                   "--val-list", os.path.join(sets, "val.txt"))
    out = capsys.readouterr().out
    assert status == 0, out
    assert _stems(os.path.join(root, "lists", "training.odgt")) == train
    assert _stems(os.path.join(root, "lists", "validation.odgt")) == val
    assert "training: 5 samples" in out and "validation: 3 samples" in out
    assert "neither list" not in out  # every mask is in one of the two lists


def test_one_list_gives_the_other_split_the_rest(voc, capsys):
    root, layout, sets, train, val = voc
    assert _odgt(root, layout, "--val-list", os.path.join(sets, "val.txt")) == 0
    assert _stems(os.path.join(root, "lists", "validation.odgt")) == val
    assert _stems(os.path.join(root, "lists", "training.odgt")) == sorted(train)
    capsys.readouterr()


def test_listed_but_not_found_is_reported(voc, tmp_path, capsys):
    root, layout, sets, train, val = voc
    listing = tmp_path / "mine.txt"
    listing.write_text("# my split\n"
                       "JPEGImages/2007_000001.jpg\n"     # a path with extension: found
                       "2007_000002  extra fields\n"     # first field only: found
                       "2007_000099\n"                   # nothing by that name
                       "2007_000008\n"                   # image without mask
                       "2007_000001\n")                  # a repeat
    status = _odgt(root, layout, "--train-list", str(listing), "--val-list",
                   os.path.join(sets, "val.txt"))
    captured = capsys.readouterr()
    assert status == 1
    assert _stems(os.path.join(root, "lists", "training.odgt")) == ["2007_000001", "2007_000002"]
    out = captured.out
    assert "[training] listed but not found (left out): 2" in out
    assert f"{listing}, line 4: 2007_000099: no image or mask with this name" in out
    assert "line 5: 2007_000008: image" in out and "has no mask" in out
    assert "listed twice (kept once): 1" in out and "repeats line 2" in out
    assert "3 pairs are in neither list (left out)" in out
    report = open(os.path.join(root, "lists", "odgt_report.tsv")).read()
    assert report.count("listed but not found") == 2
    assert "2 problem(s) above" in captured.err


def test_lists_with_folders_and_suffixes(tmp_path, capsys):
    """Cityscapes-like keys (city folder + stem): an entry may be a path with the
    image or mask suffix, or a bare stem when only one pair has it."""
    root = str(tmp_path / "city")
    layout = make_cityscapes(root)
    listing = tmp_path / "val.txt"
    listing.write_text("bochum/bochum_000000_000001_leftImg8bit.png\n"
                       "aachen/aachen_000000_000002_gtFine_labelTrainIds.png\n"
                       "aachen_000000_000000\n")
    assert _odgt(root, layout, "--val-list", str(listing), "--image-suffix", "_leftImg8bit",
                 "--mask-suffix", "_gtFine_labelTrainIds") == 0, capsys.readouterr().out
    val = _stems(os.path.join(root, "lists", "validation.odgt"))
    assert val == ["bochum_000000_000001_leftImg8bit", "aachen_000000_000002_leftImg8bit",
                   "aachen_000000_000000_leftImg8bit"]
    assert len(_stems(os.path.join(root, "lists", "training.odgt"))) == 3
    capsys.readouterr()


def test_lists_and_fraction_are_a_usage_error(voc, capsys):
    root, layout, sets, *_ = voc
    assert _odgt(root, layout, "--val-list", os.path.join(sets, "val.txt"),
                 "--val-fraction", "0.2") == 2
    assert "leave out --val-fraction" in capsys.readouterr().err
    assert _odgt(root, layout, "--val-list", str(os.path.join(sets, "none.txt"))) == 1
    assert "split list not found" in capsys.readouterr().err


# ---------------------------------------------------------------- colour-coded masks


@pytest.fixture
def rgb_without_unlabeled(tmp_path):
    """Colour-coded masks with black unlabeled borders, and a 1..N class table
    without the Idx-0 "unlabeled" row."""
    root = str(tmp_path / "rgb")
    layout = make_rgb(root)
    write_table(layout["table"], NAMES["rgb"], RGB_MASK_COLORS, first_idx=1)
    assert datatools.main(["odgt", "--images", os.path.join(root, "images"), "--masks",
                           os.path.join(root, "masks"), "--root", root,
                           "--val-fraction", "0.25"]) == 0
    return root, layout


def test_missing_unlabeled_row_is_one_message(rgb_without_unlabeled, tmp_path, capsys):
    root, layout = rgb_without_unlabeled
    capsys.readouterr()
    opts = tiny_model_opts(root, str(tmp_path / "ckpt"), layout["table"], *layout["opts"])
    assert datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *opts]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, out
    error = errors[0]
    assert "colour (0, 0, 0) is not in the class table" in error and "in 8 of 8 masks" in error
    assert f"add the row '0,unlabeled,0,0,0' to {layout['table']}" in error
    assert "DATASET.ignore_colors [[0, 0, 0]]" in error
    assert "1 error(s)" in out

    # the key the message names makes the same data check clean
    assert datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *opts,
                           "DATASET.ignore_colors", "[[0, 0, 0]]"]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_table_layouts_get_their_own_hint(rgb_without_unlabeled, tmp_path, capsys):
    root, layout = rgb_without_unlabeled
    write_table(layout["table"], NAMES["rgb"], RGB_MASK_COLORS, first_idx=0)
    opts = tiny_model_opts(root, str(tmp_path / "ckpt"), layout["table"], *layout["opts"])
    capsys.readouterr()
    assert datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *opts]) == 1
    assert "number the classes of" in capsys.readouterr().out


def test_ignore_colors_reads_as_unlabeled(rgb_without_unlabeled, tmp_path):
    root, layout = rgb_without_unlabeled
    opts = tiny_model_opts(root, str(tmp_path), layout["table"], *layout["opts"])
    mask = os.path.join(root, "masks", "img0.png")
    with pytest.raises(DatasetError, match=r"\(0, 0, 0\).*DATASET.ignore_colors \[\[0, 0, 0\]\]"):
        read_annotation(mask, 3, label_format(load_cfg(None, opts)))
    for value in ("[[0, 0, 0]]", "[0, 0, 0]"):
        fmt = label_format(load_cfg(None, [*opts, "DATASET.ignore_colors", value]))
        labels = read_annotation(mask, 3, fmt)
        black = np.all(np.asarray(Image.open(mask).convert("RGB")) == 0, axis=2)
        assert black.any() and (labels[black] == 0).all() and (labels[~black] > 0).all()
    with pytest.raises(DatasetError, match="DATASET.ignore_colors must be a list of"):
        label_format(load_cfg(None, [*opts, "DATASET.ignore_colors", "[[0, 0]]"]))


def test_class_statistics_name_the_first_bad_mask(rgb_without_unlabeled, tmp_path):
    from mit_semseg.data.tools import class_statistics
    root, layout = rgb_without_unlabeled
    cfg = load_cfg(None, tiny_model_opts(root, str(tmp_path), layout["table"], *layout["opts"]))
    with pytest.raises(DatasetError, match=r"training.odgt, line 1: .*img\d.png: colours not in "
                                           r"the class table.*ignore_colors.*datatools check"):
        class_statistics(cfg.DATASET.list_train, root, label_format(cfg), 3, workers=1)
