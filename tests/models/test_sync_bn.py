"""SynchronizedBatchNorm{1,2,3}d and the DataParallel helpers (CPU; GPU tests skip)."""
from __future__ import annotations

import copy
import pickle
import threading
from collections import namedtuple

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn import (DEFAULT_MOMENTUM, DataParallelWithCallback, SynchronizedBatchNorm1d,
                               SynchronizedBatchNorm2d, SynchronizedBatchNorm3d,
                               UserScatteredDataParallel, async_copy_to, patch_replication_callback,
                               user_scattered_collate)
from mit_semseg.nn.comm import ReplicaGroup
from mit_semseg.nn.replicate import execute_replication_callbacks

CASES = {  # class, torch reference, input shape
    "1d-NC": (SynchronizedBatchNorm1d, nn.BatchNorm1d, (6, 4)),
    "1d-NCL": (SynchronizedBatchNorm1d, nn.BatchNorm1d, (3, 4, 5)),
    "2d": (SynchronizedBatchNorm2d, nn.BatchNorm2d, (2, 4, 5, 3)),
    "3d": (SynchronizedBatchNorm3d, nn.BatchNorm3d, (2, 4, 3, 2, 3)),
}


def _randomise_affine(*bns: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.rand(bns[0].num_features, generator=g) + 0.5, torch.randn(bns[0].num_features, generator=g)
    for bn in bns:
        if bn.affine:
            with torch.no_grad():
                bn.weight.copy_(weight)
                bn.bias.copy_(bias)


def test_state_dict_keys_and_defaults() -> None:
    bn = SynchronizedBatchNorm2d(3)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                                     "_tmp_running_mean", "_tmp_running_var", "_running_iter"]
    assert bn.momentum == DEFAULT_MOMENTUM == 0.001 and bn.eps == 1e-5
    assert bn._running_iter.shape == (1,)
    assert list(SynchronizedBatchNorm2d(3, affine=False).state_dict()) == [
        "running_mean", "running_var", "num_batches_tracked", "_tmp_running_mean", "_tmp_running_var",
        "_running_iter"]
    other = SynchronizedBatchNorm2d(3, momentum=0.1)
    other.load_state_dict(bn.state_dict())  # strict
    copy.deepcopy(bn)
    pickle.dumps(bn)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("momentum", [DEFAULT_MOMENTUM, 0.1])
@pytest.mark.parametrize("affine", [True, False])
def test_single_device_equals_torch_batchnorm(case: str, momentum: float, affine: bool) -> None:
    cls, ref_cls, shape = CASES[case]
    ours, ref = cls(4, momentum=momentum, affine=affine), ref_cls(4, momentum=momentum, affine=affine)
    _randomise_affine(ours, ref)
    g = torch.Generator().manual_seed(0)
    for training in (True, True, False):
        ours.train(training)
        ref.train(training)
        x = torch.randn(shape, generator=g) * 3 + 1
        head = torch.randn(shape, generator=g)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        (ya * head).sum().backward()
        (yb * head).sum().backward()
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
        if affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=0)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=0)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=0, atol=0)


def test_wrong_dimensions_rejected() -> None:
    with pytest.raises(ValueError):
        SynchronizedBatchNorm2d(4)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError):
        SynchronizedBatchNorm1d(4)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError):
        SynchronizedBatchNorm3d(4)(torch.randn(2, 4, 3, 3))


