"""eval.py and eval_multipro.py (2 CPU processes) on a timm: encoder (a tiny Swin,
multi-scale + flip): identical numbers and report pages; skipped without timm."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _support import run_script  # noqa: E402
from _timm import NUM_CLASS, make_timm_model, timm_or_skip  # noqa: E402

timm_or_skip()

from mit_semseg.data.synthetic import make_synthetic_dataset  # noqa: E402

pytestmark = pytest.mark.timm
SUMMARY = re.compile(r"Mean IoU: (\d\.\d{4}), Accuracy: (\d+\.\d{2})%")


def test_eval_and_eval_multipro_multi_scale_flip(tmp_path):
    data = tmp_path / "data"
    lists = make_synthetic_dataset(str(data), num_train=0, num_val=3, size_range=(40, 90),
                                   num_class=NUM_CLASS, seed=1)
    cfg = make_timm_model(tmp_path / "model", "swin")
    opts = ["DATASET.root_dataset", str(data), "DATASET.list_val", lists["validation"],
            "DATASET.imgSizes", "(40, 56)", "VAL.flip", "True", "VAL.worst_images", "2"]
    single = run_script("eval.py", "--cfg", cfg, "--gpu", "cpu", *opts)
    assert single.returncode == 0, single.stderr[-3000:]
    folder = os.path.dirname(cfg)
    with open(os.path.join(folder, "eval_epoch_1.json")) as fh:
        first = json.load(fh)
    assert os.path.isfile(os.path.join(folder, "eval_epoch_1.html"))
    multi = run_script("eval_multipro.py", "--cfg", cfg, "--gpus", "cpu", "--workers", "2",
                       *opts)
    assert multi.returncode == 0, multi.stderr[-3000:]
    with open(os.path.join(folder, "eval_epoch_1.json")) as fh:
        second = json.load(fh)
    a, b = SUMMARY.findall(single.stdout), SUMMARY.findall(multi.stdout)
    assert len(a) == len(b) == 1 and a == b
    first.pop("inference_time_per_image_s")
    second.pop("inference_time_per_image_s", None)
    assert first == second and first["num_images"] == 3 and len(first["worst_images"]) == 2
