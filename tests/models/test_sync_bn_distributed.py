"""SynchronizedBatchNorm2d under DistributedDataParallel: 2 gloo processes on CPU.

Rank 0 holds 2 images of 8x8, rank 1 one image of 12x10. The reference runs
in this process over the union of their pixels: BatchNorm over all pixels,
loss = mean of the two ranks' losses (what DDP's gradient averaging
optimises), running statistics by the original's synchronised formula.
"""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from _support import free_port
from mit_semseg.nn import SynchronizedBatchNorm2d

WORLD = 2
STEPS = 2
LR = 0.5
TIMEOUT_S = 60


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), SynchronizedBatchNorm2d(6, momentum=0.1), nn.ReLU(),
        nn.Conv2d(6, 4, 1), SynchronizedBatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 1))
    with torch.no_grad():  # non-trivial affine parameters
        for m in model:
            if isinstance(m, SynchronizedBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of each rank, per step."""
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 8, 8), (1, 12, 10)]
    steps = []
    for _ in range(STEPS):
        steps.append([(torch.randn(n, 3, h, w, generator=g) * 2 + 0.5, torch.randint(0, 3, (n, h, w), generator=g))
                      for n, h, w in shapes])
    return steps


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        model = _model()
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
        record: dict = {"loss": [], "grads": []}
        for images_labels in _data():
            images, labels = images_labels[rank]
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp(images), labels)
            loss.backward()
            record["loss"].append(loss.detach())
            record["grads"].append([p.grad.clone() for p in model.parameters()])
            optimizer.step()
        record["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        if rank == 0:  # evaluation must not communicate: rank 1 does not take part
            model.eval()
            with torch.no_grad():
                model(images)
        dist.barrier()
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _union_bn(parts: list[torch.Tensor], bn: SynchronizedBatchNorm2d, expected: dict) -> list[torch.Tensor]:
    """BatchNorm over the pixel union of ``parts``; advances ``expected`` running statistics."""
    channels = bn.num_features
    flat = [p.transpose(0, 1).reshape(channels, -1) for p in parts]
    union = torch.cat(flat, dim=1)
    out = F.batch_norm(union.unsqueeze(0), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)[0]
    keep = 1 - bn.momentum
    stats = union.detach().double()
    expected["_tmp_running_mean"] = expected["_tmp_running_mean"] * keep + stats.mean(1)
    expected["_tmp_running_var"] = expected["_tmp_running_var"] * keep + stats.var(1, unbiased=True)
    expected["_running_iter"] = expected["_running_iter"] * keep + 1
    expected["running_mean"] = expected["_tmp_running_mean"] / expected["_running_iter"]
    expected["running_var"] = expected["_tmp_running_var"] / expected["_running_iter"]
    expected["num_batches_tracked"] = expected["num_batches_tracked"] + 1
    pieces = out.split([f.shape[1] for f in flat], dim=1)
    return [piece.reshape(channels, p.shape[0], *p.shape[2:]).transpose(0, 1) for piece, p in zip(pieces, parts)]


def _reference() -> tuple[list, list, dict]:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    expected = {i: {"_tmp_running_mean": torch.zeros(m.num_features, dtype=torch.double),
                    "_tmp_running_var": torch.ones(m.num_features, dtype=torch.double),
                    "_running_iter": torch.ones(1, dtype=torch.double),
                    "num_batches_tracked": 0}
                for i, m in enumerate(model) if isinstance(m, SynchronizedBatchNorm2d)}
    losses, grads = [], []
    for images_labels in _data():
        optimizer.zero_grad()
        parts = [images for images, _ in images_labels]
        for i, layer in enumerate(model):
            parts = _union_bn(parts, layer, expected[i]) if i in expected else [layer(p) for p in parts]
        rank_losses = [F.cross_entropy(p, labels) for p, (_, labels) in zip(parts, images_labels)]
        (sum(rank_losses) / WORLD).backward()
        losses.append([l.detach() for l in rank_losses])
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return losses, grads, expected


def test_ddp_gloo_matches_one_process_over_the_whole_batch(tmp_path: Path) -> None:
    context = mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 2 * TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("distributed workers did not finish in time")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    records = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    losses, grads, expected = _reference()
    tol = dict(rtol=1e-5, atol=1e-5)
    for rank, record in enumerate(records):
        for step in range(STEPS):
            torch.testing.assert_close(record["loss"][step], losses[step][rank], **tol)
            for ours, ref in zip(record["grads"][step], grads[step]):
                torch.testing.assert_close(ours, ref, **tol)
        for index, buffers in expected.items():
            for name, value in buffers.items():
                got = record["state"][f"{index}.{name}"]
                torch.testing.assert_close(got.double(), torch.as_tensor(value, dtype=torch.double).reshape(got.shape),
                                           **tol, msg=f"rank {rank} layer {index} {name}")
    for key, value in records[0]["state"].items():
        torch.testing.assert_close(value, records[1]["state"][key], rtol=0, atol=0, msg=key)