def test_reset_running_stats_resets_moving_average_buffers() -> None:
    bn = SynchronizedBatchNorm2d(3)
    with torch.no_grad():
        for buf in bn.buffers():
            buf.add_(5)
    bn.reset_running_stats()
    fresh = SynchronizedBatchNorm2d(3)
    for (name, a), (_, b) in zip(bn.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_single_member_process_group_is_plain_batchnorm() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ours, ref = SynchronizedBatchNorm2d(3, momentum=0.1), nn.BatchNorm2d(3)
        x = torch.randn(2, 3, 4, 4)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


# --- synchronisation across DataParallel replicas, simulated on CPU with threads -------------

def _replicate_on_cpu(module: nn.Module, copies: int) -> list[nn.Module]:
    """What DataParallel.replicate does for a module without children, minus the devices.

    Replica 0 shares the buffers of ``module`` (as on device_ids[0]); parameters
    become non-leaf aliases so that gradients reach ``module``.
    """
    replicas = []
    for copy_id in range(copies):
        replica = module._replicate_for_data_parallel()
        for name, param in module._parameters.items():
            setattr(replica, name, None if param is None else param.view_as(param))
        if copy_id > 0:
            for name, buf in module._buffers.items():
                replica._buffers[name] = buf.clone()
        replicas.append(replica)
    execute_replication_callbacks(replicas)
    return replicas


def _run_in_threads(replicas: list[nn.Module], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    results: list = [None] * len(replicas)

    def work(i: int) -> None:
        try:
            results[i] = replicas[i](inputs[i])
        except BaseException as exc:  # re-raised below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "replica thread hung"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _union_batch_norm(parts: list[torch.Tensor], weight, bias, eps: float) -> list[torch.Tensor]:
    """BatchNorm over the union of the elements of ``parts`` (same channels, any N and sizes)."""
    channels = parts[0].shape[1]
    flat = [p.transpose(0, 1).reshape(channels, -1) for p in parts]
    union = torch.cat(flat, dim=1).unsqueeze(0)
    out = F.batch_norm(union, None, None, weight, bias, training=True, eps=eps)[0]
    pieces = out.split([f.shape[1] for f in flat], dim=1)
    return [piece.reshape(channels, p.shape[0], *p.shape[2:]).transpose(0, 1)
            for piece, p in zip(pieces, parts)]


def _expected_moving_average(state: dict, parts: list[torch.Tensor], momentum: float) -> dict:
    """The original's synchronised running statistics after one step over ``parts``."""
    channels = parts[0].shape[1]
    union = torch.cat([p.detach().transpose(0, 1).reshape(channels, -1) for p in parts], dim=1).double()
    keep = 1 - momentum
    new = {"_tmp_running_mean": state["_tmp_running_mean"] * keep + union.mean(1),
           "_tmp_running_var": state["_tmp_running_var"] * keep + union.var(1, unbiased=True),
           "_running_iter": state["_running_iter"] * keep + 1}
    new["running_mean"] = new["_tmp_running_mean"] / new["_running_iter"]
    new["running_var"] = new["_tmp_running_var"] / new["_running_iter"]
    return new


def _initial_moving_average(channels: int) -> dict:
    return {"_tmp_running_mean": torch.zeros(channels, dtype=torch.double),
            "_tmp_running_var": torch.ones(channels, dtype=torch.double),
            "_running_iter": torch.ones(1, dtype=torch.double)}


@pytest.mark.parametrize("affine", [True, False])
def test_replicas_synchronise_like_batchnorm_over_the_union(affine: bool) -> None:
    momentum = 0.1
    bn = SynchronizedBatchNorm2d(3, momentum=momentum, affine=affine)
    ref_weight = ref_bias = None
    if affine:
        _randomise_affine(bn)
        ref_weight, ref_bias = bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_()
    g = torch.Generator().manual_seed(0)
    expected = _initial_moving_average(3)
    for step in range(2):
        parts = [torch.randn(2, 3, 4, 4, generator=g) * 2 + 1, torch.randn(1, 3, 6, 5, generator=g) - 1,
                 torch.randn(3, 3, 2, 3, generator=g)]
        heads = [torch.randn(p.shape, generator=g) for p in parts]
        ours_in = [p.clone().requires_grad_() for p in parts]
        ref_in = [p.clone().requires_grad_() for p in parts]
        if affine:
            bn.weight.grad = bn.bias.grad = ref_weight.grad = ref_bias.grad = None

        outs = _run_in_threads(_replicate_on_cpu(bn, 3), ours_in)
        sum((o * h).sum() for o, h in zip(outs, heads)).backward()
        refs = _union_batch_norm(ref_in, ref_weight, ref_bias, bn.eps)
        sum((o * h).sum() for o, h in zip(refs, heads)).backward()

        for o, r, a, b in zip(outs, refs, ours_in, ref_in):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
        if affine:
            torch.testing.assert_close(bn.weight.grad, ref_weight.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(bn.bias.grad, ref_bias.grad, rtol=1e-5, atol=1e-5)
        expected = _expected_moving_average(expected, parts, momentum)
        for name, value in expected.items():
            torch.testing.assert_close(getattr(bn, name).double(), value, rtol=1e-5, atol=1e-6, msg=name)
        assert bn.num_batches_tracked.item() == step + 1
    assert bn._replica_group is None  # the wrapped module itself stays unsynchronised
    bn.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                                   eps=bn.eps))


def test_replicas_low_precision_input() -> None:
    bn = SynchronizedBatchNorm2d(3)
    parts = [torch.randn(2, 3, 4, 4) + 4, torch.randn(1, 3, 5, 5) + 4]
    outs = _run_in_threads(_replicate_on_cpu(bn, 2), [p.bfloat16() for p in parts])
    refs = _union_batch_norm(parts, bn.weight, bn.bias, bn.eps)
    for o, r in zip(outs, refs):
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o.float(), r, rtol=0.02, atol=0.05)


def test_replica_group_times_out_instead_of_hanging() -> None:
    group = ReplicaGroup(timeout=0.2)
    group.join(0)
    group.join(1)
    with pytest.raises(RuntimeError, match="timed out"):
        group.all_reduce(0, torch.ones(2))


def test_replica_group_forwards_master_failure() -> None:
    group = ReplicaGroup(timeout=5)
    group.join(0)
    group.join(1)
    errors = []

    def slave() -> None:
        try:
            group.all_reduce(1, torch.ones(2))
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=slave)
    t.start()

    def broken(total: torch.Tensor) -> torch.Tensor:
        raise OSError("link down")

    with pytest.raises(OSError):
        group.all_reduce(0, torch.ones(2), broken)
    t.join(timeout=10)
    assert errors and "link down" in str(errors[0])


# --- DataParallel helpers ---------------------------------------------------------------------

