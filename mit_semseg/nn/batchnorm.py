"""Synchronized BatchNorm: batch statistics over all devices and processes.

In training, when the module is a replica made by ``DataParallelWithCallback``
(or a patched ``DataParallel``) or when a ``torch.distributed`` process group
with more than one rank is initialised, the mean and variance are computed
over the union of every replica's and every rank's elements. Each
contribution is a per-channel sum, sum of squares and element count, so the
replicas and ranks may hold different numbers of images and image sizes; the
output equals BatchNorm applied to the concatenated batch, and gradients flow
through the shared statistics. In evaluation, or when training alone, the
module is exactly ``torch.nn.BatchNorm*`` (``F.batch_norm``) with its momentum.

Running statistics of the synchronised path follow the original toolkit: a
moving average with weight ``1 - momentum`` per step, normalised by the
accumulated weight ``_running_iter`` (so it starts from the prior of zero
mean, unit variance with weight 1), of the batch mean and *unbiased* variance,
kept in ``_tmp_running_mean`` / ``_tmp_running_var``.

State-dict keys equal the original's: those of torch's BatchNorm followed by
``_tmp_running_mean``, ``_tmp_running_var`` and ``_running_iter``. The
default momentum is the original's 0.001.

Every rank of the process group must run the same sequence of training-mode
forward (and backward) passes through these layers; a rank that skips one
blocks the others until the process group's timeout.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from .comm import ReplicaGroup, all_reduce_sum

__all__ = ["DEFAULT_MOMENTUM", "SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d",
           "SynchronizedBatchNorm3d"]

DEFAULT_MOMENTUM = 0.001

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _SynchronizedBatchNorm(_BatchNorm):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = DEFAULT_MOMENTUM,
                 affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.register_buffer("_tmp_running_mean", torch.zeros(num_features))
        self.register_buffer("_tmp_running_var", torch.ones(num_features))
        self.register_buffer("_running_iter", torch.ones(1))
        # Process group to synchronise over (None: the default group, if initialised).
        self.process_group: Optional[Any] = None
        # Set on DataParallel replicas only, by __data_parallel_replicate__.
        self._replica_group: Optional[ReplicaGroup] = None
        self._replica_id = 0

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "_running_iter"):  # absent while _BatchNorm.__init__ runs
            self._tmp_running_mean.zero_()
            self._tmp_running_var.fill_(1)
            self._running_iter.fill_(1)

    def __data_parallel_replicate__(self, ctx: Any, copy_id: int) -> None:
        """Connect the replicas of this module (called by the replication callbacks)."""
        if copy_id == 0:
            ctx.sync_bn_group = ReplicaGroup()
        ctx.sync_bn_group.join(copy_id)
        self._replica_group = ctx.sync_bn_group
        self._replica_id = copy_id

    def _sync_process_group(self) -> Optional[Any]:
        """The process group to reduce over, or None when this process trains alone."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``input`` (N, C, ...) per channel; see the module docstring for the statistics."""
        if not self.training:
            return super().forward(input)
        process_group = self._sync_process_group()
        replicas = self._replica_group
        if replicas is not None and replicas.size < 2:
            replicas = None
        if replicas is None and process_group is None:
            return super().forward(input)
        self._check_input_dim(input)
        return self._synchronized_forward(input, replicas, process_group)

    def _synchronized_forward(self, input: torch.Tensor, replicas: Optional[ReplicaGroup],
                              process_group: Optional[Any]) -> torch.Tensor:
        if self.momentum is None:
            raise ValueError("synchronized BatchNorm needs a numeric momentum, got None")
        channels = self.num_features
        x = input.reshape(input.shape[0], channels, -1)
        local_count = x.shape[0] * x.shape[2]
        xs = x.float() if x.dtype in _LOW_PRECISION else x

        # One vector per contribution: [sum (C), sum of squares (C), count (1)].
        stats = torch.cat([xs.sum(dim=(0, 2)), (xs * xs).sum(dim=(0, 2)),
                           xs.new_full((1,), float(local_count))])
        if replicas is not None:
            finish = None
            if process_group is not None:
                def finish(total: torch.Tensor) -> torch.Tensor:
                    return all_reduce_sum(total, process_group)
            stats = replicas.all_reduce(self._replica_id, stats, finish)
        else:
            stats = all_reduce_sum(stats, process_group)

        total, total_sq, count = stats[:channels], stats[channels:2 * channels], stats[2 * channels]
        # Only look at the global count (a device sync) when this contribution alone is too small.
        if local_count <= 1 and count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, "
                             f"got input size {tuple(input.shape)} in total over all replicas")
        mean = total / count
        centred_sq = (total_sq - total * mean).clamp_min(0)  # sum of squared deviations
        inv_std = torch.rsqrt(centred_sq / count + self.eps)
        if self.affine:
            scale = inv_std * self.weight
            shift = self.bias - mean * scale
        else:
            scale = inv_std
            shift = -mean * scale
        out = torch.addcmul(shift.to(x.dtype).view(1, channels, 1), x,
                            scale.to(x.dtype).view(1, channels, 1))

        self._update_running_stats(mean.detach(), (centred_sq / (count - 1)).detach())
        return out.view(input.shape)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        # In place: a DataParallel replica 0 shares these buffers with the wrapped module.
        keep = 1.0 - self.momentum
        self._tmp_running_mean.mul_(keep).add_(mean)
        self._tmp_running_var.mul_(keep).add_(unbiased_var)
        self._running_iter.mul_(keep).add_(1.0)
        self.running_mean.copy_(self._tmp_running_mean / self._running_iter)
        self.running_var.copy_(self._tmp_running_var / self._running_iter)
        self.num_batches_tracked.add_(1)


class SynchronizedBatchNorm1d(_SynchronizedBatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input, synchronised across devices and processes."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class SynchronizedBatchNorm2d(_SynchronizedBatchNorm):
    """BatchNorm over (N, C, H, W) input, synchronised across devices and processes."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class SynchronizedBatchNorm3d(_SynchronizedBatchNorm):
    """BatchNorm over (N, C, D, H, W) input, synchronised across devices and processes."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
