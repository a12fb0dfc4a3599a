"""Annotations in (mit_semseg.data.annotations): LabelMe and COCO datasets made here
with overlaps, holes, a malformed shape and an unknown class are imported (later
shapes on top, every skipped shape reported with file and index), checked and
trained on; CVAT and Label Studio specifics; re-importing keeps class ids."""
from __future__ import annotations

import base64
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from _custom_data import PHOTO_COLORS, tiny_model_opts
from mit_semseg.config import load_cfg
from mit_semseg.data.annotations import (AnnotationError, detect_format, import_annotations,
                                         import_coco, import_cvat_masks, import_label_studio,
                                         import_labelme)
from mit_semseg.data.classes import class_table, label_format, read_class_table
from mit_semseg.data.labelmap import read_label_map
from mit_semseg.data.tools import check_lists

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["road", "car", "sky"]
H, W = 36, 48


def _photo(labels: np.ndarray, seed: int) -> np.ndarray:
    """A photo whose colours follow ``labels`` (unlabeled: road's colour)."""
    rng = np.random.default_rng(seed)
    img = PHOTO_COLORS[np.clip(labels, 0, 2)].astype(np.int16) + rng.integers(-15, 16,
                                                                             labels.shape + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask(root, report, key: str) -> np.ndarray:
    return read_label_map(os.path.join(report.out_dir, "annotations", key + ".png"),
                          len(report.class_names))


def _problems(report) -> list[str]:
    return [str(p) for p in report.problems]


def _check_and_train(report, tmp_path):
    """datatools check's library finds no error; a few training iterations run."""
    from mit_semseg.training import main as train_main
    opts = tiny_model_opts(report.out_dir, str(tmp_path / "ckpt"), report.class_table,
                           "TRAIN.epoch_iters", "2")
    cfg = load_cfg(None, opts)
    lists = {"train": cfg.DATASET.list_train, "val": cfg.DATASET.list_val}
    checked = check_lists(lists, cfg.DATASET.root_dataset, label_format(cfg), 3,
                          class_table(cfg).name_dict(), workers=1)
    assert checked.errors == [] and sum(checked.num_samples.values()) == len(report.samples)
    summary = train_main(cfg, "cpu")
    assert summary.global_iter == 4


# ---------------------------------------------------------------------------- LabelMe

def _labelme_dataset(root):
    """Four LabelMe files (one with an embedded image, one whose image is missing)."""
    os.makedirs(root / "sub")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(_photo(rng.integers(0, 3, (H, W)), i)).save(
            root / ("sub" if i == 3 else "") / f"img{i}.png")
    square = [[4, 4], [30, 4], [30, 24], [4, 24]]
    shapes0 = [
        {"label": "road", "points": [[0, 0], [47, 0], [47, 35], [0, 35]], "shape_type": "polygon"},
        {"label": "car", "points": square, "shape_type": "polygon"},         # over road
        {"label": "__ignore__", "points": [[10, 10], [14, 14]], "shape_type": "rectangle"},  # hole
        {"label": "sky", "points": [[40, 30], [44, 30]], "shape_type": "circle"},
        {"label": "car", "points": [[1, 1], [5, 5]], "shape_type": "polygon"},  # 2 points
        {"label": "boat", "points": square, "shape_type": "polygon"},        # unknown class
        {"label": "car", "points": [[0, 0], [9, 9]], "shape_type": "line"},    # no area
        {"label": "sky", "points": [["a", 1], [2, 3], [4, 5]], "shape_type": "polygon"},
    ]
    docs = {
        "img0.json": {"shapes": shapes0, "imagePath": "img0.png", "imageHeight": H,
                      "imageWidth": W},
        "img1.json": {"shapes": [{"label": "sky", "points": [[0, 0], [47, 17]],
                                  "shape_type": "rectangle"}],
                      "imagePath": "img1.png", "imageHeight": H, "imageWidth": W},
        "sub/img3.json": {"shapes": [{"label": "car", "points": [[2, 2], [20, 2], [11, 20]]}],
                          "imagePath": "img3.png", "imageHeight": H, "imageWidth": W},
        "gone.json": {"shapes": [{"label": "car", "points": square}], "imagePath": "gone.png",
                      "imageHeight": H, "imageWidth": W},
    }
    buf = io.BytesIO()
    Image.fromarray(_photo(np.zeros((H, W), int), 9)).save(buf, format="PNG")
    docs["embedded.json"] = {"shapes": [{"label": "road", "points": [[0, 0], [47, 35]],
                                         "shape_type": "rectangle"}],
                             "imagePath": "nowhere/embedded.png",
                             "imageData": base64.b64encode(buf.getvalue()).decode(),
                             "imageHeight": H, "imageWidth": W}
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc))
    (root / "notes.json").write_text('{"not": "labelme"}')
    return root