def test_patch_replication_callback_runs_callbacks_once() -> None:
    dp = nn.DataParallel(nn.Sequential(nn.Conv2d(3, 3, 1), SynchronizedBatchNorm2d(3)), device_ids=[])
    made = []

    def fake_replicate(module, device_ids):
        made[:] = [module._replicate_for_data_parallel() for _ in device_ids]
        for replica in made:
            replica._modules = {k: m._replicate_for_data_parallel() for k, m in module._modules.items()}
        return made

    dp.replicate = fake_replicate
    patch_replication_callback(dp)
    patch_replication_callback(dp)
    replicas = dp.replicate(dp.module, [0, 1])
    groups = {id(r[1]._replica_group) for r in replicas}
    assert len(groups) == 1 and replicas[0][1]._replica_group.size == 2
    assert [r[1]._replica_id for r in replicas] == [0, 1]
    assert dp.module[1]._replica_group is None
    with pytest.raises(TypeError):
        patch_replication_callback(nn.Linear(2, 2))


def test_async_copy_to_nested_structures() -> None:
    Pair = namedtuple("Pair", "a b")
    batch = {"img_data": torch.ones(2), "info": "a.jpg", "sizes": [torch.zeros(1), 3],
             "pair": Pair(torch.ones(1), "x"), "t": (torch.ones(1),)}
    out = async_copy_to(batch, "cpu")
    assert out["info"] == "a.jpg" and out["sizes"][1] == 3
    assert isinstance(out["pair"], Pair) and out["pair"].b == "x"
    assert isinstance(out["t"], tuple) and isinstance(out["sizes"], list)
    torch.testing.assert_close(out["img_data"], batch["img_data"])


def test_user_scattered_collate_is_identity() -> None:
    batch = [{"img_data": torch.ones(1)}, {"img_data": torch.zeros(2)}]
    assert user_scattered_collate(batch) is batch


class _Echo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = SynchronizedBatchNorm2d(3)

    def forward(self, feed: dict, *, scale: float = 1.0):
        return self.bn(feed["img_data"]).mean() * scale


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_user_scattered_data_parallel_without_cuda() -> None:
    model = UserScatteredDataParallel(_Echo())
    assert model.device_ids == []
    feed = {"img_data": torch.randn(2, 3, 4, 4)}
    torch.testing.assert_close(model([feed], scale=2.0), _Echo()(feed) * 2.0)
    with pytest.raises(ValueError):
        model([feed, feed])
    with pytest.raises(TypeError):
        model(feed)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@two_gpus
@pytest.mark.parametrize("wrapper", ["with_callback", "patched_user_scattered"])
def test_data_parallel_two_gpus_synchronise(wrapper: str) -> None:
    momentum = 0.1
    bn = SynchronizedBatchNorm2d(3, momentum=momentum).cuda(0)
    _randomise_affine(bn)
    ref_weight = bn.weight.detach().clone().requires_grad_()
    ref_bias = bn.bias.detach().clone().requires_grad_()
    parts = [torch.randn(2, 3, 4, 4) * 2 + 1, torch.randn(1, 3, 6, 5) - 1]
    heads = [torch.randn(p.shape) for p in parts]
    if wrapper == "with_callback":
        model = DataParallelWithCallback(bn, device_ids=[0, 1])
        same = torch.randn(4, 3, 5, 5)
        parts, heads = list(same.chunk(2)), [torch.randn(2, 3, 5, 5) for _ in range(2)]
        x = same.cuda(0).requires_grad_()
        out = model(x)
        (out * torch.cat(heads).cuda(0)).sum().backward()
        ours_grad = list(x.grad.cpu().chunk(2))
        ours_out = list(out.detach().cpu().chunk(2))
    else:
        class Head(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, feed: dict) -> torch.Tensor:
                y = self.inner(feed["x"])
                return y, (y * feed["h"]).sum()

        model = UserScatteredDataParallel(Head(bn), device_ids=[0, 1])
        patch_replication_callback(model)
        xs = [p.clone().requires_grad_() for p in parts]
        # different sizes per device: gather the per-replica losses, not the outputs
        model.gather = lambda outputs, device: ([o[0].cpu() for o in outputs],
                                                torch.stack([o[1].to(device) for o in outputs]))
        outs, losses = model([{"x": x, "h": h} for x, h in zip(xs, heads)])
        losses.sum().backward()
        ours_out = [o.detach() for o in outs]
        ours_grad = [x.grad for x in xs]
    ref_in = [p.clone().requires_grad_() for p in parts]
    refs = _union_batch_norm(ref_in, ref_weight, ref_bias, bn.eps)
    sum((o * h).sum() for o, h in zip(refs, heads)).backward()
    for o, r, a, b in zip(ours_out, refs, ours_grad, ref_in):
        torch.testing.assert_close(o, r.detach(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.weight.grad.cpu(), ref_weight.grad, rtol=1e-4, atol=1e-4)
    expected = _expected_moving_average(_initial_moving_average(3), parts, momentum)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(bn, name).double().cpu(), value, rtol=1e-4, atol=1e-5, msg=name)
