"""Summing statistics across DataParallel replicas (threads) and across processes.

Both reductions are differentiable: the gradient of a sum over replicas or
ranks is the same sum taken over the incoming gradients, so every replica
receives the gradient of the total loss with respect to its own contribution.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

import torch
import torch.distributed as dist

__all__ = ["ReplicaGroup", "all_reduce_sum", "REPLICA_TIMEOUT_S"]

# How long a replica waits for the others at a synchronisation point. Replicas
# run the same layers in lock-step, so a long wait means one of them failed.
REPLICA_TIMEOUT_S = 600.0


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``group`` (default: the world) with autograd support.

    Every rank of the group must call this the same number of times, in the
    same order, in forward and (when gradients flow) in backward.
    """
    return _AllReduceSum.apply(tensor, group if group is not None else dist.group.WORLD)


class ReplicaGroup:
    """Rendezvous of the copies of one module made by one DataParallel replication.

    Each copy joins with its copy id (0 first). During the forward pass every
    copy calls :meth:`all_reduce` with a tensor of the same shape; copy 0, the
    master, waits for the others, adds all tensors on its own device, applies
    ``finish`` to the total (e.g. a cross-process reduction) and returns the
    result to every copy on that copy's device. A module called several times
    in one forward pass runs one round per call. Failures in the master are
    re-raised in every copy; a copy that never arrives makes the others fail
    after ``timeout`` seconds instead of blocking forever.
    """

    def __init__(self, timeout: float = REPLICA_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._members: list[int] = []
        self._inbox: queue.Queue = queue.Queue()
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Number of copies that joined."""
        return len(self._members)

    def join(self, copy_id: int) -> None:
        """Register copy ``copy_id``; copy 0 is the master and must join first."""
        with self._lock:
            if not self._members and copy_id != 0:
                raise RuntimeError("replica 0 (the master) must join a ReplicaGroup first")
            if copy_id in self._members:
                raise RuntimeError(f"replica {copy_id} joined twice")
            self._members.append(copy_id)
            if copy_id != 0:
                self._replies[copy_id] = queue.Queue()

    def all_reduce(self, copy_id: int, tensor: torch.Tensor,
                   finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Sum ``tensor`` over all copies (then ``finish`` it); returns the result on ``tensor.device``."""
        if copy_id != 0:
            self._inbox.put((copy_id, tensor))
            reply = self._wait(self._replies[copy_id], f"replica {copy_id} waiting for the master")
            if isinstance(reply, BaseException):
                raise RuntimeError(f"synchronisation failed in the master replica: {reply!r}") from reply
            return reply

        try:
            received = {}
            for _ in range(len(self._replies)):
                other_id, other = self._wait(self._inbox, "the master waiting for the other replicas")
                received[other_id] = other
            total = tensor
            for other_id in sorted(received):  # fixed order: reproducible sums
                total = total + received[other_id].to(tensor.device)
            if finish is not None:
                total = finish(total)
        except BaseException as exc:
            for reply_queue in self._replies.values():
                reply_queue.put(exc)
            raise
        for other_id, reply_queue in self._replies.items():
            reply_queue.put(total.to(received[other_id].device))
        return total

    def _wait(self, source: queue.Queue, what: str):
        try:
            return source.get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"timed out after {self.timeout:.0f} s: {what}; "
                               "did another replica fail or take a different path?") from None
