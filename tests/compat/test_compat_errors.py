"""Errors users of the original hit: a damaged checkpoint ends with one clear line
in test.py / eval.py / eval_multipro.py, and DataLoader workers are capped at
the CPU count (no oversubscription warning)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.utils import cpu_count, loader_workers
from _support import CFG, ROOT, make_tiny_checkpoint, run_script, tiny_opts


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged")
    make_synthetic_dataset(str(base / "data"), num_train=0, num_val=2, size_range=(40, 60),
                           num_class=8, seed=1)
    ckpt = make_tiny_checkpoint(base / "ckpt")
    encoder = os.path.join(ckpt, "encoder_epoch_1.pth")
    with open(encoder, "rb") as fh:
        head = fh.read()[: os.path.getsize(encoder) // 2]
    with open(encoder, "wb") as fh:  # a download that stopped half-way
        fh.write(head)
    return base, ckpt, encoder


@pytest.mark.parametrize("script", ["test.py", "eval.py", "eval_multipro.py"])
def test_damaged_checkpoint_is_one_line_naming_the_file(damaged, script) -> None:
    base, ckpt, encoder = damaged
    opts = tiny_opts(ckpt, base / "data")
    if script == "test.py":
        photo = base / "photo.jpg"
        Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(photo)
        args = ["--imgs", photo, "--cfg", CFG, "--gpu", "cpu", *opts, "TEST.result", base / "out"]
    elif script == "eval.py":
        args = ["--cfg", CFG, "--gpu", "cpu", *opts]
    else:
        args = ["--cfg", CFG, "--gpus", "cpu", "--workers", "2", *opts]
    res = run_script(script, *args)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert encoder in last and "is damaged" in last, res.stderr[-2000:]
    assert sum("is damaged" in line for line in res.stderr.splitlines()) == 1


def test_loader_workers_is_capped_by_the_cpu_count(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_count() == 2
    assert [loader_workers(n) for n in (0, 1, 2, 4, 16, -3)] == [0, 1, 2, 2, 2, 0]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_test_py_on_one_core_does_not_oversubscribe(tmp_path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(photos / f"p{i}.jpg")
    opts = tiny_opts(ckpt)
    opts[opts.index("TEST.workers") + 1] = "4"  # the original's default
    # test.py pinned to one core, as on a small machine
    code = ("import os, runpy, sys; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "test.py"),
                          "--imgs", str(photos), "--cfg", CFG, "--gpu", "cpu", *opts,
                          "TEST.result", str(tmp_path / "out")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["p0.png", "p1.png"]
    assert "worker processes" not in res.stderr, res.stderr[-2000:]
