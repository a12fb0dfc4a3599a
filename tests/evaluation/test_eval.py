"""eval.py and eval_multipro.py (2 CPU processes) on a tiny synthetic set give
identical numbers and report pages (per-image results, boundary IoU, the worst
images chosen over both processes); JSON results, visualisations,
missing-checkpoint message."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from mit_semseg.data.naming import result_names
from mit_semseg.models import ModelBuilder
from mit_semseg.data.synthetic import make_synthetic_dataset

from _support import CFG, NUM_CLASS, ROOT, make_tiny_checkpoint, run_script, tiny_opts  # noqa: E402

SUMMARY = re.compile(r"Mean IoU: (\d\.\d{4}), Accuracy: (\d+\.\d{2})%")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    make_synthetic_dataset(str(base / "data"), num_train=0, num_val=5, size_range=(40, 90),
                           num_class=NUM_CLASS, seed=1)
    ckpt = make_tiny_checkpoint(base / "ckpt")
    return base, ckpt


def test_eval_and_eval_multipro_print_identical_numbers(setup):
    base, ckpt = setup
    # 2 worst of 5 images (3 + 2 per process): chosen over both processes
    opts = tiny_opts(ckpt, base / "data") + ["VAL.worst_images", "2", "VAL.boundary_iou", "True"]
    single = run_script("eval.py", "--cfg", CFG, "--gpu", "cpu", *opts, "VAL.visualize", "True")
    assert single.returncode == 0, single.stderr[-3000:]
    with open(os.path.join(ckpt, "eval_epoch_1.json")) as fh:
        first = json.load(fh)
    with open(os.path.join(ckpt, "eval_epoch_1.html")) as fh:
        first_page = fh.read()
    # one DataLoader worker inside each evaluation process (they must not be daemonic)
    multi = run_script("eval_multipro.py", "--cfg", CFG, "--gpus", "cpu", "--workers", "2", *opts,
                       "VAL.workers", "1")
    assert multi.returncode == 0, multi.stderr[-3000:]
    with open(os.path.join(ckpt, "eval_epoch_1.json")) as fh:
        second = json.load(fh)
    with open(os.path.join(ckpt, "eval_epoch_1.html")) as fh:
        second_page = fh.read()

    a, b = SUMMARY.findall(single.stdout), SUMMARY.findall(multi.stdout)
    assert len(a) == len(b) == 1 and a == b
    assert "Inference Time:" in single.stdout and "Evaluation Done!" in multi.stdout
    assert "cpu: start_idx 0, end_idx 3" in multi.stdout
    assert "cpu: start_idx 3, end_idx 5" in multi.stdout
    # per-class table with names, one line per class, identical in both
    table = [line for line in single.stdout.splitlines() if line.startswith("class [")]
    # names from the synthetic data's classes.csv (DATASET.class_table of the demo config)
    assert len(table) == NUM_CLASS and "sky" in table[0] and "metal" in table[-1]
    assert table == [line for line in multi.stdout.splitlines() if line.startswith("class [")]
    # JSON: the exact same per-class sums and metrics
    for key in ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "frequency_weighted_iou",
                "per_class", "num_images"):
        assert first[key] == second[key], key
    assert first["num_images"] == 5
    # everything else too (per image, confusion, boundary IoU, the worst images)
    assert first.pop("inference_time_per_image_s") > 0
    assert first == second
    assert len(first["worst_images"]) == 2 and first["mean_boundary_iou"] is not None
    panels = [re.findall(r'src="(data:image/png;base64,[^"]+)"', p) for p in (first_page,
                                                                         second_page)]
    assert len(panels[0]) == 8 and panels[0] == panels[1]
    assert "Mean Dice/F1: " in single.stdout and "Report written to " in multi.stdout
    assert f"{first['mean_iou']:.4f}" == a[0][0]
    # visualisations: image | ground truth | prediction, one per validation image
    results = sorted(os.listdir(os.path.join(ckpt, "result")))
    assert results == [f"scene_{i:05d}.png" for i in range(5)]


def test_missing_checkpoint_message(tmp_path):
    out = run_script("eval.py", "--cfg", CFG, "--gpu", "cpu", *tiny_opts(tmp_path / "nothing"))
    assert out.returncode == 1
    assert "checkpoint not found" in out.stderr
    assert os.path.join(str(tmp_path / "nothing"), "encoder_epoch_1.pth") in out.stderr
    assert "train" in out.stderr and "Traceback" not in out.stderr


def test_result_names_are_unique_and_keep_folders():
    paths = ["/d/a.jpg", "/d/a.png", "/d/A.JPG", "/d/sub/a.jpg", "/d/b.jpeg", "/d/c.tif"]
    names = result_names(paths)
    assert len({n.lower() for n in names}) == len(names)
    assert names[3] == os.path.join("sub", "a.png")
    assert names[4:] == ["b.png", "c.png"]
    assert all(n.endswith(".png") for n in names)
    assert result_names(["/x/only.jpg"]) == ["only.png"]
    assert result_names(["/d/x.png", "/d/x.jpg", "/d/x.jpg.png"]) == \
        ["x.png.png", "x.jpg.png", "x.jpg_2.png"]
