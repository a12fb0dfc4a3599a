"""mmsegmentation's augmentation pipeline (DATASET.augment mmseg, mit_semseg.data.augment):
each step's values, and batches that are reproducible under the stream's seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _custom_data import tiny_model_opts
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.data import augment as A
from mit_semseg.data.datasets import TrainDataset


class _Scripted:
    """A stand-in generator that returns scripted values in order (and records calls)."""

    def __init__(self, *values):
        self.values, self.calls = list(values), []

    def _next(self, kind, *args):
        self.calls.append((kind, args))
        return self.values.pop(0)

    def integers(self, *args):
        return self._next("integers", *args)

    def uniform(self, *args):
        return self._next("uniform", *args)

    def random(self, *args):
        return self._next("random", *args)


def test_saturation_and_hue_in_hsv():
    colours = np.array([[[255, 0, 0], [0, 0, 255], [128, 128, 128], [200, 100, 100]]], np.uint8)
    assert np.array_equal(A.shift_saturation_hue(colours), colours)  # the identity
    # red turned by 120 degrees is green, blue by -120 green too; grey has no hue
    turned = A.shift_saturation_hue(colours, hue_degrees=120).astype(int)
    assert np.abs(turned[0, :3] - [[0, 255, 0], [255, 0, 0], [128, 128, 128]]).max() <= 3
    pale = A.shift_saturation_hue(colours, saturation=0.0)
    assert np.array_equal(pale[0, 3], [200, 200, 200])  # no saturation: grey of the same value
    assert np.array_equal(A.shift_saturation_hue(colours, saturation=1.5)[0, 0], [255, 0, 0])


def test_photometric_steps_and_their_order():
    img = np.array([[[10, 100, 250], [255, 0, 0]]], np.uint8)
    # brightness +20.7 (truncated), contrast last (x2), saturation x0.8, hue +30 (60 degrees)
    rng = _Scripted(1, 20.7, 0, 1, 0.8, 1, 30, 1, 2.0)
    out = A.photometric_distortion(img.copy(), rng)
    bright = np.clip(img.astype(np.float32) + 20.7, 0, 255).astype(np.uint8)
    shifted = A.shift_saturation_hue(bright, 0.8, 60.0)
    want = np.clip(shifted.astype(np.float32) * 2.0, 0, 255).astype(np.uint8)
    assert np.array_equal(out, want)
    assert [c[0] for c in rng.calls] == ["integers", "uniform", "integers", "integers",
                                         "uniform", "integers", "integers", "integers", "uniform"]
    assert rng.calls[6] == ("integers", (-18, 18))  # mmseg's hue range: -18..17
    # mode 1: contrast first; every other coin tails
    rng = _Scripted(0, 1, 1, 0.5, 0, 0)
    out = A.photometric_distortion(img.copy(), rng)
    assert np.array_equal(out, (img.astype(np.float32) * 0.5).astype(np.uint8))


def test_resize_fits_the_drawn_scale_as_mmseg():
    aug = A.MMSegAugment(scale=(2048, 512), ratio=(0.5, 2.0))
    assert aug.resized_size(100, 200, 1.0) == (512, 1024)  # short side limits
    assert aug.resized_size(100, 1000, 1.0) == (205, 2048)  # long side limits
    assert aug.resized_size(100, 200, 0.5) == (256, 512)


def test_crop_avoids_one_class_windows():
    labels = np.ones((40, 40), np.uint8)
    labels[:, 30:] = 2  # class 2 in the ten right columns
    labels[:, :2] = 0  # unlabeled: not counted
    aug = A.MMSegAugment(crop=(20, 20), cat_max_ratio=0.75)
    # offsets (top, left): (0, 0) class 1 only; (0, 12) 2 of 20 columns class 2 (90 %
    # class 1); (5, 18): 8 of 20 columns class 2 (60 %): taken
    rng = _Scripted(0, 0, 0, 12, 5, 18, 0, 0)
    assert aug.crop_box(labels, rng) == (5, 18, 25, 38)
    assert len(rng.calls) == 6 and rng.calls[1] == ("integers", (0, 21))
    # a single class everywhere: 11 draws, then the last one is taken
    rng = _Scripted(*([0] * 22))
    box = aug.crop_box(np.ones((30, 30), np.uint8), rng)
    assert len(rng.calls) == 22 and box == (0, 0, 20, 20)
    # an image smaller than the crop: the whole image
    assert aug.crop_box(np.ones((10, 12), np.uint8), np.random.default_rng(0)) == (0, 0, 10, 12)


def _dataset(data, *extra, seed=7):
    root, layout = data
    cfg = load_cfg(None, tiny_model_opts(root, "unused", layout["table"], *layout["opts"],
                                         "DATASET.augment", "mmseg",
                                         "DATASET.crop_size", "(24, 36)",
                                         "DATASET.augment_scale", "(64, 32)", *extra))
    return TrainDataset(root, cfg.DATASET.list_train, cfg.DATASET, batch_per_gpu=2, seed=seed)


def test_batches_are_crops_padded_and_reproducible(data):
    ds = _dataset(data)
    assert isinstance(ds.augment, A.MMSegAugment)
    batches = [ds[0] for _ in range(4)]
    for b in batches:
        assert b["img_data"].shape == (2, 3, 24, 40)  # 36 padded to a multiple of 8
        assert b["seg_label"].shape == (2, 3, 5)
        assert b["seg_label"].min() >= -1 and b["seg_label"].max() <= 2
    again = _dataset(data)
    for b in batches:
        c = again[0]
        assert torch.equal(b["img_data"], c["img_data"])
        assert torch.equal(b["seg_label"], c["seg_label"])
    other = _dataset(data, seed=8)[0]
    assert not torch.equal(other["img_data"], batches[0]["img_data"])
    # columns 36..39 are padding: ignored labels, zero image
    assert torch.all(batches[0]["img_data"][:, :, :, 36:] == 0)


def test_original_pipeline_stays_the_default(data):
    root, layout = data
    cfg = load_cfg(None, tiny_model_opts(root, "unused", layout["table"], *layout["opts"]))
    assert TrainDataset(root, cfg.DATASET.list_train, cfg.DATASET).augment is None
    with pytest.raises(ConfigError, match="DATASET.augment mmseg needs TRAIN.stream resumable"):
        load_cfg(None, ["DATASET.augment", "mmseg", "TRAIN.stream", "original"])
    with pytest.raises(ConfigError, match="DATASET.augment 'mosaic' is not one of"):
        load_cfg(None, ["DATASET.augment", "mosaic"])


def test_sample_flips_image_and_labels_together():
    img = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    labels = np.tile(np.arange(1, 7, dtype=np.uint8), (4, 1))
    aug = A.MMSegAugment(scale=(6, 4), ratio=(1.0, 1.0), crop=(4, 6), cat_max_ratio=1.0)
    # ratio 1, crop offsets 0, 0, flip (0.1 < 0.5), photometric: every coin tails
    image, seg = aug.sample(img, labels, _Scripted(1.0, 0, 0, 0.1, 0, 0, 0, 0, 0))
    assert np.array_equal(seg, labels[:, ::-1])
    assert np.array_equal(image, np.asarray(img)[:, ::-1])
