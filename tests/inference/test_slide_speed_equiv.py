"""Sliding-window stitching (mit_semseg/slide.py) on awkward geometries against
the straightforward full-buffer implementation of tests/test_slide.py: odd
sizes, tiles that overlap once, twice or not at all, a photo smaller than the
crop, flip, scale below and above 1, both label paths, bands of one row.

The network is noise seeded by each tile's pixels, so no two tiles agree and a
tile added at the wrong place, with the wrong weight, twice or not at all
changes the result."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from mit_semseg.inference.fusion import banding_exact
from mit_semseg.inference.slide import SlideWindow, slide_predict
from test_slide import _photo, _reference


class _NoiseNet:
    """``[1, 3, h, w]`` -> ``[1, C, ceil(h/8), ceil(w/8)]`` noise, seeded by the input."""

    def __init__(self, num_class: int) -> None:
        self.num_class = num_class

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        gen = torch.Generator().manual_seed(zlib.crc32(x.contiguous().numpy().tobytes()))
        return torch.randn(1, self.num_class, -(-h // 8), -(-w // 8), generator=gen) * 4


CASES = {
    # name: (photo h, w), crop, stride, scale, classes. Tiles of height + width
    # above 128 take the row-by-row path, smaller ones are resized whole.
    "odd-sizes": ((157, 211), (70, 90), (45, 53), 1.0, 12),
    "three-deep": ((150, 190), (72, 90), (24, 30), 1.0, 12),  # counts up to 9
    "no-overlap": ((144, 192), (72, 96), (72, 96), 1.0, 12),
    "downscaled": ((203, 261), (72, 96), (48, 61), 0.55, 12),
    "upscaled": ((61, 83), (72, 96), (40, 50), 1.6, 12),
    "short-photo": ((50, 300), (96, 96), (64, 64), 1.0, 12),  # one short tile row
    "150-classes": ((120, 170), (72, 80), (48, 50), 0.7, 150),
    "3-classes": ((110, 150), (72, 96), (48, 61), 0.8, 3),  # whole-tile kernels
    "small-tiles": ((97, 131), (40, 56), (27, 33), 1.0, 12),  # whole-tile kernels
}


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_stitching_equals_the_full_buffer_implementation(case, flip):
    (h, w), crop, stride, scale, num_class = CASES[case]
    net = _NoiseNet(num_class)
    image = _photo(h, w, seed=h * w)
    window = SlideWindow(crop, stride, scale)
    ref = _reference(net, image, window, num_class, flip)
    one_row = w * num_class * 4  # bands of one row at the tiled resolution
    for band_bytes in (one_row, 10 ** 9):
        got = slide_predict(net, image, window, num_class, flip=flip, return_probs=True,
                            band_bytes=band_bytes)
        probs = got.probs.permute(1, 2, 0)
        if banding_exact("cpu", num_class):
            assert torch.equal(probs, ref)
            np.testing.assert_array_equal(got.labels, ref.argmax(-1).numpy())
        else:
            assert torch.allclose(probs, ref, rtol=0, atol=1e-5)
            assert (got.labels == ref.argmax(-1).numpy()).mean() > 0.999
        labels = slide_predict(net, image, window, num_class, flip=flip,
                               band_bytes=band_bytes).labels
        np.testing.assert_array_equal(labels, got.labels)


def test_noise_net_makes_a_misplaced_tile_visible():
    """The check above has teeth: shifting one tile's scores by a pixel changes labels."""
    (h, w), crop, stride, scale, num_class = CASES["odd-sizes"]
    net = _NoiseNet(num_class)
    image = _photo(h, w, seed=h * w)
    window = SlideWindow(crop, stride, scale)
    calls = []

    def shifted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        out = net(x)
        return out.roll(1, dims=3) if len(calls) == 2 else out

    ref = _reference(net, image, window, num_class)
    got = slide_predict(shifted, image, window, num_class)
    assert (got.labels != ref.argmax(-1).numpy()).sum() > 100
