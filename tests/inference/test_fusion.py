"""mit_semseg.fusion.fuse against the original's full-size procedure.

exact=True: its bits on every machine. exact=False (bands, class-last): the
same bits whatever the band height where this machine's kernels allow it
(``banding_exact``), probabilities equal to the original's to float32 rounding
and labels up to ties everywhere; bounded memory; reused buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mit_semseg.inference import fusion
from mit_semseg.inference.fusion import banding_exact, fuse

from _support import assert_same_labels_up_to_ties, reference_fuse


pytestmark = pytest.mark.usefixtures("one_thread")


def rand_logits(shapes, num_class, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, num_class, h, w, generator=g) * 4 for h, w in shapes]


def _check(got, logits, out):
    """Banded (exact=False) against one class-last piece: bit-identical if this
    machine's self-check says banding is exact, else within float32 rounding;
    against the original's procedure: within float32 rounding, labels up to ties."""
    one_piece = fuse(logits, out, return_probs=True, band_bytes=0, exact=False)
    labels, probs = reference_fuse(logits, out, return_probs=True)
    assert got.labels.shape == out and got.labels.dtype == np.int64
    assert tuple(got.probs.shape) == (logits[0].shape[1],) + tuple(out)
    if banding_exact("cpu", logits[0].shape[1]):
        assert np.array_equal(got.labels, one_piece.labels)
        assert torch.equal(got.probs, one_piece.probs)
    # each probability: a few float32 operations on values <= 1
    torch.testing.assert_close(got.probs, probs, rtol=0, atol=2e-6)
    assert_same_labels_up_to_ties(got.labels, probs, margin=4e-6)


@pytest.mark.parametrize("seed", range(8))
def test_banded_fusion_equals_reference(seed):
    rng = np.random.default_rng(seed)
    num_class = int(rng.choice([4, 8, 31, 150]))
    out = tuple(int(v) for v in rng.integers(40, 260, size=2))
    shapes = [tuple(int(v) for v in rng.integers(3, 45, size=2)) for _ in range(rng.integers(1, 5))]
    logits = rand_logits(shapes, num_class, seed)
    band_rows = int(rng.integers(1, 9))
    got = fuse(logits, out, return_probs=True, band_bytes=band_rows * num_class * out[1] * 4,
               exact=False)
    _check(got, logits, out)
    # without probabilities the labels are the same
    assert np.array_equal(fuse(logits, out, band_bytes=4096, exact=False).labels, got.labels) \
        or not banding_exact("cpu", num_class)