def test_labelme_import_overlaps_holes_problems_check_and_train(tmp_path):
    src = _labelme_dataset(tmp_path / "labelme")
    report = import_labelme(str(src), str(tmp_path / "ds"), classes=NAMES, val_fraction=0.25,
                            seed=1)
    assert report.class_names == tuple(NAMES)
    # four images imported (the embedded one too); the one whose image is missing is reported
    keys = sorted(os.path.relpath(r["fpath_segm"], os.path.join(report.out_dir, "annotations"))
                  for r in report.samples)
    assert keys == ["embedded.png", "img0.png", "img1.png", os.path.join("sub", "img3.png")]
    labels = _mask(tmp_path, report, "img0")
    assert labels[0, 0] == 0 and labels[2, 40] == 0            # road
    assert labels[4, 4] == 1 and labels[24, 30] == 1          # car on top, edges included
    assert (labels[10:15, 10:15] == -1).all()                 # __ignore__ hole on top of car
    assert labels[9, 10] == 1 and labels[15, 15] == 1
    assert labels[30, 40] == 2 and labels[30, 44] == 2        # circle, radius 2
    # every skipped shape named with file and index, nothing silently dropped
    problems = _problems(report)
    img0 = str(src / "img0.json")
    expected = [f"{img0}, shape 4: malformed 'car' shape: 2 point(s); needs at least 3; skipped",
                f"{img0}, shape 5: unknown class 'boat' (classes: road, car, sky); skipped",
                f"{img0}, shape 6: 'car' shape_type 'line' marks no area; skipped",
                f"{img0}, shape 7: malformed 'sky' shape: points must be numbers, got ['a', 1]; "
                f"skipped"]
    for line in expected:
        assert line in problems, problems
    assert any(p.startswith(str(src / "gone.json")) and "image 'gone.png' not found" in p
               for p in problems)
    assert any(p.startswith(str(src / "notes.json")) and "not a LabelMe file" in p
               for p in problems)
    assert len(problems) == 6 and not report.ok
    # masks are palette PNGs in the ADE20K convention; names and colours in classes.csv
    assert Image.open(os.path.join(report.out_dir, "annotations", "img0.png")).mode == "P"
    assert read_class_table(report.class_table).names == tuple(NAMES)
    assert report.train_list.endswith("training.odgt") and report.val_list
    _check_and_train(report, tmp_path)


def test_labelme_default_classes_and_reimport_keeps_ids(tmp_path):
    src = _labelme_dataset(tmp_path / "labelme")
    out = tmp_path / "ds"
    first = import_labelme(str(src), str(out))
    assert first.class_names == ("boat", "car", "road", "sky")  # sorted names found
    # a second batch with a new image: same ids (the dataset's classes.csv), both batches listed
    batch2 = tmp_path / "batch2"
    batch2.mkdir()
    Image.fromarray(_photo(np.zeros((H, W), int), 5)).save(batch2 / "new.png")
    (batch2 / "new.json").write_text(json.dumps({
        "shapes": [{"label": "sky", "points": [[0, 0], [47, 35]], "shape_type": "rectangle"},
                   {"label": "tree", "points": [[0, 0], [5, 5]], "shape_type": "rectangle"}],
        "imagePath": "new.png", "imageHeight": H, "imageWidth": W}))
    second = import_annotations(str(batch2), str(out))
    assert second.format == "labelme" and second.class_names == first.class_names
    assert (_mask(tmp_path, second, "new") == 3).all()
    assert [str(p) for p in second.problems] == [
        f"{batch2 / 'new.json'}, shape 1: unknown class 'tree' (classes: boat, car, road, sky); "
        f"skipped"]
    with open(second.train_list) as fh:
        listed = [json.loads(line)["fpath_segm"] for line in fh]
    assert len(listed) == len(first.samples) + 1 and "annotations/new.png" in listed


