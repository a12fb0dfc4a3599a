"""Summing statistics across DataParallel replicas (threads) and across processes.

``SyncMaster`` (with ``SlavePipe`` and ``FutureResult``) is the general
gather-compute-answer rendezvous of threads, under the original's names;
``ReplicaGroup`` uses it to sum tensors over the replicas of one module.

Both reductions are differentiable: the gradient of a sum over replicas or
ranks is the same sum taken over the incoming gradients, so every replica
receives the gradient of the total loss with respect to its own contribution.
"""
from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.distributed as dist

__all__ = ["ReplicaGroup", "all_reduce_sum", "REPLICA_TIMEOUT_S", "FutureResult", "SlavePipe",
           "SyncMaster"]

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


class FutureResult:
    """A one-slot mailbox between two threads: ``put`` a value once, ``get`` waits for it.

    ``get`` empties the slot, so the pair can be used again for the next value.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._full = False
        self._value: Any = None

    def put(self, result: Any) -> None:
        """Store ``result``; an earlier value that nobody fetched is an error."""
        with self._cond:
            if self._full:
                raise RuntimeError("FutureResult.put: the previous result has not been fetched")
            self._value, self._full = result, True
            self._cond.notify()

    def get(self, timeout: Optional[float] = None) -> Any:
        """Wait (at most ``timeout`` seconds, None: forever) for the value and take it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full, timeout):
                raise TimeoutError(f"no result after {timeout:.0f} s")
            value, self._value, self._full = self._value, None, False
            return value


_SlavePipeFields = collections.namedtuple("_SlavePipeFields", ["identifier", "queue", "result"])


class SlavePipe(_SlavePipeFields):
    """A slave's connection to its :class:`SyncMaster`: its id, the master's inbox, its mailbox."""

    timeout: Optional[float] = None  # set by SyncMaster.register_slave

    def run_slave(self, msg: Any) -> Any:
        """Send ``msg`` to the master and wait for the master's answer to this slave."""
        self.queue.put((self.identifier, msg))
        try:
            reply = self.result.get(self.timeout)
        except TimeoutError:
            raise RuntimeError(f"timed out after {self.timeout:.0f} s: replica {self.identifier} "
                               "waiting for the master; did another replica fail or take a "
                               "different path?") from None
        if isinstance(reply, _Failure):
            raise RuntimeError(f"synchronisation failed in the master replica: "
                               f"{reply.error!r}") from reply.error
        return reply


class _Failure(NamedTuple):
    error: BaseException


class SyncMaster:
    """Gather one message from every copy, compute the answers once, send them back.

    The copies (threads, typically DataParallel replicas) each hold a
    :class:`SlavePipe` from :meth:`register_slave`; the master copy calls
    :meth:`run_master` with its own message while every slave calls
    ``pipe.run_slave(msg)``. ``master_callback`` receives ``[(0, master_msg),
    (id, msg), ...]`` and returns ``[(0, master_answer), (id, answer), ...]``
    (master first). An exception in the callback is raised in the master and,
    as a RuntimeError, in every slave; with a ``timeout`` (seconds) a copy that
    never arrives makes the others fail instead of blocking forever.
    """

    def __init__(self, master_callback: Callable[[list], list],
                 timeout: Optional[float] = None) -> None:
        self._master_callback = master_callback
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._registry: dict[Any, FutureResult] = {}
        self._activated = False

    def register_slave(self, identifier: Any) -> SlavePipe:
        """Add a slave copy; the first registration after a round starts a new set of slaves."""
        if self._activated:
            if not self._queue.empty():
                raise RuntimeError("SyncMaster: messages left over from the previous round")
            self._activated = False
            self._registry.clear()
        future = FutureResult()
        self._registry[identifier] = future
        pipe = SlavePipe(identifier, self._queue, future)
        pipe.timeout = self.timeout
        return pipe

    @property
    def nr_slaves(self) -> int:
        """Number of registered slaves."""
        return len(self._registry)

    def run_master(self, master_msg: Any) -> Any:
        """One round: collect every slave's message, run the callback, answer; returns the master's answer."""
        self._activated = True
        try:
            messages = [(0, master_msg)]
            for _ in range(self.nr_slaves):
                try:
                    messages.append(self._queue.get(timeout=self.timeout))
                except queue.Empty:
                    raise RuntimeError(f"timed out after {self.timeout:.0f} s: the master waiting "
                                       "for the other replicas; did another replica fail or "
                                       "take a different path?") from None
            answers = self._master_callback(messages)
            if not answers or answers[0][0] != 0:
                raise RuntimeError("SyncMaster callback must return the master's answer (id 0) first")
        except BaseException as exc:
            for future in self._registry.values():
                future.put(_Failure(exc))
            raise
        for identifier, answer in answers[1:]:
            self._registry[identifier].put(answer)
        return answers[0][1]


class ReplicaGroup:
    """Rendezvous of the copies of one module made by one DataParallel replication.

    Each copy joins with its copy id (0 first). During the forward pass every
    copy calls :meth:`all_reduce` with a tensor of the same shape; copy 0, the
    master, waits for the others, adds all tensors on its own device, applies
    ``finish`` to the total (e.g. a cross-process reduction) and returns the
    result to every copy on that copy's device. A module called several times
    in one forward pass runs one round per call. Failures in the master are
    re-raised in every copy; a copy that never arrives makes the others fail
    after ``timeout`` seconds instead of blocking forever. Built on
    :class:`SyncMaster`.
    """

    def __init__(self, timeout: float = REPLICA_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._master = SyncMaster(self._sum, timeout=timeout)
        self._members: list[int] = []
        self._pipes: dict[int, SlavePipe] = {}
        self._finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
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
                self._pipes[copy_id] = self._master.register_slave(copy_id)

    def all_reduce(self, copy_id: int, tensor: torch.Tensor,
                   finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Sum ``tensor`` over all copies (then ``finish`` it); returns the result on ``tensor.device``."""
        if copy_id != 0:
            return self._pipes[copy_id].run_slave(tensor)
        self._finish = finish
        return self._master.run_master(tensor)

    def _sum(self, messages: list) -> list:
        master = messages[0][1]
        others = sorted(messages[1:], key=lambda m: m[0])  # fixed order: reproducible sums
        total = master
        for _, other in others:
            total = total + other.to(master.device)
        if self._finish is not None:
            total = self._finish(total)
        return [(0, total)] + [(i, total.to(other.device)) for i, other in others]