@pytest.mark.parametrize("num_class,src,out", [
    (4, (9, 13), (131, 97)),      # upsampling, odd sizes
    (150, (23, 31), (181, 243)),  # ADE20K class count
    (5, (60, 50), (47, 111)),     # downsampling rows
    (4, (7, 5), (300, 20)),       # narrow output: the horizontal pass is padded
    (6, (40, 40), (40, 129)),     # rows unchanged
])
def test_band_heights_do_not_change_the_result(num_class, src, out):
    logits = rand_logits([src], num_class, seed=sum(out))
    results = [fuse(logits, out, return_probs=True, band_bytes=rows * num_class * out[1] * 4,
                    exact=False)
               for rows in (1, 2, 7, out[0] // 3 + 1)]
    _check(results[0], logits, out)
    if banding_exact("cpu", num_class):
        for r in results[1:]:
            assert torch.equal(r.probs, results[0].probs)


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_fusion_is_the_originals_procedure_bit_for_bit(threads):
    """Odd sizes, 150 classes, several maps: the softmax over dim 1 of a full map
    rounds pixels by where its thread and vector loops end, which pieces of the
    map would not reproduce (exact=True ignores band_bytes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits = rand_logits([(11, 9), (30, 41), (23, 17)], 150, seed=4)
        for band in (0, 150 * 97 * 4 * 3):
            got = fuse(logits, (75, 97), return_probs=True, band_bytes=band)
            labels, probs = reference_fuse(logits, (75, 97), return_probs=True)
            assert np.array_equal(got.labels, labels) and torch.equal(got.probs, probs)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("maps", [1, 3])
def test_inexact_shortcuts_give_the_same_labels_up_to_ties(maps):
    """exact=False: no softmax for one map, no division by the count for several."""
    for seed in range(4):
        shapes = [(11 + 3 * k, 13 + k) for k in range(maps)]
        logits = rand_logits(shapes, 30, seed)
        labels, probs = reference_fuse(logits, (57, 70), return_probs=True)
        for band in (30 * 70 * 4 * 6, 0):
            got = fuse(logits, (57, 70), band_bytes=band, exact=False)
            assert_same_labels_up_to_ties(got.labels, probs)
        # probabilities, when asked for, are the averaged ones (to float32 rounding)
        with_probs = fuse(logits, (57, 70), return_probs=True, band_bytes=30 * 70 * 4 * 6,
                          exact=False)
        torch.testing.assert_close(with_probs.probs, probs, rtol=0, atol=2e-6)


def test_banded_fusion_never_interpolates_full_size(monkeypatch):
    out, num_class = (900, 700), 6
    logits = rand_logits([(60, 45), (90, 70)], num_class, seed=3)
    largest = []
    real = F.interpolate

    def spy(x, *args, **kwargs):
        y = real(x, *args, **kwargs)
        largest.append(y.numel())
        return y
    monkeypatch.setattr(F, "interpolate", spy)
    band = 16 * num_class * out[1] * 4
    labels = fuse(logits, out, band_bytes=band, exact=False).labels
    assert max(largest) * 4 <= 2 * band  # only band-sized pieces (a band's source rows)
    monkeypatch.setattr(F, "interpolate", real)
    assert np.array_equal(labels, fuse(logits, out, band_bytes=0, exact=False).labels) \
        or not banding_exact("cpu", num_class)


def test_fusion_reuses_buffers():
    logits = rand_logits([(12, 16)], 20, seed=1)
    fusion.release_workspace()
    fuse(logits, (96, 128), band_bytes=20 * 128 * 4 * 4, exact=False)
    first = {k: v.data_ptr() for k, v in fusion._workspace.buffers.items()}
    fuse(logits, (96, 128), band_bytes=20 * 128 * 4 * 4, exact=False)
    assert first and {k: v.data_ptr() for k, v in fusion._workspace.buffers.items()} == first


def test_fusion_in_and_outside_inference_mode():
    logits = rand_logits([(10, 14)], 12, seed=2)
    fusion.release_workspace()
    with torch.inference_mode():
        first = fuse(logits, (40, 130), band_bytes=12 * 130 * 4 * 3, exact=False).labels
    second = fuse(logits, (40, 130), band_bytes=12 * 130 * 4 * 3, exact=False).labels
    assert np.array_equal(first, second)


def test_row_plans_reproduce_interpolate_where_marked_exact():
    """A plan marked exact gives F.interpolate's rows bit for bit; an inexact one
    (a platform that rounds differently) is still within float32 rounding."""
    x = torch.rand(1, 1, 23, 300, generator=torch.Generator().manual_seed(0)) * 20 - 10
    for out in (7, 23, 61, 200):
        plan = fusion.row_plan(23, out, torch.device("cpu"))
        ref = F.interpolate(x, size=(out, 300), mode="bilinear", align_corners=False)[0, 0]
        got = torch.addcmul(x[0, 0, plan.i1] * plan.l1[:, None], x[0, 0, plan.i0], plan.l0[:, None])
        if plan.exact:
            assert torch.equal(got, ref)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\[1, C, h, w\]"):
        fuse([torch.zeros(2, 3, 4, 4)], (8, 8))
    with pytest.raises(ValueError, match="same number of classes"):
        fuse([torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 4)], (8, 8))
    with pytest.raises(ValueError, match="no class scores"):
        fuse([], (8, 8))
