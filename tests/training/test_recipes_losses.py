"""The losses of TRAIN.loss (mit_semseg.training.losses): values on small hand-made
inputs, the ignore label, class weights and the weighted-sum syntax."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.training import losses as L
from mit_semseg.training.loss import build_criterion


def _logits(seed: int = 0, n: int = 2, c: int = 3, h: int = 4, w: int = 5) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2


def _labels(seed: int = 1, n: int = 2, c: int = 3, h: int = 4, w: int = 5) -> torch.Tensor:
    labels = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(seed))
    labels[0, 0, :3] = -1  # some unlabeled pixels
    return labels


def _one_hot_log(pred: torch.Tensor, c: int) -> torch.Tensor:
    """Log-probabilities of certain predictions (log 1 = 0, log 0 = -inf)."""
    return torch.log(F.one_hot(pred, c).permute(0, 3, 1, 2).float())


def test_spec_syntax_and_errors():
    assert L.parse_loss("cross_entropy") == [(1.0, "cross_entropy")]
    assert L.parse_loss("CE + 0.5*lovasz + 2 * Dice") == [(1.0, "cross_entropy"), (0.5, "lovasz"),
                                                          (2.0, "dice")]
    assert L.parse_loss("nll") == [(1.0, "cross_entropy")]
    with pytest.raises(ConfigError, match=r"unknown loss 'hinge'.*registered losses: \[.*'ohem'"):
        L.parse_loss("ce + hinge")
    with pytest.raises(ConfigError, match=r"cannot read the term '0.5\*'"):
        L.parse_loss("ce + 0.5*")


def test_default_criterion_is_the_original_nll_loss():
    cfg = load_cfg(None, [])
    weights = torch.tensor([1.0, 2.0, 0.5])
    crit = build_criterion(cfg, weights)
    assert type(crit) is nn.NLLLoss and crit.ignore_index == -1
    assert torch.equal(crit.weight, weights)
    cfg = load_cfg(None, ["TRAIN.loss", "ce + 0.5*dice"])
    assert isinstance(build_criterion(cfg, None), L.WeightedSum)


def test_every_loss_ignores_unlabeled_pixels():
    logits, labels = _logits(), _labels()
    changed = logits.clone()
    changed[0, :, 0, :3] += torch.tensor([5.0, -3.0, 1.0]).view(3, 1)  # only unlabeled pixels
    for name in ("cross_entropy", "ohem", "dice", "focal", "lovasz"):
        loss = L.build_loss(name, L.LossOptions(ohem_min_kept=3))
        a = loss(F.log_softmax(logits, 1), labels)
        b = loss(F.log_softmax(changed, 1), labels)
        assert a.dtype == torch.float32 and torch.isfinite(a)
        torch.testing.assert_close(a, b, msg=name)


def test_ohem_keeps_the_unconfident_pixels_and_at_least_min_kept():
    logp = F.log_softmax(_logits(), 1)
    labels = _labels()
    p_true = logp.exp().gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    valid = labels >= 0
    nll = -logp.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    hard = valid & (p_true < 0.5)
    assert 3 < int(hard.sum()) < int(valid.sum())
    loss = L.OhemCrossEntropy(thresh=0.5, min_kept=1)  # 1 per image: fewer than the hard ones
    torch.testing.assert_close(loss(logp, labels), nll[hard].mean())
    # min_kept above the hard pixels: the least confident labeled pixels, in order
    wanted = int(hard.sum()) + 3
    per_image = -(-wanted // 2)
    order = p_true.masked_fill(~valid, 2.0).flatten().argsort()[:per_image * 2]
    loss = L.OhemCrossEntropy(thresh=0.5, min_kept=per_image)
    torch.testing.assert_close(loss(logp, labels), nll.flatten()[order].mean())
    # more than there are: every labeled pixel, i.e. the plain cross-entropy
    everything = L.OhemCrossEntropy(thresh=0.0, min_kept=1000)(logp, labels)
    torch.testing.assert_close(everything, F.nll_loss(logp, labels, ignore_index=-1))
    # class weights: the weighted mean over the kept pixels
    w = torch.tensor([0.5, 2.0, 1.0])
    weighted = L.OhemCrossEntropy(thresh=1.01, min_kept=0, weight=w)(logp, labels)
    torch.testing.assert_close(weighted, F.nll_loss(logp, labels, weight=w, ignore_index=-1))


def test_dice_of_certain_predictions():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, -1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 2]]])
    loss = L.DiceLoss()(_one_hot_log(pred, 3), labels)
    valid = labels >= 0
    dice = []
    for c in range(3):
        p, t = (pred == c) & valid, (labels == c) & valid
        dice.append((2 * (p & t).sum() + 1) / (p.sum() + t.sum() + 1))
    torch.testing.assert_close(loss, 1 - torch.stack(dice).float().mean())
    perfect = L.DiceLoss()(_one_hot_log(labels.clamp(min=0), 3), labels)
    assert float(perfect) == pytest.approx(0.0, abs=1e-7)


def test_focal_loss_values():
    logp, labels = F.log_softmax(_logits(), 1), _labels()
    torch.testing.assert_close(L.FocalLoss(gamma=0.0)(logp, labels),
                               F.nll_loss(logp, labels, ignore_index=-1))
    valid = labels >= 0
    safe = labels.clamp(min=0)
    lp = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = torch.tensor([0.5, 2.0, 1.0])
    expect = (-(1 - lp.exp()) ** 2 * lp * w[safe])[valid].mean()
    torch.testing.assert_close(L.FocalLoss(gamma=2.0, weight=w)(logp, labels), expect)


def test_lovasz_softmax_is_one_minus_iou_at_certain_predictions():
    labels = torch.tensor([[[0, 0, 1, 1, 1], [0, 0, 1, -1, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0], [0, 0, 1, 2, 0]]])
    loss = L.LovaszSoftmax()(_one_hot_log(pred, 4), labels)
    valid = labels >= 0
    ious = []
    for c in (0, 1, 2):  # the classes present in the labels (3 is not)
        p, t = (pred == c) & valid, (labels == c) & valid
        ious.append((p & t).sum() / (p | t).sum())
    torch.testing.assert_close(loss, 1 - torch.stack(ious).float().mean())
    logits = _logits().requires_grad_()
    L.LovaszSoftmax()(F.log_softmax(logits, 1), _labels()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_weighted_sum_and_criterion_options():
    cfg = load_cfg(None, ["TRAIN.loss", "ohem + 0.5*lovasz + 0.25*focal",
                          "TRAIN.ohem_thresh", "0.6",
                          "TRAIN.ohem_min_kept", "2", "TRAIN.focal_gamma", "1.5"])
    w = torch.tensor([1.0, 3.0, 0.5])
    crit = build_criterion(cfg, w)
    logp, labels = F.log_softmax(_logits(), 1), _labels()
    expect = (L.OhemCrossEntropy(0.6, 2, w)(logp, labels) + 0.5 * L.LovaszSoftmax()(logp, labels)
              + 0.25 * L.FocalLoss(1.5, w)(logp, labels))
    torch.testing.assert_close(crit(logp, labels), expect)


def test_a_batch_without_labels_gives_zero_and_a_gradient():
    logits = _logits().requires_grad_()
    labels = torch.full((2, 4, 5), -1)
    for name in ("ohem", "focal", "lovasz"):
        value = L.build_loss(name)(F.log_softmax(logits, 1), labels)
        assert float(value.detach()) == 0.0
        value.backward()
