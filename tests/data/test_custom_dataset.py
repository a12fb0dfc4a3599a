"""Your own dataset end to end, on three tiny layouts made here (VOC-like,
Cityscapes-like, colour-coded masks): folders -> odgt -> check -> train on the
CPU -> eval table with the class names -> test.py colours from the table."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from _custom_data import MAKERS, NAMES, tiny_model_opts
from mit_semseg.commands import datatools
from mit_semseg.data.classes import class_table
from mit_semseg.config import load_cfg
from mit_semseg.data.datasets import TrainDataset, ValDataset
from mit_semseg.evaluation import evaluate
from mit_semseg.prediction import run_test
from mit_semseg.training import main as train_main


pytestmark = pytest.mark.usefixtures("one_thread")


def _odgt_args(root: str, layout: dict) -> list[str]:
    args = ["odgt", "--images", os.path.join(root, layout["images"]),
            "--masks", os.path.join(root, layout["masks"]), "--root", root]
    if "val_images" in layout:
        args += ["--val-images", os.path.join(root, layout["val_images"]),
                 "--val-masks", os.path.join(root, layout["val_masks"])]
    else:
        args += ["--val-fraction", "0.25", "--seed", "1"]
    for key in ("image_suffix", "mask_suffix"):
        if key in layout:
            args += [f"--{key.replace('_', '-')}", layout[key]]
    return args


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.mark.parametrize("kind", ["voc", "city", "rgb"])
def test_end_to_end(kind, tmp_path, capsys):
    root = str(tmp_path / kind)
    layout = MAKERS[kind](root)

    # 1. folders -> odgt
    status = datatools.main(_odgt_args(root, layout))
    out = capsys.readouterr().out
    train, val = _lines(os.path.join(root, "training.odgt")), _lines(os.path.join(root, "validation.odgt"))
    assert status == 0, out
    expected = {"voc": (6, 2), "city": (6, 3), "rgb": (6, 2)}[kind]
    assert (len(train), len(val)) == expected
    for rec in train + val:
        assert set(rec) == {"fpath_img", "fpath_segm", "width", "height"}
        assert Image.open(os.path.join(root, rec["fpath_img"])).size == (rec["width"], rec["height"])
        assert not os.path.isabs(rec["fpath_img"])
    if kind == "voc":  # the image without a mask is listed, not silently dropped
        assert "images without a mask (left out): 1" in out and "2007_000008.jpg" in out
    if kind == "city":
        assert all(r["fpath_segm"].endswith("_gtFine_labelTrainIds.png") for r in train + val)
        assert all(r["fpath_img"].split("/")[-2] == r["fpath_segm"].split("/")[-2] for r in train)
        # the _gtFine_color.png files are not taken for masks, and are counted
        assert "[training] 6 files without the suffix were not considered" in out
        assert "[validation] 3 files without the suffix" in out

    # 2. check: no errors, class table names in the statistics
    opts = tiny_model_opts(root, str(tmp_path / "ckpt"), layout["table"], *layout["opts"])
    status = datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *opts])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 error(s)" in out
    for name in NAMES[kind]:
        assert name in out

    # labels reach the tensors 0-based with -1 unlabeled, whatever the file convention
    cfg = load_cfg(None, opts)
    sample = ValDataset(root, cfg.DATASET.list_val, cfg.DATASET)[0]
    values = set(np.unique(sample["seg_label"].numpy()).tolist())
    assert values <= {-1, 0, 1, 2} and -1 in values and len(values) >= 2
    batch = TrainDataset(root, cfg.DATASET.list_train, cfg.DATASET, batch_per_gpu=2, seed=0)[0]
    assert batch["seg_label"].min() >= -1 and batch["seg_label"].max() <= 2

    # 3. train a few iterations on the CPU
    summary = train_main(cfg, "cpu")
    assert summary.global_iter == 6
    capsys.readouterr()

    # 4. eval: per-class table and JSON carry the names
    stream = io.StringIO()
    record = evaluate(cfg, "cpu", progress=False, stream=stream)
    table = [line for line in stream.getvalue().splitlines() if line.startswith("class [")]
    assert len(table) == 3
    for line, name in zip(table, NAMES[kind]):
        assert name in line
    assert [c["name"] for c in record["per_class"]] == NAMES[kind]

    # 5. test.py: printout names, PNG colours from the table
    photos = tmp_path / "photos"
    photos.mkdir()
    img = np.asarray(Image.open(os.path.join(root, val[0]["fpath_img"])).convert("RGB"))
    Image.fromarray(img).save(photos / "p.png")
    cfg.defrost()
    cfg.TEST.result = str(tmp_path / "out")
    stream = io.StringIO()
    run_test(cfg, str(photos), "cpu", progress=False, stream=stream, err=io.StringIO())
    printed = stream.getvalue()
    assert any(f"  {name}: " in printed for name in NAMES[kind]), printed
    vis = np.asarray(Image.open(tmp_path / "out" / "p.png").convert("RGB"))
    pred_colors = {tuple(c) for c in vis[:, img.shape[1]:].reshape(-1, 3).tolist()}
    table_colors = {tuple(c) for c in class_table(cfg).colors.tolist()}
    assert pred_colors and pred_colors <= table_colors


def test_check_lists_every_planted_problem(tmp_path, capsys):
    root = str(tmp_path / "voc")
    layout = MAKERS["voc"](root)
    assert datatools.main(_odgt_args(root, layout)) == 0
    train_odgt = os.path.join(root, "training.odgt")
    recs = _lines(train_odgt)
    # plant one problem per line
    os.remove(os.path.join(root, recs[0]["fpath_img"]))                       # line 1: missing image
    os.remove(os.path.join(root, recs[1]["fpath_segm"]))                      # line 2: missing mask
    with open(os.path.join(root, recs[2]["fpath_img"]), "wb") as fh:           # line 3: corrupt
        fh.write(b"\xff\xd8 not a jpeg")
    Image.new("P", (7, 5)).save(os.path.join(root, recs[3]["fpath_segm"]))     # line 4: size
    bad = np.zeros((recs[4]["height"], recs[4]["width"]), np.uint8)            # line 5: values
    bad[0, :3] = 7
    bad[1, :2] = 9
    bad_png = Image.fromarray(bad, "P")
    bad_png.putpalette(list(range(256)) * 3)  # without a palette PIL renumbers the indices
    bad_png.save(os.path.join(root, recs[4]["fpath_segm"]))
    recs[5]["width"] += 3                                                      # line 6: odgt size
    lines = [json.dumps(r) for r in recs] + ["{not json"]                      # line 7: malformed
    with open(train_odgt, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    # class 2 ("dog") never appears in validation: a warning
    val_odgt = os.path.join(root, "validation.odgt")
    for rec in _lines(val_odgt):
        seg = os.path.join(root, rec["fpath_segm"])
        arr = np.asarray(Image.open(seg)).copy()
        arr[arr == 2] = 1
        out = Image.fromarray(arr, "P")
        out.putpalette(Image.open(seg).getpalette())
        out.save(seg)

    opts = tiny_model_opts(root, str(tmp_path / "ckpt"), layout["table"], *layout["opts"])
    status = datatools.main(["check", "--cfg", "", "--workers", "2", "--quiet", *opts])
    out = capsys.readouterr().out
    assert status == 1
    errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    expect = {1: "image file not found", 2: "annotation file not found",
              3: "cannot read image", 4: "annotation size 7x5 differs", 5: "outside the zero_based",
              6: "odgt says", 7: "not JSON"}
    for lineno, what in expect.items():
        hits = [e for e in errors if f"training.odgt, line {lineno}:" in e and what in e]
        assert len(hits) == 1, (lineno, what, out)
    assert len(errors) == 7
    values_line = [e for e in errors if "outside the zero_based" in e][0]
    assert "7 (3 px)" in values_line and "9 (2 px)" in values_line
    assert recs[4]["fpath_segm"] in values_line
    assert "classes never seen in the val list" in out and "2 (dog)" in out
    assert "7 error(s)" in out
    # listed in odgt line order
    assert [int(e.split(", line ")[1].split(":")[0]) for e in errors] == list(range(1, 8))


def test_odgt_lists_unpaired_and_mismatched_files(tmp_path, capsys):
    images, masks = tmp_path / "img", tmp_path / "seg"
    (images / "a").mkdir(parents=True)
    (masks / "a").mkdir(parents=True)
    for name, size in (("a/x", (20, 10)), ("a/y", (20, 10)), ("z", (8, 8)), ("only_img", (5, 5))):
        Image.new("RGB", size).save(images / f"{name}.jpg")
    Image.new("L", (20, 10)).save(masks / "a" / "x.png")
    Image.new("L", (19, 10)).save(masks / "a" / "y.png")      # size mismatch
    Image.new("L", (8, 8)).save(masks / "z.tif")              # other extension pairs by stem
    Image.new("L", (8, 8)).save(masks / "orphan.png")         # mask without image
    Image.new("L", (8, 8)).save(images / "z.png")             # second image for key z
    status = datatools.main(["odgt", "--images", str(images), "--masks", str(masks),
                             "--val-fraction", "0", "--out", str(tmp_path / "lists")])
    out = capsys.readouterr().out
    assert status == 1
    recs = _lines(tmp_path / "lists" / "training.odgt")
    assert [r["fpath_img"] for r in recs] == ["img/a/x.jpg", "img/z.jpg"]
    assert recs[1] == {"fpath_img": "img/z.jpg", "fpath_segm": "seg/z.tif", "width": 8, "height": 8}
    assert "only_img.jpg" in out and "orphan.png" in out
    assert "mask 19x10 but image" in out and "same image key 'z'" in out
    assert not os.path.exists(tmp_path / "lists" / "validation.odgt")
    report = (tmp_path / "lists" / "odgt_report.tsv").read_text()
    assert report.count("\n") == 4


def test_odgt_split_by_fraction_and_seed(tmp_path, capsys):
    root = str(tmp_path / "rgb")
    layout = MAKERS["rgb"](root)

    def split(seed, out):
        args = _odgt_args(root, layout) + ["--out", str(tmp_path / out)]
        args[args.index("--seed") + 1] = str(seed)
        assert datatools.main(args) == 0
        return [[r["fpath_img"] for r in _lines(tmp_path / out / n)]
                for n in ("training.odgt", "validation.odgt")]
    a, b, c = split(1, "a"), split(1, "b"), split(2, "c")
    assert a == b and len(a[1]) == 2 and len(a[0]) == 6
    assert sorted(a[0] + a[1]) == sorted(c[0] + c[1]) and a != c
    capsys.readouterr()

