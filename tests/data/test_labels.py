"""Label conventions (DATASET.label_format) and class tables (DATASET.class_table)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mit_semseg.data.classes import (ClassTableError, class_table, generated_palette, label_format,
                                read_class_table)
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.data.datasets import ValDataset
from mit_semseg.inference import Segmenter
from mit_semseg.data.io import DatasetError, LabelFormat, read_annotation
from mit_semseg.data.classes import ade20k_colors, class_colors, class_names


def _png(path, arr, mode=None, palette=None):
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return str(path)


def test_zero_based_with_ignore_value(tmp_path):
    arr = np.array([[0, 1, 2], [255, 2, 0]], np.uint8)
    path = _png(tmp_path / "m.png", arr)
    got = read_annotation(path, label_format=LabelFormat("zero_based", 3, 255))
    assert got.tolist() == [[1, 2, 3], [0, 3, 1]]  # ADE20K convention: 0 = unlabeled
    bad = _png(tmp_path / "bad.png", np.array([[0, 3, 3, 254]], np.uint8))
    with pytest.raises(DatasetError) as exc:
        read_annotation(bad, label_format=LabelFormat("zero_based", 3, 255))
    msg = str(exc.value)
    assert msg.startswith(bad) and "3 (2 px)" in msg and "254 (1 px)" in msg and "0..2" in msg


def test_palette_png_read_as_indices(tmp_path):
    idx = np.array([[0, 1], [2, 255]], np.uint8)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [9] * (3 * 253)
    path = _png(tmp_path / "voc.png", idx, "P", palette)
    assert read_annotation(path, label_format=LabelFormat("zero_based", 21, 255)).tolist() == \
        [[1, 2], [3, 0]]


def test_ade20k_default_unchanged_and_lists_values(tmp_path):
    arr = np.array([[0, 5, 11, 12, 12]], np.uint8)
    path = _png(tmp_path / "a.png", arr)
    assert read_annotation(path).tolist() == arr.tolist()
    assert read_annotation(path, 12).dtype == np.uint8
    with pytest.raises(DatasetError, match=r"above num_class=10 .*11 \(1 px\), 12 \(2 px\)"):
        read_annotation(path, 10)


def test_rgb_masks_through_the_class_table(tmp_path):
    table = tmp_path / "classes.csv"
    table.write_text("Idx,Name,R,G,B\n0,void,0,0,0\n1,sky,0,0,255\n2,road;street,128,64,128\n")
    cfg = load_cfg(None, ["DATASET.num_class", "2", "DATASET.label_format", "rgb",
                          "DATASET.class_table", str(table)])
    fmt = label_format(cfg)
    rgb = np.array([[[0, 0, 255], [128, 64, 128], [0, 0, 0]]], np.uint8)
    path = _png(tmp_path / "m.png", rgb)
    assert read_annotation(path, label_format=fmt).tolist() == [[1, 2, 0]]
    rgb[0, 2] = (1, 2, 3)
    bad = _png(tmp_path / "bad.png", rgb)
    with pytest.raises(DatasetError, match=r"bad.png: colours not in the class table.*\(1, 2, 3\) \(1 px\)"):
        read_annotation(bad, label_format=fmt)
    assert class_names(cfg) == {0: "sky", 1: "road"}
    assert class_colors(cfg).tolist() == [[0, 0, 255], [128, 64, 128]]


def test_dataset_error_names_odgt_line_and_values(tmp_path):
    Image.new("RGB", (4, 2)).save(tmp_path / "i.jpg")
    _png(tmp_path / "m.png", np.array([[0, 1, 7, 7], [1, 1, 1, 1]], np.uint8))
    (tmp_path / "val.odgt").write_text('{"fpath_img": "i.jpg", "fpath_segm": "m.png", '
                                       '"width": 4, "height": 2}\n')
    cfg = load_cfg(None, ["DATASET.num_class", "3", "DATASET.label_format", "zero_based",
                          "DATASET.imgSizes", "(8,)"])
    ds = ValDataset(str(tmp_path), str(tmp_path / "val.odgt"), cfg.DATASET)
    with pytest.raises(DatasetError, match=r"val.odgt, line 1: .*m.png: .*7 \(2 px\)"):
        ds[0]


def test_label_format_config_errors(tmp_path):
    # checked when the config is loaded (config/schema.py), before any mask is read
    with pytest.raises(ConfigError, match=r"'voc' is not one of \['ade20k', 'zero_based', 'rgb'\]"):
        load_cfg(None, ["DATASET.label_format", "voc"])
    with pytest.raises(DatasetError, match="needs DATASET.class_table"):
        label_format(load_cfg(None, ["DATASET.label_format", "rgb"]))
    with pytest.raises(DatasetError, match="ignore_label 1 is a class value"):
        label_format(load_cfg(None, ["DATASET.label_format", "zero_based", "DATASET.num_class",
                                     "3", "DATASET.ignore_label", "1"]))
    no_colors = tmp_path / "names.csv"
    no_colors.write_text("Name\na\nb\n")
    with pytest.raises(DatasetError, match="needs R,G,B columns"):
        label_format(load_cfg(None, ["DATASET.label_format", "rgb", "DATASET.num_class", "2",
                                     "DATASET.class_table", str(no_colors)]))


def test_class_table_numbering_and_errors(tmp_path):
    zero = tmp_path / "zero.csv"
    zero.write_text("Idx,Name,R,G,B\n0,road,1,1,1\n1,car,2,2,2\n")
    assert read_class_table(str(zero), 2).names == ("road", "car")
    # the ADE20K file itself: 1-based, extra columns, ';' synonyms, no colours
    from mit_semseg.data.classes import _ade20k_file
    ade = read_class_table(_ade20k_file("object150_info.csv"), 150)
    assert ade.names[1] == "building" and not ade.has_colors
    cases = {"Idx,Name\n1,a\n3,b\n": "Idx must number the rows",
             "Idx,Label\n1,a\n": "no 'Name' column",
             "Name,R,G\na,1,2\n": "all of R, G, B or none",
             "Name,R,G,B\na,1,2,300\n": r"line 2: column B must be in 0..255, got 300",
             "Name,R,G,B\na,1,x,3\n": r"line 2: column G must be an integer",
             "Name\na\nb\nc\n": "3 classes in the table but DATASET.num_class is 2"}
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ClassTableError, match=message):
            read_class_table(str(bad), 2)
    missing = load_cfg(None, ["DATASET.class_table", "nope.csv", "DATASET.num_class", "2",
                              "DATASET.root_dataset", str(tmp_path)])
    with pytest.raises(ClassTableError, match="class table not found: nope.csv"):
        class_table(missing, strict=True)
    # showing results without the dataset folder: a warning, then the defaults
    with pytest.warns(UserWarning, match="nope.csv.*showing default class names"):
        assert class_names(missing) == {0: "class_0", 1: "class_1"}


def test_relative_table_found_under_root_dataset(tmp_path, monkeypatch):
    (tmp_path / "t.csv").write_text("Name\nx\ny\n")
    monkeypatch.chdir("/")
    cfg = load_cfg(None, ["DATASET.num_class", "2", "DATASET.class_table", "t.csv",
                          "DATASET.root_dataset", str(tmp_path)])
    assert class_names(cfg) == {0: "x", 1: "y"}


def test_defaults_without_table():
    cfg = load_cfg(None, [])
    assert cfg.DATASET.label_format == "ade20k" and cfg.DATASET.class_table == ""
    assert class_names(cfg)[0] == "wall" and np.array_equal(class_colors(cfg), ade20k_colors())
    assert class_names(8)[7] == "class_7"
    for n in (8, 150, 151, 400):
        colors = class_colors(n)
        assert colors.shape == (n, 3) and colors.dtype == np.uint8
    big = generated_palette(400)
    # beyond ADE20K's 150 (which repeat one colour), every new colour is distinct
    assert len({tuple(c) for c in big.tolist()}) == 399
    assert np.array_equal(big[:150], ade20k_colors())


def test_segmenter_names_and_colors_from_the_table(tmp_path):
    from mit_semseg.inference import InferenceEngine
    from mit_semseg.models import ModelBuilder, SegmentationNetwork
    table = tmp_path / "t.csv"
    table.write_text("Name,R,G,B\nsky,0,0,255\nroad,9,9,9\n")
    cfg = load_cfg(None, ["DATASET.num_class", "2", "DATASET.class_table", str(table),
                          "DATASET.imgSizes", "(32,)"])
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 320, 2, use_softmax=True)
    seg = Segmenter(InferenceEngine(SegmentationNetwork(enc, dec), device="cpu"), cfg.DATASET)
    assert seg.names == {0: "sky", 1: "road"}
    assert seg.colorize(np.array([[0, 1]])).tolist() == [[[0, 0, 255], [9, 9, 9]]]
    assert seg.describe(np.array([[1, 1, 0, 1]]))[0].name == "road"
