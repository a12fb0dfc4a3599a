"""``TRAIN.stream original``: the original train.py's batch sequence, and with
``TRAIN.exact True`` its losses and weights, iteration by iteration.

The reference here is written from the original's recipe as its users run it
(seed ``random`` and torch, build the nets, make the loader's iterator, then per
step: its dataset's walk with NumPy's global generator seeded by the first
index, SGD with the poly rate); ``tools/original_train.py`` runs the original
package itself for the long comparison."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import mit_semseg.training as T
from _support import crash_after_checkpoint
from mit_semseg.config import load_cfg
from mit_semseg.data.datasets import TrainDataset
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.models import ModelBuilder, SegmentationModule
from mit_semseg.training.optim import group_weight
from mit_semseg.training.original_stream import OriginalPlanner

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (32, 40, 48)


def _reference_plans(samples, batch, count, first_index=0):
    """The original dataset's draws for ``count`` calls in one process."""
    np.random.seed(first_index)
    order = list(range(len(samples)))
    np.random.shuffle(order)
    cursor, buckets, plans = 0, ([], []), []
    for _ in range(count):
        while True:
            rec = samples[order[cursor]]
            buckets[0 if rec["height"] > rec["width"] else 1].append(order[cursor])
            cursor += 1
            if cursor >= len(order):
                cursor = 0
                np.random.shuffle(order)
            full = [b for b in buckets if len(b) == batch]
            if full:
                group = list(full[0])
                full[0].clear()
                break
        short = int(np.random.choice(SIZES))
        flips = tuple(bool(np.random.choice([0, 1])) for _ in group)
        plans.append((tuple(group), short, flips))
    return plans


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    lists = make_synthetic_dataset(root, num_train=12, num_val=2, size_range=(40, 90),
                                   num_class=4, seed=3)
    return root, lists


def test_plans_follow_the_original_walk_with_and_without_workers(data):
    root, lists = data
    cfg = load_cfg(None, ["DATASET.root_dataset", root, "DATASET.imgSizes", str(SIZES)])
    samples = TrainDataset(root, lists["training"], cfg.DATASET, batch_per_gpu=3).list_sample
    one = OriginalPlanner(samples, batch_per_gpu=3, img_sizes=SIZES, workers=0, per_iter=1)
    ours = [one.plans(k)[0] for k in range(20)]  # > one pass: the reshuffle at the wrap
    assert ours == _reference_plans(samples, 3, 20)
    # two loader workers: batch k from worker k % 2, each seeded by its first index
    two = OriginalPlanner(samples, batch_per_gpu=3, img_sizes=SIZES, workers=2, per_iter=1)
    ours = [two.plans(k)[0] for k in range(10)]
    w0, w1 = _reference_plans(samples, 3, 5, 0), _reference_plans(samples, 3, 5, 1)
    assert ours == [p for pair in zip(w0, w1) for p in pair]
    assert w0 != w1


def _initial_weights(folder, seed: int) -> tuple[str, str]:
    """Weight files both runs start from (resnet18dilated + ppm_deepsup, 4 classes)."""
    torch.manual_seed(seed)
    init = (str(folder / "enc.pth"), str(folder / "dec.pth"))
    torch.save(ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False).state_dict(),
               init[0])
    torch.save(ModelBuilder.build_decoder("ppm_deepsup", 512, 4).state_dict(), init[1])
    return init


def _cfg(root, lists, out, init, *extra):
    return load_cfg(None, [
        "DATASET.root_dataset", root, "DATASET.list_train", lists["training"],
        "DATASET.list_val", lists["validation"], "DATASET.num_class", "4",
        "DATASET.imgSizes", str(SIZES), "DATASET.imgMaxSize", "64",
        "MODEL.arch_encoder", "resnet18dilated", "MODEL.arch_decoder", "ppm_deepsup",
        "MODEL.fc_dim", "512", "MODEL.weights_encoder", init[0], "MODEL.weights_decoder", init[1],
        "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", "1", "TRAIN.epoch_iters", "4",
        "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "TRAIN.seed", "304", "DIR", out, *extra])


def test_exact_original_stream_equals_the_original_recipe(data, tmp_path):
    """Losses of every iteration and the final weights, bit for bit (a deep-supervised
    PPM head: its dropout draws from torch's generator after the nets' init)."""
    root, lists = data
    init = _initial_weights(tmp_path, seed=0)
    cfg = _cfg(root, lists, str(tmp_path / "ours"), init, "TRAIN.exact", "True",
               "TRAIN.stream", "original")
    summary = T.main(cfg, "cpu")

    # the reference: the original's recipe on one device
    random.seed(304)
    torch.manual_seed(304)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, init[0])
    dec = ModelBuilder.build_decoder("ppm_deepsup", 512, 4, init[1])
    module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1), 0.4)
    dataset = TrainDataset(root, lists["training"], cfg.DATASET, batch_per_gpu=2)
    torch.empty((), dtype=torch.int64).random_()  # the loader's iterator draws its base seed
    optimizers = [torch.optim.SGD(group_weight(net), lr=0.02, momentum=0.9, weight_decay=1e-4)
                  for net in (enc, dec)]
    losses = []
    module.train()
    for i, plan in enumerate(_reference_plans(dataset.list_sample, 2, 4)):
        batch = dataset.make_batch(*plan)
        module.zero_grad()
        lr = 0.02 * (1.0 - i / 4) ** 0.9
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        loss, _ = module(batch)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())

    assert summary.history["train"]["loss"] == losses
    for part, net in (("encoder", enc), ("decoder", dec)):
        saved = torch.load(os.path.join(cfg.DIR, f"{part}_epoch_1.pth"), weights_only=True)
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                assert torch.equal(saved[key], value), key


def test_original_stream_resumes_exactly(data, tmp_path):
    root, lists = data
    init = _initial_weights(tmp_path, seed=1)
    opts = ("TRAIN.stream", "original", "TRAIN.checkpoint_every", "2")
    ref = T.main(_cfg(root, lists, str(tmp_path / "ref"), init, *opts), "cpu")
    cut = _cfg(root, lists, str(tmp_path / "cut"), init, *opts)
    with crash_after_checkpoint("state_iter_2.pth"):
        T.main(cut, "cpu")
    again = T.main(cut, "cpu", resume="auto")
    assert again.history["train"]["loss"] == ref.history["train"]["loss"]
    for part in ("encoder", "decoder"):
        a = torch.load(os.path.join(str(tmp_path / "ref"), f"{part}_epoch_1.pth"), weights_only=True)
        b = torch.load(os.path.join(str(tmp_path / "cut"), f"{part}_epoch_1.pth"), weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
