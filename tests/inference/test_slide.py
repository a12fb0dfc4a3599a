"""Sliding-window inference (mit_semseg/slide.py) against a straightforward
implementation that holds full C x H x W buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mit_semseg.inference.fusion import banding_exact
from mit_semseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mit_semseg.inference.slide import SlideWindow, slide_options, slide_predict, tile_windows

from _support import TinyNet




def _reference(score_fn, image: np.ndarray, window: SlideWindow, num_class: int,
               flip: bool = False) -> torch.Tensor:
    """The procedure of slide.py written plainly: full-size score and count buffers
    (mmsegmentation style), one per copy; returns the mean of the copies' softmax
    at the photo's size, [H, W, C]."""
    from PIL import Image
    H, W = image.shape[:2]
    if window.scale != 1:
        size = (max(1, int(W * window.scale + 0.5)), max(1, int(H * window.scale + 0.5)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    h, w = image.shape[:2]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    img = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
    copies = [(False,)] + ([(True,)] if flip else [])
    probs = 0
    for (mirrored,) in copies:
        total = torch.zeros(1, num_class, h, w)
        count = torch.zeros(1, 1, h, w)
        for y0, y1 in tile_windows(h, window.crop_size[0], window.stride[0]):
            for x0, x1 in tile_windows(w, window.crop_size[1], window.stride[1]):
                tile = img[:, :, y0:y1, x0:x1]
                s = score_fn(tile.flip(-1)).flip(-1) if mirrored else score_fn(tile)
                total[:, :, y0:y1, x0:x1] += F.interpolate(s, size=(y1 - y0, x1 - x0),
                                                           mode="bilinear", align_corners=False)
                count[:, :, y0:y1, x0:x1] += 1
        scores = total / count
        scores = F.interpolate(scores, size=(H, W), mode="bilinear", align_corners=False)
        probs = probs + F.softmax(scores[0].permute(1, 2, 0), dim=-1) / len(copies)
    return probs


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
        img += rng.uniform(0, 255, 3) * blob[..., None]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_tile_windows_cover_the_side_mmseg_style():
    assert tile_windows(100, 64, 40) == [(0, 64), (36, 100)]
    assert tile_windows(64, 64, 40) == [(0, 64)]
    assert tile_windows(30, 64, 40) == [(0, 30)]  # smaller than the crop: one short tile
    assert tile_windows(150, 64, 43) == [(0, 64), (43, 107), (86, 150)]


@pytest.mark.parametrize("flip", [False, True])
def test_slide_equals_full_buffer_implementation(flip):
    net, C = TinyNet(12).eval(), 12
    image = _photo(150, 203)
    window = SlideWindow(crop_size=(72, 96), stride=(48, 61))
    with torch.no_grad():
        ref = _reference(net, image, window, C, flip)
    # a small band (3 rows) so many bands and both tile rows per band are exercised
    got = slide_predict(net, image, window, C, flip=flip, return_probs=True,
                        band_bytes=3 * 203 * C * 4)
    assert got.labels.shape == (150, 203)
    assert torch.allclose(got.probs.permute(1, 2, 0), ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.labels, ref.argmax(-1).numpy())
    labels_only = slide_predict(net, image, window, C, flip=flip, band_bytes=3 * 203 * C * 4)
    np.testing.assert_array_equal(labels_only.labels, got.labels)


@pytest.mark.parametrize("scale,size", [(1.0, (150, 203)), (0.6, (161, 219)), (1.7, (61, 83))])
def test_slide_is_bit_identical_where_banding_is_exact(scale, size):
    """Bit for bit where the run-time probe says banded resizing reproduces this
    platform's F.interpolate (fusion.banding_exact), else to float32 rounding."""
    net, C = TinyNet(12).eval(), 12
    image = _photo(*size, seed=1)
    window = SlideWindow(crop_size=(72, 96), stride=(48, 61), scale=scale)
    with torch.no_grad():
        ref = _reference(net, image, window, C)
    got = slide_predict(net, image, window, C, return_probs=True,
                        band_bytes=7 * size[1] * C * 4)
    assert got.labels.shape == size
    probs = got.probs.permute(1, 2, 0)
    if banding_exact("cpu", C):
        assert torch.equal(probs, ref)
    else:
        assert torch.allclose(probs, ref, rtol=0, atol=1e-5)
        assert (got.labels == ref.argmax(-1).numpy()).mean() > 0.999


def test_photo_smaller_than_the_crop_is_one_whole_tile():
    net, C = TinyNet(12).eval(), 12
    image = _photo(40, 57, seed=3)
    got = slide_predict(net, image, SlideWindow((512, 512), (341, 341)), C, return_probs=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
        whole = F.interpolate(net(img), size=(40, 57), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(got.labels, whole[0].argmax(0).numpy())


def test_slide_options_from_config_and_errors():
    from mit_semseg.config import cfg
    node = cfg.TEST.clone()
    assert slide_options(node) is None  # default mode: whole
    node.mode, node.crop_size, node.stride, node.slide_scale = "slide", [256, 320], [170, 200], 0.5
    opts = slide_options(node)
    assert opts == SlideWindow((256, 320), (170, 200), 0.5)
    node.mode = "tiles"
    with pytest.raises(ValueError, match=r"TEST.mode.*'whole', 'slide'"):
        slide_options(node)
    node.mode, node.stride = "slide", [300, 300]
    with pytest.raises(ValueError, match="stride .* larger than crop_size"):
        slide_options(node, "TEST")
    with pytest.raises(ValueError, match="crop_size must be a positive integer"):
        SlideWindow((0, 10), (1, 1))


def test_slide_through_the_engine_and_segmenter(tmp_path):
    """A real encoder/decoder through InferenceEngine.scores (the default inference
    copy): Segmenter in slide mode equals the reference run with the same network."""
    from mit_semseg.inference import InferenceEngine, Segmenter
    from mit_semseg.config import load_cfg
    from mit_semseg.models import ModelBuilder, SegmentationNetwork
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, "", pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, 8, "", use_softmax=True)
    window = SlideWindow((64, 80), (40, 50))
    engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", flip=True, window=window)
    cfg = load_cfg(None, ["DATASET.num_class", "8"])
    seg = Segmenter(engine, cfg.DATASET)
    image = _photo(101, 139, seed=5)
    labels, probs = seg.predict(image, return_probs=True)
    with torch.inference_mode():
        ref = _reference(engine.scores, image, window, 8, flip=True)
    assert torch.allclose(probs.permute(1, 2, 0), ref, rtol=0, atol=1e-6)
    assert (labels == ref.argmax(-1).numpy()).mean() > 0.999
    # per-call flip override
    with torch.inference_mode():
        ref = _reference(engine.scores, image, window, 8, flip=False)
    assert (seg.predict(image, flip=False) == ref.argmax(-1).numpy()).mean() > 0.999
