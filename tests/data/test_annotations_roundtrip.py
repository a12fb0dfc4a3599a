"""Round trips that lose nothing: masks of the synthetic demo set -> each format ->
imported masks give the same labels (exactly for COCO RLE, Label Studio brushes and
CVAT masks; LabelMe polygons exactly at tolerance 0, within the measured share at
the default tolerance), class names and ids kept; the brush RLE matches Label
Studio's; python -m mit_semseg prelabel writes all formats and they import back
to its label maps."""
from __future__ import annotations

import json
import os
import numpy as np
import pytest

from _support import CFG, make_tiny_checkpoint, tiny_opts
from mit_semseg.data.annotations import (CocoWriter, CvatMaskWriter, LabelMeWriter,
                                         LabelStudioWriter, import_annotations)
from mit_semseg.data.annotations.labelstudio import decode_brush_rle, encode_brush_rle
from mit_semseg.data.classes import read_class_table
from mit_semseg.data.datasets import read_odgt_lines
from mit_semseg.data.labelmap import read_label_map
from mit_semseg.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic demo set (6 images) and its masks: {relative image path: labels}."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, num_train=6, num_val=0)
    table = read_class_table(os.path.join(root, "classes.csv"))
    masks = {}
    images = os.path.join(root, "images")
    for _, rec, _ in read_odgt_lines(os.path.join(root, "training.odgt")):
        rel = os.path.relpath(os.path.join(root, rec["fpath_img"]), images).replace(os.sep, "/")
        masks[rel] = read_label_map(os.path.join(root, rec["fpath_segm"]), table.num_class)
    assert any((m < 0).any() for m in masks.values())  # unlabeled outlines, as ADE20K
    return root, table, masks


def _imported(report, rel: str) -> np.ndarray:
    stem = os.path.splitext(rel)[0]
    return read_label_map(os.path.join(report.out_dir, "annotations", stem + ".png"),
                          len(report.class_names))


def _changed_share(report, masks) -> float:
    changed = sum(int((_imported(report, rel) != lab).sum()) for rel, lab in masks.items())
    return changed / sum(lab.size for lab in masks.values())


def _assert_exact(report, masks, table):
    assert report.ok, report.summary()
    assert report.class_names == table.names  # names and ids kept
    assert len(report.samples) == len(masks)
    for rel, lab in masks.items():
        assert np.array_equal(_imported(report, rel), lab), rel


def test_coco_rle_round_trip_is_exact(synthetic, tmp_path):
    pytest.importorskip("pycocotools")
    root, table, masks = synthetic
    writer = CocoWriter(str(tmp_path / "coco.json"), table.names, table.colors)
    for rel, lab in masks.items():
        writer.add(rel, lab)
    writer.close()
    report = import_annotations(str(tmp_path / "coco.json"), str(tmp_path / "out"),
                                images=os.path.join(root, "images"))
    assert report.format == "coco"
    _assert_exact(report, masks, table)
    assert np.array_equal(read_class_table(report.class_table).colors, table.colors)


def test_cvat_mask_round_trip_is_exact(synthetic, tmp_path):
    root, table, masks = synthetic
    writer = CvatMaskWriter(str(tmp_path / "cvat.zip"), table.names, table.colors)
    for rel, lab in masks.items():
        writer.add(os.path.splitext(rel)[0], lab)
    writer.close()
    report = import_annotations(str(tmp_path / "cvat.zip"), str(tmp_path / "out"),
                                images=os.path.join(root, "images"))
    assert report.format == "cvat"
    _assert_exact(report, masks, table)


@pytest.mark.parametrize("as_annotations", [False, True])
def test_label_studio_brush_round_trip_is_exact(synthetic, tmp_path, as_annotations):
    root, table, masks = synthetic
    tasks = tmp_path / "ls" / "tasks.json"
    writer = LabelStudioWriter(str(tasks), table.names, table.colors,
                               image_url_prefix="/data/local-files/?d=")
    for rel, lab in masks.items():
        writer.add(rel, lab)
    writer.close()
    config = (tmp_path / "ls" / "label_studio_config.xml").read_text()
    assert all(f'<Label value="{n}"' in config for n in table.names)
    if as_annotations:  # as exported after a labeler accepted the pre-annotations
        doc = json.loads(tasks.read_text())
        for task in doc:
            task["annotations"] = [{"id": 1, "result": task.pop("predictions")[0]["result"]}]
        tasks.write_text(json.dumps(doc))
    report = import_annotations(str(tasks), str(tmp_path / "out"),
                                images=os.path.join(root, "images"), classes=table.names,
                                use_predictions=not as_annotations)
    assert report.format == "label-studio"
    _assert_exact(report, masks, table)