# ---------------------------------------------------------------------------- COCO

def _coco_dataset(root):
    """A COCO file: polygons, a polygon hole filled by a later annotation, uncompressed
    (crowd) and compressed RLE, and broken annotations of every kind."""
    mask_api = pytest.importorskip("pycocotools.mask")
    os.makedirs(root / "images")
    for i in range(4):
        Image.fromarray(_photo(np.zeros((H, W), int), i)).save(root / "images" / f"{i}.jpg")
    ring = np.zeros((H, W), np.uint8, order="F")
    ring[5:25, 5:35] = 1
    ring[10:20, 12:28] = 0                       # a ring: a hole only RLE can express
    ring_rle = mask_api.encode(ring)
    crowd = np.zeros((H, W), np.uint8)
    crowd[30:, :10] = 1
    flat = crowd.reshape(-1, order="F")
    runs, value, n = [], 0, 0
    for v in flat.tolist():
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    anns = [
        {"image_id": 1, "category_id": 7, "segmentation": [[0, 0, 48, 0, 48, 36, 0, 36]]},
        {"image_id": 1, "category_id": 3,
         "segmentation": {"size": [H, W], "counts": ring_rle["counts"].decode()}},
        {"image_id": 1, "category_id": 9, "segmentation": [[14, 12, 26, 12, 26, 18, 14, 18]]},
        {"image_id": 1, "category_id": 3, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": runs}},
        {"image_id": 1, "category_id": 3, "segmentation": [[1, 1, 2, 2]]},       # malformed
        {"image_id": 1, "category_id": 42, "segmentation": [[0, 0, 5, 0, 5, 5]]},  # unknown
        {"image_id": 8, "category_id": 3, "segmentation": [[0, 0, 5, 0, 5, 5]]},   # no image
        {"image_id": 2, "category_id": 9, "segmentation": {"size": [10, 10], "counts": [100]}},
        {"image_id": 2, "category_id": 9, "segmentation": {"size": [H, W], "counts": "0a0"}},
        {"image_id": 2, "category_id": 7, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]},
        {"image_id": 3, "category_id": 9, "segmentation": [[0, 0, 48, 0, 48, 36, 0, 36]]},
        {"image_id": 4, "category_id": 3, "segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]]},
    ]
    doc = {"images": [{"id": i + 1, "file_name": f"{i}.jpg", "width": W, "height": H}
                      for i in range(4)] + [{"id": 5, "file_name": "absent.jpg",
                                             "width": W, "height": H}],
           "annotations": [dict(a, id=100 + k) for k, a in enumerate(anns)],
           "categories": [{"id": 9, "name": "sky"}, {"id": 3, "name": "car"},
                          {"id": 7, "name": "road"}]}
    (root / "instances.json").write_text(json.dumps(doc))
    return root / "instances.json"


def test_coco_import_rle_polygons_holes_problems_check_and_train(tmp_path):
    ann_file = _coco_dataset(tmp_path / "coco")
    report = import_coco(str(ann_file), str(tmp_path / "ds"),
                         images=str(tmp_path / "coco" / "images"), val_fraction=0.25, seed=0)
    # categories in id order, names kept
    assert report.class_names == ("car", "road", "sky")
    labels = _mask(tmp_path, report, "0")
    assert labels[0, 0] == 1                                    # road polygon, pixel k = [k, k+1)
    assert labels[5, 5] == 0 and labels[24, 34] == 0 and labels[25, 35] == 1   # the ring (RLE)
    assert labels[11, 12] == 1                                  # its hole shows the road below
    assert labels[12, 14] == 2 and labels[17, 25] == 2         # sky polygon later, on top
    assert labels[35, 0] == 0                                   # crowd painted as its class
    problems = _problems(report)
    where = str(ann_file)
    for index, text in [(4, "annotation id 104: polygon 0 is malformed (4 numbers"),
                        (5, "annotation id 105 (0.jpg): unknown class (category_id 42"),
                        (6, "annotation id 106: unknown image_id 8"),
                        (7, "RLE size [10, 10] is not the image's [height, width] = [36, 48]"),
                        (8, "compressed RLE counts")]:
        assert any(p.startswith(f"{where}, shape {index}: ") and text in p for p in problems), \
            (index, problems)
    assert any("absent.jpg" in p and "not found" in p for p in problems)
    assert len(problems) == 7
    # crowd as unlabeled on request
    again = import_coco(str(ann_file), str(tmp_path / "ds2"),
                        images=str(tmp_path / "coco" / "images"), crowd="unlabeled")
    assert _mask(tmp_path, again, "0")[35, 0] == -1
    _check_and_train(report, tmp_path)


def test_coco_rle_string_validation():
    from mit_semseg.data.annotations.coco import _rle_string_total
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape in [(7, 9), (40, 33), (1, 1)]:
        m = np.asfortranarray((rng.random(shape) < 0.3).astype(np.uint8))
        counts = mask_api.encode(m)["counts"].decode()
        assert _rle_string_total(counts) == m.size
        assert _rle_string_total(counts[:-1]) != m.size
    assert _rle_string_total("\x01") is None


# ---------------------------------------------------------------------------- CVAT, Label Studio

def test_cvat_archive_with_images_and_an_unknown_colour(tmp_path):
    colors = {"background": (0, 0, 0), "road": (128, 64, 128), "car": (0, 0, 142)}
    mask = np.zeros((H, W, 3), np.uint8)
    mask[:, :20] = colors["road"]
    mask[5:10, 25:30] = colors["car"]
    mask[30:, 40:] = (1, 2, 3)                              # not in the label map
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n"
                    + "".join(f"{n}:{c[0]},{c[1]},{c[2]}::\n" for n, c in colors.items())
                    + "broken line\n")
        for name, arr in (("SegmentationClass/a/frame1.png", mask),):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            zf.writestr(name, buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(_photo(np.zeros((H, W), int), 0)).save(buf, format="JPEG")
        zf.writestr("JPEGImages/a/frame1.jpg", buf.getvalue())
    assert detect_format(str(archive)) == "cvat"
    report = import_cvat_masks(str(archive), str(tmp_path / "ds"))
    assert report.class_names == ("road", "car")
    labels = _mask(tmp_path, report, "a/frame1")
    assert (labels[:, :20] == 0).all() and (labels[5:10, 25:30] == 1).all()
    assert labels[0, 30] == -1 and (labels[30:, 40:] == -1).all()
    problems = _problems(report)
    assert any("labelmap.txt" in p and "line 5" in p for p in problems)
    assert any("colour (1, 2, 3) (48 px) is not in labelmap.txt; left unlabeled" in p
               for p in problems)
    assert os.path.isfile(os.path.join(report.out_dir, "images", "a", "frame1.jpg"))


def test_label_studio_polygons_rectangles_and_skipped_results(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(_photo(np.zeros((H, W), int), 0)).save(images / "photo.png")
    Image.fromarray(_photo(np.zeros((H, W), int), 1)).save(images / "other.png")

    def region(kind, value, label):
        return {"type": kind, "from_name": "tag", "to_name": "image", "original_width": W,
                "original_height": H, "value": dict(value, **{kind: [label]})}
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/3/0a1b2c3d-photo.png"}, "annotations": [
            {"id": 10, "result": [region("rectanglelabels", {"x": 0, "y": 0, "width": 50,
                                                             "height": 100}, "road")]},
            {"id": 11, "was_cancelled": True, "result": []}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=other.png"}, "annotations": [
            {"id": 12, "result": [
                region("polygonlabels", {"points": [[0, 0], [100, 0], [100, 50], [0, 50]]},
                       "sky"),
                {"type": "choices", "value": {"choices": ["day"]}},
                region("polygonlabels", {"points": [[0, 0], [1, 1]]}, "sky")]}]},
        {"id": 3, "data": {"image": "missing.png"}, "annotations": [{"id": 13, "result": []}]},
        {"id": 4, "data": {"image": "photo.png"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    report = import_label_studio(str(path), str(tmp_path / "ds"), images=str(images))
    assert report.class_names == ("road", "sky")
    road = _mask(tmp_path, report, "photo")
    assert (road[:, :24] == 0).all() and (road[:, 24:] == -1).all()   # 50% of 48 px = 24 columns
    sky = _mask(tmp_path, report, "other")
    assert (sky[:18] == 1).all() and (sky[18:] == -1).all()
    problems = _problems(report)
    assert any("task 2" in p and "shape 1: result type 'choices' marks no area" in p
               for p in problems)
    assert any("task 2" in p and "shape 2: malformed 'sky' shape: 2 point(s)" in p
               for p in problems)
    assert any("task 3" in p and "not found" in p for p in problems)
    assert any("task 4" in p and "no annotation" in p for p in problems)
    assert len(problems) == 4


def test_unreadable_exports_raise_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(AnnotationError, match="bad.json"):
        import_annotations(str(bad), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no LabelMe JSON"):
        import_annotations(str(tmp_path / "empty"), str(tmp_path / "out"))
    notzip = tmp_path / "x.zip"
    notzip.write_bytes(b"PK nope")
    with pytest.raises(AnnotationError):
        import_cvat_masks(str(notzip), str(tmp_path / "out"))
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        import_annotations(str(bad), str(tmp_path / "out"), fmt="voc")


def test_missing_extras_name_the_extra(tmp_path, monkeypatch):
    import sys
    from mit_semseg.data.annotations import CocoWriter, LabelMeWriter
    for name in ("cv2", "pycocotools", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(AnnotationError, match=r'OpenCV .*pip install -e "\.\[polygons\]"'):
        LabelMeWriter(str(tmp_path), NAMES)
    with pytest.raises(AnnotationError, match=r'pycocotools: pip install -e "\.\[coco\]"'):
        CocoWriter(str(tmp_path / "c.json"), NAMES, np.zeros((3, 3)))
    with pytest.raises(AnnotationError, match=r"\[coco\]"):
        import_coco(str(tmp_path / "none.json"), str(tmp_path / "out"))
    # the other formats need nothing beyond the core packages
    src = _labelme_dataset(tmp_path / "labelme")
    assert import_labelme(str(src), str(tmp_path / "ds"), classes=NAMES).samples


def test_datatools_import_command_reports_problems_and_the_overrides(tmp_path, capsys):
    """``python -m mit_semseg datatools import``: the library's report printed, exit
    status 1 because shapes were skipped, and the overrides that train on it."""
    from mit_semseg.commands import datatools
    src = _labelme_dataset(tmp_path / "labelme")
    out = tmp_path / "out"
    code = datatools.main(["import", str(src), "--out", str(out), "--classes", ",".join(NAMES),
                           "--val-fraction", "0.25", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 1  # the malformed shape and the unknown class were skipped
    assert "problem: " in printed and "6 problem(s)" in printed
    assert f"DATASET.root_dataset {out}" in printed and "DATASET.num_class 3" in printed
    assert (out / "training.odgt").is_file() and (out / "classes.csv").is_file()
    with pytest.raises(SystemExit) as usage:
        datatools.main(["import", str(src), "--out", str(out), "--val-fraction", "1.5"])
    assert usage.value.code == 2
