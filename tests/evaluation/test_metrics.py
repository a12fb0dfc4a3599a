"""SegmentationMetrics equals the original formulas (utils.intersectionAndUnion,
utils.accuracy summed as eval.py does), merges exactly, and rejects bad values."""
import numpy as np
import pytest
import torch

from mit_semseg.evaluation.metrics import SegmentationMetrics, confusion_counts
from mit_semseg.utils import AverageMeter, accuracy, intersectionAndUnion


def random_pairs(num_class, count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(5, 40, size=2)
        pred = rng.integers(0, num_class, (h, w))
        label = rng.integers(-1, num_class, (h, w))  # -1 = unlabeled
        label[rng.random((h, w)) < 0.2] = -1
        yield pred, label


def original_eval(pairs, num_class):
    """The original eval.py summary over (pred, label) pairs."""
    acc_meter, inter_meter, union_meter = AverageMeter(), AverageMeter(), AverageMeter()
    for pred, label in pairs:
        acc, pix = accuracy(pred, label)
        inter, union = intersectionAndUnion(pred, label, num_class)
        acc_meter.update(acc, pix)
        inter_meter.update(inter)
        union_meter.update(union)
    iou = inter_meter.sum / (union_meter.sum + 1e-10)
    return inter_meter.sum, union_meter.sum, iou, acc_meter.average()


@pytest.mark.parametrize("num_class", [2, 3, 8, 150])
def test_equals_original_formulas(num_class):
    pairs = list(random_pairs(num_class, 6, seed=num_class))
    metrics = SegmentationMetrics(num_class)
    for pred, label in pairs:
        metrics.update(pred, label)
    inter, union, iou, acc = original_eval(pairs, num_class)
    np.testing.assert_array_equal(metrics.intersection, inter)
    np.testing.assert_array_equal(metrics.union, union)
    np.testing.assert_array_equal(metrics.iou, iou)
    assert metrics.mean_iou == iou.mean()
    assert metrics.pixel_accuracy == pytest.approx(acc, rel=1e-9, abs=1e-12)
    assert metrics.num_images == len(pairs)


def test_torch_inputs_and_merge_are_exact():
    pairs = list(random_pairs(8, 9, seed=1))
    whole = SegmentationMetrics(8)
    parts = [SegmentationMetrics(8) for _ in range(3)]
    for i, (pred, label) in enumerate(pairs):
        whole.update(pred, label)
        parts[i % 3].update(torch.from_numpy(pred), torch.from_numpy(label))
    merged = SegmentationMetrics(8)
    for part in reversed(parts):
        merged.merge(part)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    assert merged.summary() == whole.summary()


def test_extra_metrics_by_hand():
    label = np.array([[0, 0, 1, 1], [2, 2, -1, -1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    m = SegmentationMetrics(3)
    m.update(pred, label)
    # confusion rows = truth: class0 -> [1,1,0], class1 -> [0,2,0], class2 -> [1,0,1]
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert m.pixel_accuracy == pytest.approx(4 / 6)
    np.testing.assert_allclose(m.class_accuracy, [0.5, 1.0, 0.5])
    assert m.mean_class_accuracy == pytest.approx(2 / 3)
    iou = np.array([1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(m.iou, iou)
    assert m.frequency_weighted_iou == pytest.approx((2 * iou[0] + 2 * iou[1] + 2 * iou[2]) / 6)


def test_absent_class_counts_as_zero_iou_and_no_class_accuracy():
    m = SegmentationMetrics(4)
    m.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert m.iou.tolist() == [pytest.approx(1.0), 0.0, 0.0, 0.0]
    assert m.mean_iou == pytest.approx(0.25)
    assert m.mean_class_accuracy == 1.0
    assert m.summary()["per_class"][3]["accuracy"] is None


def test_bad_values_are_rejected():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="label value 3"):
        m.update(np.zeros(4, int), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="prediction value 5"):
        m.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shapes must match"):
        m.update(np.zeros(3, int), np.zeros(4, int))
    # a bad prediction on an unlabeled pixel is not counted, hence not an error
    m.update(np.array([0, 7]), np.array([0, -1]))
    assert m.confusion.sum() == 1
    with pytest.raises(ValueError, match="cannot merge"):
        m.merge(SegmentationMetrics(4))


# ------------------------------------------------------------------ confusion counts

def _confusion_reference(pred, label, k):
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    keep = label >= 0
    return np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_confusion_counts_equal_masked_bincount(as_tensor):
    rng = np.random.default_rng(0)
    k = 13
    label = rng.integers(-1, k, (37, 41))
    pred = rng.integers(0, k, (37, 41)).astype(np.uint8)
    args = (torch.from_numpy(pred), torch.from_numpy(label)) if as_tensor else (pred, label)
    got = confusion_counts(*args, k)
    assert got.dtype == np.int64 and np.array_equal(got, _confusion_reference(pred, label, k))


def test_confusion_counts_declines_what_it_cannot_count():
    k = 5
    label = np.array([[0, 1], [-1, 4]])
    pred = np.array([[0, 1], [2, 3]])
    assert confusion_counts(pred, np.array([[0, 1], [-2, 4]]), k) is None  # label < -1
    assert confusion_counts(pred, np.array([[0, 1], [5, 4]]), k) is None   # label >= k
    assert confusion_counts(np.array([[0, 1], [7, 3]]), label, k) is None  # pred >= k
    assert confusion_counts(pred.astype(float), label, k) is None
    frozen = pred.copy()
    frozen.flags.writeable = False
    assert confusion_counts(frozen, label, k) is None


def test_segmentation_metrics_fast_and_slow_paths_agree():
    from mit_semseg.evaluation.metrics import SegmentationMetrics
    rng = np.random.default_rng(1)
    k = 9
    a, b = SegmentationMetrics(k), SegmentationMetrics(k)
    for _ in range(3):
        label = rng.integers(-1, k, (20, 30))
        pred = rng.integers(0, k, (20, 30))
        a.update(pred, label)
        # predictions outside the range on unlabeled pixels: the fast path declines
        pred_odd = pred.copy()
        pred_odd[label < 0] = k + 3
        b.update(pred_odd, label)
    assert np.array_equal(a.confusion, b.confusion) and a.num_images == b.num_images == 3
    with pytest.raises(ValueError):
        a.update(np.full((2, 2), k), np.zeros((2, 2), dtype=int))