def test_labelme_polygon_round_trip(synthetic, tmp_path):
    pytest.importorskip("cv2")
    root, table, masks = synthetic
    shares = {}
    for tolerance in (0.0, 1.0):
        folder = tmp_path / f"labelme_{tolerance}"
        writer = LabelMeWriter(str(folder), table.names, tolerance=tolerance)
        for rel, lab in masks.items():
            writer.add(os.path.join(root, "images", rel), os.path.splitext(rel)[0], lab)
        report = import_annotations(str(folder), str(tmp_path / f"out_{tolerance}"),
                                    classes=os.path.join(root, "classes.csv"))
        assert report.format == "labelme" and report.ok, report.summary()
        assert report.class_names == table.names
        shares[tolerance] = _changed_share(report, masks)
    assert shares[0.0] == 0.0                   # every border pixel kept: exact
    assert 0.0 < shares[1.0] < 0.02, shares     # docs/custom-dataset.md: 0.76% on this set
    doc = json.loads(next((tmp_path / "labelme_1.0" / "training").glob("*.json")).read_text())
    assert doc["imagePath"].startswith("../../") and doc["imageHeight"] > 0
    assert {s["shape_type"] for s in doc["shapes"]} == {"polygon"}


def test_brush_rle_is_label_studios():
    # label_studio_converter.brush.mask2rle of this mask (computed with it once)
    mask = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1]], bool)
    known = [0, 0, 0, 48, 57, 27, 252, 127, 243, 128, 91, 255, 182, 1, 111, 252]
    assert encode_brush_rle(mask) == known
    assert np.array_equal(decode_brush_rle(known).reshape(3, 4, 4)[:, :, 3] > 0, mask)
    rng = np.random.default_rng(0)
    big = np.zeros((300, 300), bool)
    big[40:260, :] = True                       # a run longer than a 16-bit field
    for m in (rng.random((33, 41)) < 0.5, big, np.zeros((5, 5), bool)):
        flat = decode_brush_rle(encode_brush_rle(m))
        assert np.array_equal(flat.reshape(*m.shape, 4)[:, :, 0] > 0, m)
    try:  # Label Studio's own implementation, where it is installed
        from label_studio_converter.brush import decode_rle, mask2rle
    except ImportError:
        try:
            from label_studio_sdk.converter.brush import decode_rle, mask2rle
        except ImportError:
            return
    m = rng.random((29, 37)) < 0.4
    assert encode_brush_rle(m) == [int(v) for v in mask2rle(m.astype(np.uint8) * 255)]
    assert np.array_equal(decode_rle(encode_brush_rle(m)).reshape(29, 37, 4)[:, :, 3] > 0, m)


def test_prelabel_command_all_formats_import_back(synthetic, tmp_path, capsys, one_thread):
    pytest.importorskip("pycocotools")
    pytest.importorskip("cv2")
    root, table, masks = synthetic
    import torch
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    decoder = os.path.join(ckpt, "decoder_epoch_1.pth")
    weights = torch.load(decoder)
    weights["conv_last.weight"] *= 20  # confident inside regions, unsure at their borders
    torch.save(weights, decoder)
    out = tmp_path / "pre"
    from mit_semseg.commands import prelabel
    args = ["--cfg", CFG, "--gpus", "cpu", "--imgs", os.path.join(root, "images"),
            "--out", str(out), "--formats", "all", "--tolerance", "0", "--review-below", "0.5",
            "--quiet", *tiny_opts(ckpt), "DATASET.root_dataset", root,
            "DATASET.class_table", "classes.csv"]
    assert prelabel.main(args) == 0
    assert "Pre-labelled 6 image(s) with 8 classes" in capsys.readouterr().out
    predicted = {rel: read_label_map(str(out / "labels" / (os.path.splitext(rel)[0] + ".png")), 8)
                 for rel in masks}
    assert all((p >= 0).all() for p in predicted.values())
    sources = {"coco": out / "coco.json", "cvat": out / "cvat_masks.zip",
               "label-studio": out / "label_studio" / "tasks.json", "labelme": out / "labelme"}
    for fmt, src in sources.items():
        report = import_annotations(str(src), str(tmp_path / f"in_{fmt}"), fmt,
                                    images=os.path.join(root, "images"),
                                    classes=os.path.join(root, "classes.csv"),
                                    use_predictions=True)
        assert report.ok and report.class_names == table.names, report.summary()
        for rel in masks:
            got = _imported(report, rel)
            if fmt == "cvat":  # review regions are left to the labeler: unlabeled
                keep = got >= 0
                assert 0 < keep.mean() < 1, (rel, keep.mean())
                assert np.array_equal(got[keep], predicted[rel][keep]), (fmt, rel)
            else:
                assert np.array_equal(got, predicted[rel]), (fmt, rel)
    coco = json.loads((out / "coco.json").read_text())
    flagged = [a for a in coco["annotations"] if a["review"]]
    assert 0 < len(flagged) < len(coco["annotations"])
    assert all(a["score"] <= 0.5 for a in flagged) and all(  # scores rounded to 4 places
        a["score"] >= 0.5 for a in coco["annotations"] if not a["review"])
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == sorted(masks)[0]
    assert 0 < tasks[0]["predictions"][0]["score"] <= 1
    regions = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert sum("meta" in r for r in regions) == len(flagged)
    # a usage error names the bad format
    with pytest.raises(SystemExit) as info:
        prelabel.main(args + ["--formats", "voc"])
    assert info.value.code == 2 and "unknown format(s) ['voc']" in capsys.readouterr().err
