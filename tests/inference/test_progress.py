"""Progress of one photo: the engine calls ``progress(done, total)`` per network
run and the fusion (whole mode) or per tile (slide mode); test.py shows it as a
second bar only for photos slow enough to matter."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mit_semseg import prediction
from mit_semseg.config import load_cfg
from mit_semseg.data.transforms import Preprocess
from mit_semseg.inference.engine import InferenceEngine
from mit_semseg.inference.slide import SlideWindow

from _support import CFG, make_tiny_checkpoint, tiny_opts


class _Net:
    """A stand-in network: 4 class scores at 1/8 resolution (runs in microseconds)."""

    num_class = 4

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(img, 8, ceil_mode=True)
        return torch.cat([x, x.mean(1, keepdim=True)], dim=1)


def engine(**kwargs) -> InferenceEngine:
    return InferenceEngine(None, device="cpu", backend=_Net(),
                           preprocess=Preprocess((32, 48), 100, 8), **kwargs)


PHOTO = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("flip,sizes,total", [(False, [48], 2), (False, None, 3),
                                              (True, None, 5)])
def test_whole_mode_counts_network_runs_and_the_fusion(flip, sizes, total):
    calls = []
    got = engine(flip=flip).predict_image(PHOTO, sizes=sizes, progress=lambda *a: calls.append(a))
    assert calls == [(k, total) for k in range(total + 1)]
    assert np.array_equal(got.labels, engine(flip=flip).predict_image(PHOTO, sizes=sizes).labels)


@pytest.mark.parametrize("flip", [False, True])
def test_slide_mode_counts_tiles(flip):
    window = SlideWindow((32, 32), (24, 24))  # 64 x 80: 3 x 3 tiles
    calls = []
    eng = engine(flip=flip, window=window)
    got = eng.predict_image(PHOTO, progress=lambda *a: calls.append(a))
    assert calls == [(k, 9) for k in range(10)]
    assert np.array_equal(got.labels, eng.predict_image(PHOTO).labels)
    sample = {"img_ori": PHOTO, "img_data": []}
    calls.clear()
    eng.predict_sample(sample, progress=lambda *a: calls.append(a))
    assert calls[-1] == (9, 9)


def test_predict_sample_reports_too():
    eng = engine()
    sample = {"img_ori": PHOTO, "img_data": eng.preprocess.scales(Image.fromarray(PHOTO))}
    calls = []
    eng.predict_sample(sample, progress=lambda *a: calls.append(a))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


@pytest.fixture(scope="module")
def slide_cfg(tmp_path_factory):
    base = tmp_path_factory.mktemp("progress")
    ckpt = make_tiny_checkpoint(base / "ckpt")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (72, 96, 3), dtype=np.uint8)) \
        .save(base / "photo.png")
    cfg = load_cfg(CFG, tiny_opts(ckpt) + [
        "TEST.result", str(base / "out"), "TEST.mode", "slide", "TEST.crop_size", "[32, 32]",
        "TEST.stride", "[32, 32]"])
    return cfg, str(base / "photo.png")


def test_test_script_shows_a_tile_bar_for_slow_photos_only(slide_cfg, monkeypatch):
    cfg, photo = slide_cfg
    quick, err = io.StringIO(), io.StringIO()
    prediction.run_test(cfg, photo, "cpu", stream=io.StringIO(), err=quick)
    assert "tiles" not in quick.getvalue()  # quicker than STEP_BAR_DELAY_S: one bar only
    monkeypatch.setattr(prediction, "STEP_BAR_DELAY_S", 0.0)  # every photo is slow now
    prediction.run_test(cfg, photo, "cpu", stream=io.StringIO(), err=err)
    text = err.getvalue()
    assert "tiles:" in text and "/9 [" in text  # 72 x 96 in 32-pixel tiles: 3 x 3
